"""The inner maximisations of TRADES and MART: PGD from a small Gaussian start.

- TRADES: Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan 2019, "Theoretically Principled Trade-off
  between Robustness and Accuracy" (ICML 2019, arXiv:1901.08573), eq. 5 and Algorithm 1; reference
  code github.com/yaodongyu/TRADES, ``trades.py`` (``trades_loss``): x' maximising
  ``KL(f(x) || f(x'))``.
- MART: Wang, Zou, Yi, Bailey, Ma & Gu 2020, "Improving Adversarial Robustness Requires Revisiting
  Misclassified Examples" (ICLR 2020); reference code github.com/YisenWang/MART, ``mart.py``
  (``mart_loss``): x' maximising the cross-entropy.

Both are :func:`~research.attacks.pgd.pgd`'s loop (:func:`~research.attacks.pgd.ascend`) with the
references' start, ``x + 0.001 * N(0, I)``, not clamped (their code feeds ``x + noise`` as it is;
at x itself the KL is at its minimum and its gradient is zero), and a final projection onto the
ball and [0, 1], as the references' last clamp. Steps and projections are
:mod:`research.attacks.balls`' (sign for L-inf, as in both references; the normalised gradient for
L2). The same contract as PGD: input gradients only, modes and BatchNorm statistics restored
(:func:`~research.attacks.mode.attack_mode`), works under ``torch.inference_mode``, the
perturbation in float32. The outer losses that use these points live with the training callback
(:mod:`research.callbacks.adversarial_training`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from research.attacks.balls import BALLS
from research.attacks.mode import attack_context, attack_mode
from research.attacks.pgd import LossFn, _check_args, ascend

# Zhang et al.'s start: x + 0.001 * N(0, I).
_START_STD = 0.001


def trades_attack(
    model: nn.Module,
    x: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    norm: str = "linf",
    eval_mode: bool = True,
) -> Tensor:
    """TRADES' inner maximisation: x' in the eps ball that maximises ``KL(f(x) || f(x'))`` (Zhang et al. eq. 5).

    Signed-gradient ascent from ``x + 0.001 * N(0, I)`` (their ``trades_loss``, ``distance='l_inf'``);
    the label is not used. ``f(x)`` is computed once, in the attack's mode: the reference
    recomputes it inside every step, with the same result since only the gradient with respect to
    x' is taken. For ``norm="l2"`` the step is ``step_size`` along the normalised gradient and the
    projection shrinks onto the ball, then clamps (the reference's L2 branch runs SGD on the
    perturbation and renormalises after clamping: the same steps, projected in the other order).

    Args:
        model: maps (B, C, H, W) images in [0, 1] to (B, num_classes) logits.
        x: (B, C, H, W) clean images in [0, 1].
        eps: radius of the ball in pixel units.
        step_size: length of each step (Zhang et al.: 0.007 at eps 0.031 on CIFAR-10, 0.01 at 0.3 on MNIST).
        steps: ascent steps (10 on CIFAR-10, 40 on MNIST in their code); 0 returns the start, projected.
        norm: ``"linf"`` or ``"l2"``.
        eval_mode: attack in eval mode (the reference does), or in each module's current mode.

    Returns:
        (B, C, H, W) images in the eps ball around ``x`` and in [0, 1], detached, in ``x``'s dtype.

    Raises:
        ValueError: as :func:`~research.attacks.pgd.pgd`: an unknown norm, a negative eps or steps,
            a step_size <= 0, or ``x`` not a batch of images in [0, 1].
    """
    _check_args(x, None, eps=eps, step_size=step_size, steps=steps, norm=norm, random_start=True, restarts=1)
    with torch.no_grad(), attack_mode(model, eval_mode=eval_mode):
        clean_log_probs = F.log_softmax(model(x).float(), dim=-1)
    return _from_small_noise(model, x, clean_log_probs, _kl_to_clean, eps=eps, step_size=step_size, steps=steps,
                             norm=norm, eval_mode=eval_mode)


def mart_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    norm: str = "linf",
    eval_mode: bool = True,
) -> Tensor:
    """MART's inner maximisation: PGD on the cross-entropy from ``x + 0.001 * N(0, I)`` (Wang et al.'s ``mart_loss``).

    As :func:`~research.attacks.pgd.pgd` but from Zhang et al.'s small Gaussian start instead of a
    uniform point of the ball, as the reference does. Args, returns and errors as
    :func:`trades_attack`, with ``y`` the (B,) labels.
    """
    _check_args(x, y, eps=eps, step_size=step_size, steps=steps, norm=norm, random_start=True, restarts=1)
    return _from_small_noise(model, x, y, _cross_entropy, eps=eps, step_size=step_size, steps=steps, norm=norm,
                             eval_mode=eval_mode)


def _kl_to_clean(logits: Tensor, clean_log_probs: Tensor) -> Tensor:
    """(B,): ``KL(f(x) || f(x'))`` of each example, from the logits of x' and the log-probabilities of x."""
    log_probs = F.log_softmax(logits.float(), dim=-1)
    return F.kl_div(log_probs, clean_log_probs, log_target=True, reduction="none").sum(-1)


def _cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits.float(), y, reduction="none")


def _from_small_noise(model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn, *, eps: float, step_size: float,
                      steps: int, norm: str, eval_mode: bool) -> Tensor:
    """``steps`` ascent steps of ``loss_fn(model(x'), y)`` from ``x + 0.001 * N(0, I)``, then projected once more."""
    ball = BALLS[norm](eps)
    with attack_context(model, x, y, eval_mode=eval_mode) as (x0, y):
        x_adv = x0 + _START_STD * torch.randn_like(x0)
        x_adv = ascend(model, x0, x_adv, y, loss_fn, ball, step_size=step_size, steps=steps, dtype=x.dtype)
        # steps = 0: the start itself, brought into the ball and [0, 1] as the references' final clamp does
        return ball.project(x0, x_adv.detach()).to(x.dtype)

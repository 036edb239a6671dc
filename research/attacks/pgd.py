"""Projected gradient descent: "Towards Deep Learning Models Resistant to Adversarial Attacks".

Madry, Makelov, Schmidt, Tsipras and Vladu, ICLR 2018, https://arxiv.org/abs/1706.06083.

``x_{t+1} = Proj_{B(x, eps)}(x_t + step_size * s(grad_x L(f(x_t), y)))`` (section 2.1, eq. 2), with
``s`` the sign (L-inf) or the L2-normalised gradient, started at a random point of the ball
(section 3) and restarted ``restarts`` times, keeping per example the worst case: a restart that
fools the model if any does (the first such), else the one of highest loss (as AutoAttack counts).

Reference we match: torchattacks' ``PGD`` (same start, step, projection and clamping; checked in
tests/attacks/test_torchattacks_agreement.py) and the ``robustness`` library's L2 step.

Contract, for any ``nn.Module`` mapping [0, 1] images to logits (our tasks normalise inside
``forward``, so ``eps`` is in pixel units):

* Gradients are taken with ``torch.autograd.grad`` with respect to the input only: no
  parameter's ``.grad`` is created or changed, and the backward passes skip the weight
  gradients (autograd computes only what the requested input needs).
* Each module's mode and all BatchNorm running statistics are as before (:func:`attack_mode`).
* The perturbation lives in float32 (float64 for float64 input), also under autocast, and the
  result comes back in the input's dtype.
* Works when called under ``torch.no_grad()`` or ``torch.inference_mode()`` (a Lightning test step).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from research.attacks.balls import BALLS, L2Ball, LinfBall
from research.attacks.mode import attack_context

#: ``loss_fn(logits, y) -> (B,)`` per-example losses; per example so that restarts can pick.
LossFn = Callable[[Tensor, Tensor], Tensor]

# Float images a few ulps outside [0, 1] (from a resize or a division) still count as in range.
_RANGE_TOLERANCE = 1e-5


def per_example_cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy of each example. Shape: (B, num_classes), (B,) -> (B,)."""
    return F.cross_entropy(logits, y, reduction="none")


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    norm: str = "linf",
    random_start: bool = True,
    restarts: int = 1,
    targeted: bool = False,
    loss_fn: LossFn | None = None,
    eval_mode: bool = True,
) -> Tensor:
    """Adversarial examples by projected gradient ascent on the loss (descent towards ``y`` if targeted).

    Args:
        model: maps (B, C, H, W) images in [0, 1] to (B, num_classes) logits.
        x: (B, C, H, W) images in [0, 1] (any (B, ...) shape the model takes).
        y: (B,) labels: the true ones, or the targets when ``targeted``. Anything with B rows
            that ``loss_fn`` takes.
        eps: radius of the ball in ``norm``, in pixel units (e.g. 0.3 for L-inf on MNIST).
        step_size: length of each step in ``norm`` (e.g. 2.5 * eps / steps, Madry et al.).
        steps: gradient steps per restart; 0 returns the start point.
        norm: ``"linf"`` or ``"l2"``.
        random_start: start at a uniform random point of the ball instead of at ``x``.
        restarts: independent random starts. Each example keeps the first restart that fools the
            model (prediction != ``y``; == ``y`` when ``targeted``), and an example no restart
            fools keeps the restart of highest loss (lowest loss to the target when ``targeted``):
            the worst case per example, so robust accuracy under restarts counts an example as
            robust only if no restart fools it. (Highest loss alone is not the worst case: a
            fooling restart can have a lower cross-entropy than a non-fooling one.) The fooling
            rule applies when ``y`` holds (B,) integer class labels of (B, num_classes) logits;
            otherwise the loss alone decides. Needs ``random_start``.
        targeted: make the model predict ``y`` (minimise the loss to ``y``) instead of leaving it.
        loss_fn: ``loss_fn(logits, y)`` returning per-example losses of shape (B,); default
            cross-entropy.
        eval_mode: attack the model in eval mode (default); False attacks each module in its
            current mode (BatchNorm with batch statistics), see :func:`attack_mode`.

    Returns:
        (B, C, H, W) adversarial images in [0, 1], in ``x``'s dtype and device, detached, with
        ``||x_adv - x|| <= eps`` in ``norm``.

    Raises:
        ValueError: an argument out of range, an unknown norm, ``x`` outside [0, 1] (normalised
            images given by mistake), ``x`` and ``y`` with different batch sizes, or a
            ``loss_fn`` that does not return one loss per example.

    """
    _check_args(x, y, eps=eps, step_size=step_size, steps=steps, norm=norm, random_start=random_start,
                restarts=restarts)
    loss_fn = per_example_cross_entropy if loss_fn is None else loss_fn
    ball = BALLS[norm](eps)
    with attack_context(model, x, y, eval_mode=eval_mode) as (x0, y):
        best = best_score = best_fooled = None
        for _ in range(restarts):
            x_adv = ball.random_start(x0) if random_start else x0.clone()
            x_adv = ascend(model, x0, x_adv, y, loss_fn, ball, step_size=step_size, steps=steps, targeted=targeted,
                           dtype=x.dtype)
            if restarts == 1:
                best = x_adv
                break
            with torch.no_grad():
                logits = model(x_adv.to(x.dtype))
                score = _loss_of(logits, y, loss_fn, len(x_adv))
                score = -score if targeted else score
                fooled = _fooled(logits, y, targeted)
            if best is None:
                best, best_score, best_fooled = x_adv, score, fooled
            else:
                # Worst case per example: once fooled, an example keeps that restart; until then a
                # restart that fools it, or failing that a higher loss, replaces the kept one.
                better = ~best_fooled & (fooled | (score > best_score))
                best = torch.where(better.view(-1, *([1] * (x0.ndim - 1))), x_adv, best)
                best_score = torch.where(better, score, best_score)
                best_fooled = best_fooled | fooled
        return best.detach().to(x.dtype)


def ascend(model: nn.Module, x0: Tensor, x_adv: Tensor, y: Tensor, loss_fn: LossFn, ball: LinfBall | L2Ball, *,
           step_size: float, steps: int, targeted: bool = False, dtype: torch.dtype) -> Tensor:
    """PGD's loop: ``steps`` steps from ``x_adv`` up ``loss_fn(model(x'), y)`` (down when ``targeted``), each projected.

    Shared by :func:`pgd` and the inner maximisations of TRADES and MART
    (:mod:`research.attacks.trades`), which differ only in their start and loss. The caller has
    left inference mode and enabled gradients (the model's modes are its business too).

    Args:
        model: maps images in ``dtype`` to logits.
        x0: (B, ...) the clean images, centre of the ball, in the perturbation's float dtype.
        x_adv: (B, ...) the start, same dtype as ``x0``.
        y: what ``loss_fn`` takes besides the logits (labels, or the clean prediction for TRADES).
        loss_fn: ``loss_fn(logits, y)`` -> (B,) per-example losses.
        ball: the threat model (:data:`~research.attacks.balls.BALLS`).
        step_size: length of each step in the ball's norm.
        steps: how many steps; 0 returns ``x_adv`` as it is.
        targeted: descend the loss instead of ascending it.
        dtype: the dtype the model sees.

    Returns:
        (B, ...) the last iterate, detached unless ``steps`` is 0, in ``x0``'s dtype.

    Raises:
        ValueError: a ``loss_fn`` that does not return one loss per example.
    """
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = _loss_of(model(x_adv.to(dtype)), y, loss_fn, len(x_adv))
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        # Targeted: descend the loss to the target (Kurakin et al. 2017, iterative least-likely class).
        x_adv = ball.project(x0, ball.step(x_adv.detach(), -grad if targeted else grad, step_size))
    return x_adv


def _fooled(logits: Tensor, y: Tensor, targeted: bool) -> Tensor:
    """(B,) whether each prediction leaves its label (reaches its target); all False unless y are class labels."""
    if logits.ndim != 2 or y.shape != logits.shape[:1] or y.is_floating_point() or y.dtype == torch.bool:
        return torch.zeros(len(logits), dtype=torch.bool, device=logits.device)
    hit = logits.argmax(-1) == y
    return hit if targeted else ~hit


def _loss_of(logits: Tensor, y: Tensor, loss_fn: LossFn, batch: int) -> Tensor:
    loss = loss_fn(logits, y)
    if loss.shape != (batch,):
        raise ValueError(
            f"loss_fn must return one loss per example, shape ({batch},), got shape {tuple(loss.shape)}; "
            "use reduction='none', e.g. F.cross_entropy(logits, y, reduction='none')"
        )
    return loss.float()


def _check_args(x: Tensor, y: Tensor | None, *, eps, step_size, steps, norm, random_start, restarts) -> None:
    """Stop early, with what was wrong and what to pass instead (``y`` None: an attack without labels)."""
    if norm not in BALLS:
        raise ValueError(f"unknown norm {norm!r}; use one of {sorted(BALLS)}")
    if not (isinstance(eps, int | float) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0 (in pixel units of [0, 1] images), got {eps!r}")
    if not (isinstance(step_size, int | float) and math.isfinite(step_size) and step_size > 0):
        raise ValueError(
            f"step_size must be a finite number > 0, got {step_size!r}; a common choice is 2.5 * eps / steps"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"restarts must be an integer >= 1, got {restarts!r}")
    if restarts > 1 and not random_start:
        raise ValueError(f"restarts={restarts} needs random_start=True: without it every restart is the same")
    if not (isinstance(x, Tensor) and x.is_floating_point() and x.ndim >= 2 and len(x) > 0):
        got = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a non-empty floating-point (B, C, H, W) batch of images, got a {got}")
    if y is not None and (not isinstance(y, Tensor) or y.ndim == 0 or len(y) != len(x)):
        got = f"shape {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y must hold one label per image: x has {len(x)} images, y has {got}")
    lo, hi = torch.aminmax(x.detach())
    if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
        raise ValueError(
            f"attacks take images in [0, 1], got values in [{lo.item():.4g}, {hi.item():.4g}]. Pass the images "
            "before mean/std normalisation and let the model normalise (as ImageClassification does)."
        )


def _check_class_labels(y: Tensor) -> None:
    """The attacks that read the argmax against ``y`` (APGD, FAB, Square) need (B,) integer class labels."""
    if y.ndim != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"y must be (B,) integer class labels, got a {y.dtype} tensor of shape {tuple(y.shape)}")


def _check_target_classes(target_classes: int) -> None:
    """How many runner-up classes a targeted attack (APGD-T, FAB-T) tries."""
    if isinstance(target_classes, bool) or not isinstance(target_classes, int) or target_classes < 1:
        raise ValueError(f"target_classes must be an integer >= 1, got {target_classes!r}; AutoAttack uses 9")

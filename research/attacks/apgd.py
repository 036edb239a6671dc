"""Auto-PGD: "Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks".

Croce and Hein, ICML 2020, https://arxiv.org/abs/2003.01690, section 3 (Algorithm 1) and section 4
(the DLR losses, eqs. 6 and 7). APGD is PGD without a step size to tune:

* it starts at a random point of the ball with step size ``eta = 2 * eps`` (section 3.1);
* each step moves along the gradient (sign for L-inf, normalised for L2), projects, then mixes in
  the previous move with momentum ``alpha = 0.75`` (eq. 2; no momentum on the first step);
* at checkpoints ``w_j = ceil(p_j * N)``, ``p_0 = 0``, ``p_1 = 0.22``,
  ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` (section 3.2), the step size of an example is
  halved if (condition 1) at most a fraction ``rho = 0.75`` of the steps since the last checkpoint
  raised its loss, or (condition 2) its step size was not halved at the last checkpoint and its best
  loss has not risen since; a halved example restarts from its point of highest loss.

APGD-CE ascends the cross-entropy, APGD-DLR the difference of logits ratio (eq. 6)
``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)``, and APGD-T the targeted DLR (eq. 7)
``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`` towards each of the ``target_classes`` classes of
highest clean logit after the top one in turn (section 4, "APGD-T"). Here ``z_pi1 >= z_pi2 >= ...``
are the sorted logits; both losses are invariant to shifting and scaling the logits.

Reference code we follow line by line: the official ``autoattack/autopgd_base.py`` (fra31/auto-attack,
``APGDAttack`` and ``APGDAttack_targeted``, commit a392200), whose copy torchattacks 3.5.1 ships as
``APGD`` and ``APGDT`` (checked against ours in tests/attacks/test_apgd.py). From it we take: the start
(a uniform L-inf point rescaled so its largest coordinate is ``eps``, or a Gaussian direction scaled to
the L2 sphere, then clamped to [0, 1]); the step and projection, applied once before and once after
the momentum mix; the checkpoint arithmetic in whole steps (the first interval ``int(0.22 N)``, each
next one ``int(0.03 N)`` shorter but at least ``int(0.06 N)``), which gives the paper's ``w_j``
exactly when N is a multiple of 100 (22, 41, 57, 70, 80, 87, 93, 99 for N = 100) but not otherwise
(N = 50: 11, 21, 30, 38, 45 against the paper's 11, 21, 29, 35, 40, 44, 47, 50), so that a run of
any length matches AutoAttack's and torchattacks'; condition 1 as ``rises <= rho * interval``, the
code's test; no condition 2 at the first checkpoint (the code starts its flag at "halved"); the
momentum after a restart from the best point taken against the iterate before the halving; restarts
and further target classes run only on the examples not yet fooled; targets picked from the clean
logits of those examples. One detail follows the paper instead: the code's condition 1 compares the
first step's loss with an unfilled (zero) row of its loss history, where the paper (and we) compare
it with the loss at the starting point.

Per example the result is a misclassified point as soon as one is found (the last misclassified
iterate of the run that found it, as the official code returns), and for an example never fooled the
point of highest loss over all runs (the official code returns the clean image there; the highest-loss
point is what a later attack in an ensemble can start from and what a robust-accuracy count needs).

Contract, as :func:`~research.attacks.pgd.pgd`: any ``nn.Module`` mapping [0, 1] images to logits;
input gradients only through ``torch.autograd.grad`` (no parameter ``.grad`` is touched); modes and
BatchNorm statistics restored (:func:`~research.attacks.mode.attack_mode`); works under
``torch.inference_mode()``; the perturbation kept in float32 (float64 for float64 input), the result
in ``x``'s dtype. Randomness comes from the global torch RNG: seed it for a repeatable attack.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import reduce
from torch import Tensor, nn

from research.attacks.balls import BALLS, l2_norm
from research.attacks.mode import attack_context
from research.attacks.pgd import _check_args, _check_class_labels, _check_target_classes

#: Section 3.1: the first step size is 2 * eps.
_FIRST_STEP = 2.0
#: Eq. 2: the weight of the new step against the previous move (the paper's alpha).
_MOMENTUM = 0.75
#: Section 3.2, in fractions of the budget N: the first checkpoint interval, how much each next
#: interval shrinks, and the shortest interval.
_FIRST_INTERVAL, _INTERVAL_SHRINK, _SHORTEST_INTERVAL = 0.22, 0.03, 0.06
# Guards the divisions by a norm or a logit gap of zero, as the official code does.
_TINY = 1e-12

LOSSES = ("ce", "dlr")


def dlr_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Difference of logits ratio (Croce and Hein 2020, eq. 6) of each example.

    ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)`` with ``z_pi1 >= z_pi2 >= z_pi3`` the
    largest logits. Positive exactly when the example is misclassified.

    Shape: (B, num_classes), (B,) -> (B,); needs num_classes >= 3.
    """
    z = logits.float()
    top = z.topk(3, dim=1).values
    z_y = z.gather(1, y[:, None]).squeeze(1)
    # max over i != y: the top logit unless it is y's, then the second (ties give the same value).
    z_other = z.scatter(1, y[:, None], -math.inf).amax(dim=1)
    return -(z_y - z_other) / (top[:, 0] - top[:, 2] + _TINY)


def targeted_dlr_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Targeted difference of logits ratio (Croce and Hein 2020, eq. 7) of each example.

    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``, with ``y`` the true and ``t`` the
    target class. Ascending it raises the target's logit above the true one's.

    Shape: (B, num_classes), (B,), (B,) -> (B,); needs num_classes >= 4.
    """
    z = logits.float()
    top = z.topk(4, dim=1).values
    z_y = z.gather(1, y[:, None]).squeeze(1)
    z_t = z.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _TINY)


def _cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits.float(), y, reduction="none")


def apgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 100,
    loss: str = "ce",
    restarts: int = 1,
    rho: float = 0.75,
    eval_mode: bool = True,
) -> Tensor:
    """Untargeted Auto-PGD on the cross-entropy (APGD-CE) or the DLR loss (APGD-DLR).

    Args:
        model: maps (B, C, H, W) images in [0, 1] to (B, num_classes) logits.
        x: (B, C, H, W) images in [0, 1] (any (B, ...) shape the model takes).
        y: (B,) true class labels (integers).
        eps: radius of the ball in ``norm``, in pixel units (e.g. 0.3 for L-inf on MNIST, 8/255 on CIFAR-10).
        norm: ``"linf"`` or ``"l2"``.
        steps: iterations per restart (the paper's N, 100 in AutoAttack); 0 returns the random start.
        loss: ``"ce"`` (cross-entropy) or ``"dlr"`` (eq. 6, needs >= 3 classes).
        restarts: random starts; each after the first attacks only the examples not yet fooled.
        rho: condition 1 halves the step size when at most this fraction of the steps since the last
            checkpoint raised the loss (0.75 in the paper).
        eval_mode: attack the model in eval mode (default); False attacks each module in its current
            mode (BatchNorm with batch statistics), see :func:`~research.attacks.mode.attack_mode`.

    Returns:
        (B, C, H, W) images in [0, 1], in ``x``'s dtype and device, detached, within ``eps`` of ``x``
        in ``norm``: per example a misclassified point if one was found (``x`` itself if it is
        misclassified already), else the point of highest loss.

    Raises:
        ValueError: an argument out of range, an unknown norm or loss, ``x`` outside [0, 1], ``y``
            not one integer label per image, or too few classes for the DLR loss.

    """
    _check_apgd_args(x, y, eps=eps, steps=steps, norm=norm, restarts=restarts, rho=rho)
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; use one of {list(LOSSES)} (APGD-T is apgd_targeted)")
    loss_fn = _cross_entropy if loss == "ce" else dlr_loss
    with attack_context(model, x, y, eval_mode=eval_mode) as (x0, y0):
        attack = _Attack(model, x0, y0, dtype=x.dtype, eps=eps, norm=norm, steps=steps, rho=rho,
                         min_classes=3 if loss == "dlr" else 2, what=f"APGD with loss={loss!r}")
        for _ in range(restarts):
            attack.run(loss_fn, zero_grad_warning=loss == "dlr")
        return attack.result()


def apgd_targeted(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 100,
    target_classes: int = 9,
    restarts: int = 1,
    rho: float = 0.75,
    eval_mode: bool = True,
) -> Tensor:
    """Targeted Auto-PGD on the targeted DLR loss (APGD-T, Croce and Hein 2020, section 4, eq. 7).

    For ``k = 2, ..., target_classes + 1`` in turn, every example not yet fooled is attacked
    ``restarts`` times towards its class of k-th highest clean logit (as the official code does).

    Args:
        model: maps (B, C, H, W) images in [0, 1] to (B, num_classes) logits, num_classes >= 4.
        x: (B, C, H, W) images in [0, 1] (any (B, ...) shape the model takes).
        y: (B,) true class labels (integers).
        eps: radius of the ball in ``norm``, in pixel units.
        norm: ``"linf"`` or ``"l2"``.
        steps: iterations per restart and target class (100 in AutoAttack).
        target_classes: how many target classes to try, at most num_classes - 1 (9 in AutoAttack).
        restarts: random starts per target class.
        rho: the fraction of condition 1 (0.75 in the paper).
        eval_mode: attack in eval mode (default), or in each module's current mode.

    Returns:
        (B, C, H, W) images in [0, 1], in ``x``'s dtype and device, detached, within ``eps`` of ``x``
        in ``norm``: per example a misclassified point if one was found (``x`` itself if it is
        misclassified already), else the point of highest targeted DLR loss over all targets.

    Raises:
        ValueError: as :func:`apgd`, or ``target_classes`` not in [1, num_classes - 1].

    """
    _check_apgd_args(x, y, eps=eps, steps=steps, norm=norm, restarts=restarts, rho=rho)
    _check_target_classes(target_classes)
    with attack_context(model, x, y, eval_mode=eval_mode) as (x0, y0):
        attack = _Attack(model, x0, y0, dtype=x.dtype, eps=eps, norm=norm, steps=steps, rho=rho, min_classes=4,
                         what="APGD-T (its targeted DLR loss)")
        if target_classes >= attack.num_classes:
            raise ValueError(
                f"target_classes={target_classes} but the model has {attack.num_classes} classes, so at most "
                f"{attack.num_classes - 1} other classes can be targets; pass a smaller target_classes"
            )
        for rank in range(2, target_classes + 2):
            for _ in range(restarts):
                attack.run(targeted_dlr_loss, target_rank=rank, zero_grad_warning=True)
        return attack.result()


class _Attack:
    """The bookkeeping over runs: which examples are still robust, and the point kept for each.

    Each :meth:`run` attacks the still-robust examples only; a fooled example keeps the point that
    fooled it, and a robust one the point of highest loss seen so far.
    """

    def __init__(self, model: nn.Module, x0: Tensor, y: Tensor, *, dtype: torch.dtype, eps: float, norm: str,
                 steps: int, rho: float, min_classes: int, what: str) -> None:
        """``x0`` and ``y`` are the attack's own copies (:func:`attack_context`); ``dtype`` is what the model takes."""
        self.model, self.dtype = model, dtype
        self.eps, self.norm, self.steps, self.rho = eps, norm, steps, rho
        self.x0, self.y = x0, y
        with torch.no_grad():
            logits = model(self.x0.to(self.dtype))
        self.num_classes = logits.shape[-1] if logits.ndim == 2 else 0
        if self.num_classes < min_classes:
            got = f"num_classes {self.num_classes}" if logits.ndim == 2 else f"logits of shape {tuple(logits.shape)}"
            raise ValueError(f"{what} needs (B, num_classes) logits with num_classes >= {min_classes}, got {got}")
        lo, hi = torch.aminmax(self.y)
        if lo < 0 or hi >= self.num_classes:
            raise ValueError(
                f"labels y must lie in [0, {self.num_classes - 1}] for a model with {self.num_classes} classes, "
                f"got values in [{lo.item()}, {hi.item()}]"
            )
        self.robust = logits.argmax(dim=1) == self.y
        # An example misclassified already is its own adversarial point.
        self.adv = self.x0.clone()
        self.best_loss = torch.full((len(x0),), -math.inf, device=x0.device)

    def run(self, loss_fn: Callable[..., Tensor], *, target_rank: int | None = None, zero_grad_warning: bool) -> None:
        """One APGD run on the examples still robust.

        With ``target_rank`` k, ``loss_fn(logits, y, target)`` is taken towards each example's class
        of k-th highest logit on its clean image (the official code ranks the examples it attacks).
        """
        idx = self.robust.nonzero().squeeze(1)
        if len(idx) == 0:
            return
        x0, y = self.x0[idx], self.y[idx]
        if target_rank is not None:
            with torch.no_grad():
                target = self.model(x0.to(self.dtype)).topk(target_rank, dim=1).indices[:, target_rank - 1]
            loss_fn = functools.partial(_with_target, loss_fn, target=target)
        run = _single_run(self.model, x0, y, loss_fn, eps=self.eps, norm=self.norm,
                          steps=self.steps, rho=self.rho, dtype=self.dtype, zero_grad_warning=zero_grad_warning)
        x_fooled, fooled, x_best, loss_best = run
        better = ~fooled & (loss_best > self.best_loss[idx])
        self.adv[idx[fooled]] = x_fooled[fooled]
        self.adv[idx[better]] = x_best[better]
        self.best_loss[idx[better]] = loss_best[better]
        self.robust[idx[fooled]] = False

    def result(self) -> Tensor:
        return self.adv.detach().to(self.dtype)


def _with_target(loss_fn: Callable[..., Tensor], logits: Tensor, y: Tensor, *, target: Tensor) -> Tensor:
    return loss_fn(logits, y, target)


def _checkpoints(steps: int) -> list[int]:
    """The iterations after which the step size may be halved (section 3.2), in the official code's whole steps.

    For steps = 100: [22, 41, 57, 70, 80, 87, 93, 99], the paper's ``w_j = ceil(p_j * 100)``.
    """
    interval = max(int(_FIRST_INTERVAL * steps), 1)
    shrink, shortest = max(int(_INTERVAL_SHRINK * steps), 1), max(int(_SHORTEST_INTERVAL * steps), 1)
    checkpoints, at = [], interval
    while at <= steps:
        checkpoints.append(at)
        interval = max(interval - shrink, shortest)
        at += interval
    return checkpoints


def _single_run(
    model: nn.Module,
    x0: Tensor,
    y: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    *,
    eps: float,
    norm: str,
    steps: int,
    rho: float,
    dtype: torch.dtype,
    zero_grad_warning: bool = False,
    step_sizes: list[Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Algorithm 1 from one random start.

    Returns ``(x_fooled, fooled, x_best, loss_best)``: per example the last misclassified iterate
    and whether there was one, and the point of highest loss with that loss. ``step_sizes``, if
    given, receives the (n,) step sizes used at each iteration (for tests).
    """
    ball = BALLS[norm](eps)
    if norm == "linf":
        # The L-inf projection as the official code writes it, min/max against the ball's box
        # intersected with [0, 1] (one clamp per projection instead of four operations).
        low, high = (x0 - eps).clamp_(min=0), (x0 + eps).clamp_(max=1)

        def project(point: Tensor) -> Tensor:
            return point.clamp_(low, high)
    else:
        def project(point: Tensor) -> Tensor:
            return ball.project(x0, point)
    x_adv = _random_start(x0, eps, norm)
    logits, loss, grad = _loss_and_grad(model, x_adv, y, loss_fn, dtype)
    if zero_grad_warning:
        _warn_zero_gradients(grad)
    fooled = logits.argmax(dim=1) != y
    x_fooled = x_adv.clone()
    x_best, loss_best, grad_best = x_adv.clone(), loss.clone(), grad.clone()
    step_size = torch.full((len(x0),), _FIRST_STEP * eps, device=x0.device, dtype=x0.dtype)
    x_prev = x_adv
    # f(x^(0)), f(x^(1)), ...: condition 1 counts the rises since the last checkpoint.
    losses = [loss]
    checkpoints, last_check = set(_checkpoints(steps)), 0
    best_at_last_check = loss_best.clone()
    # No condition 2 at the first checkpoint (the official code starts this flag at "reduced").
    halved_at_last_check = torch.ones_like(fooled)
    for i in range(steps):
        if step_sizes is not None:
            step_sizes.append(step_size.clone())
        eta = step_size.view(-1, *([1] * (x0.ndim - 1)))
        alpha = _MOMENTUM if i > 0 else 1.0
        with torch.no_grad():
            # Eq. 2: z = P(x + eta * s(grad)); x' = P(x + alpha (z - x) + (1 - alpha)(x - x_prev)).
            z = project(ball.step(x_adv, grad, eta))
            x_next = project(torch.lerp(x_adv, z, alpha).add_(x_adv - x_prev, alpha=1 - alpha))
        x_prev, x_adv = x_adv, x_next
        logits, loss, grad = _loss_and_grad(model, x_adv, y, loss_fn, dtype)
        with torch.no_grad():
            misclassified = logits.argmax(dim=1) != y
            x_fooled[misclassified] = x_adv[misclassified]
            fooled |= misclassified
            improved = loss > loss_best
            x_best[improved], grad_best[improved], loss_best[improved] = x_adv[improved], grad[improved], loss[improved]
            losses.append(loss)
            if i + 1 in checkpoints:
                interval = i + 1 - last_check
                rises = (torch.stack(losses[-interval - 1:]).diff(dim=0) > 0).sum(dim=0)
                condition_1 = rises <= rho * interval
                condition_2 = ~halved_at_last_check & (best_at_last_check >= loss_best)
                halve = condition_1 | condition_2
                step_size[halve] /= 2
                # Restart the halved examples from their best point (section 3.2).
                x_adv = torch.where(halve.view_as(eta), x_best, x_adv)
                grad = torch.where(halve.view_as(eta), grad_best, grad)
                halved_at_last_check, best_at_last_check, last_check = halve, loss_best.clone(), i + 1
    return x_fooled, fooled, x_best, loss_best


def _random_start(x0: Tensor, eps: float, norm: str) -> Tensor:
    """The official code's start, clamped to [0, 1].

    L-inf: a uniform point of the cube rescaled so that its largest coordinate is ``eps``; L2: a
    Gaussian direction of length ``eps``.
    """
    if norm == "linf":
        t = 2 * torch.rand(x0.shape, device=x0.device, dtype=x0.dtype) - 1
        size = reduce(t.abs(), "b ... -> b", "max")
    else:
        t = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype)
        size = l2_norm(t)
    return (x0 + eps * t / (size.view(-1, *([1] * (x0.ndim - 1))) + _TINY)).clamp(0, 1)


def _loss_and_grad(model: nn.Module, x_adv: Tensor, y: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor],
                   dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Logits, per-example losses and the input gradient of their sum, all detached."""
    x_adv = x_adv.detach().requires_grad_(True)
    logits = model(x_adv.to(dtype))
    loss = loss_fn(logits, y)
    (grad,) = torch.autograd.grad(loss.sum(), x_adv)
    return logits.detach(), loss.detach().float(), grad.detach()


def _warn_zero_gradients(grad: Tensor) -> None:
    """The official code's check: an input gradient of exactly zero makes a gradient attack unreliable."""
    zero = int((reduce(grad.abs(), "b ... -> b", "sum") == 0).sum())
    if zero:
        warnings.warn(
            f"APGD: {zero} of {len(grad)} examples have an input gradient of exactly zero at the start; a "
            "gradient attack cannot move them, so their robust accuracy may be overestimated (gradient "
            "masking). Check them with a gradient-free attack such as Square.",
            stacklevel=5,  # the caller of apgd or apgd_targeted
        )


def _check_apgd_args(x: Tensor, y: Tensor, *, eps, steps, norm, restarts, rho) -> None:
    """The checks of PGD, and APGD's own: integer labels and a fraction rho."""
    # APGD sets its own step size (2 * eps, then halved); pgd's checker needs a valid placeholder.
    _check_args(x, y, eps=eps, step_size=1.0, steps=steps, norm=norm, random_start=True, restarts=restarts)
    _check_class_labels(y)
    if not (isinstance(rho, int | float) and 0 <= rho <= 1):
        raise ValueError(f"rho must be a fraction in [0, 1] (0.75 in the paper), got {rho!r}")

"""Targeted FAB: "Minimally distorted adversarial examples with a fast adaptive boundary attack".

Croce and Hein, ICML 2020, https://arxiv.org/abs/1907.02044, run as FAB-T in AutoAttack (Croce and
Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", https://arxiv.org/abs/2003.01690).

FAB (Algorithm 1) looks for the adversarial point closest to ``x``. At the current iterate ``x_k``
it linearises the decision boundary between the true class ``y`` and a target ``t``,
``f_t - f_y``, into the hyperplane ``{z : w.z = b}``, projects both ``x_k`` and ``x`` onto that
hyperplane intersected with the box [0, 1]^d (a minimal-norm problem solved exactly), and steps to
a convex combination of the two projections, extrapolated by ``eta``, that leans towards ``x``
by ``alpha = min(|d_k| / (|d_k| + |d_0|), alpha_max)``. Once an iterate is adversarial it is
recorded if closer than the best so far and pulled back towards ``x`` by ``beta``.
FAB-T tries, one after another, the classes of the 2nd to ``target_classes + 1``-th highest clean
logits as ``t``, each on the examples not yet broken.

Reference we follow: AutoAttack's ``autoattack/fab_base.py``, ``fab_pt.py`` (the targeted branch:
one gradient of ``f_t - f_y`` per step) and ``fab_projections.py`` (``projection_linf``,
``projection_l2``), github.com/fra31/auto-attack; torchattacks' ``FAB(multi_targeted=True)`` is a
copy of it (agreement checked in tests/attacks/test_fab.py). As in AutoAttack, a found point counts
only if it is within ``eps`` of ``x`` and the model misclassifies it; ``eps`` also sets the radius
of the random start of restarts after the first. Differences: the global torch RNG (callers seed
it; AutoAttack reseeds), the targets ranked once from the clean logits (AutoAttack recomputes the
same logits for every target), and the acceptance check made on the point in the input's dtype,
the one returned.

Passes per still-correct example and target: per step one forward and backward at ``x_k`` and
one forward at the new iterate; one forward at the end for a point found. One forward of the
batch ranks the targets.

Contract as :func:`~research.attacks.pgd.pgd`: any ``nn.Module`` mapping [0, 1] images to logits;
gradients with ``torch.autograd.grad`` with respect to the input only (no parameter ``.grad``);
modes and BatchNorm statistics restored; works under ``torch.inference_mode``; the iterates live
in float32 (float64 for float64 input) and the result comes back in the input's dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import Tensor, nn

from research.attacks.mode import attack_context
from research.attacks.pgd import _check_args, _check_class_labels, _check_target_classes

# AutoAttack's floor on the length of a projection step (fab_base.py: ``a0 = max(a0, 1e-8)``).
_MIN_STEP = 1e-8


def fab_targeted(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 100,
    target_classes: int = 9,
    restarts: int = 1,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    eval_mode: bool = True,
) -> Tensor:
    """FAB-T: targeted FAB towards each of the runner-up classes in turn, kept where within ``eps``.

    Args:
        model: maps (B, C, H, W) images in [0, 1] to (B, num_classes) logits.
        x: (B, C, H, W) images in [0, 1] (any (B, ...) shape the model takes).
        y: (B,) integer labels, the true classes.
        eps: radius of the ball in ``norm``, in pixel units: a point further than ``eps`` does not
            count; also sets the random start of restarts after the first (``eps / 2``).
        norm: ``"linf"`` or ``"l2"``.
        steps: FAB iterations per target and restart (AutoAttack: 100).
        target_classes: how many targets to try, the classes of the 2nd, 3rd, ... highest clean
            logits (AutoAttack: 9); at most ``num_classes - 1``.
        restarts: runs per target; the first starts at ``x``, the others at a random point at
            distance ``eps / 2`` (AutoAttack's FAB-T: 1).
        alpha_max: the largest weight of the projection of ``x`` in a step (AutoAttack: 0.1).
        eta: extrapolation of each projection step, >= 1 overshoots the hyperplane (AutoAttack: 1.05).
        beta: an adversarial iterate is pulled back to ``x + beta * (x_k - x)`` (AutoAttack: 0.9).
        eval_mode: attack the model in eval mode (default); False attacks each module in its
            current mode, see :func:`~research.attacks.mode.attack_mode`.

    Returns:
        (B, C, H, W) images in [0, 1], in ``x``'s dtype and device, detached: per example the
        closest misclassified point FAB found for the first target that gave one within ``eps``
        (``||x_adv - x|| <= eps`` in ``norm``), else ``x`` itself. Examples the model already
        misclassifies are returned unchanged and never attacked.

    Raises:
        ValueError: an argument out of range, an unknown norm, ``x`` outside [0, 1], ``y`` not one
            integer label per image, or more ``target_classes`` than the model has other classes.

    """
    _check_args(x, y, eps=eps, step_size=1.0, steps=steps, norm=norm, random_start=True, restarts=restarts)
    _check_class_labels(y)
    _check_target_classes(target_classes)
    if not (isinstance(alpha_max, int | float) and 0 <= alpha_max <= 1):
        raise ValueError(f"alpha_max must be a number in [0, 1], got {alpha_max!r}; AutoAttack uses 0.1")
    if not (isinstance(eta, int | float) and math.isfinite(eta) and eta > 0):
        raise ValueError(f"eta must be a finite number > 0, got {eta!r}; AutoAttack uses 1.05")
    if not (isinstance(beta, int | float) and 0 <= beta <= 1):
        raise ValueError(f"beta must be a number in [0, 1], got {beta!r}; AutoAttack uses 0.9")
    with attack_context(model, x, y, eval_mode=eval_mode) as (x0, y):
        y = y.long()
        with torch.no_grad():
            logits = model(x0.to(x.dtype)).float()
        if target_classes > logits.shape[1] - 1:
            raise ValueError(
                f"target_classes={target_classes} needs at least {target_classes + 1} classes, the model gives "
                f"{logits.shape[1]} logits; pass target_classes={logits.shape[1] - 1} or fewer"
            )
        # fab_base.py: the k-th highest clean logit is ``output.sort()[1][:, -k]``, k = 2, 3, ...
        ranked = logits.sort(dim=1).indices
        robust = logits.argmax(1) == y
        result = x0.clone()
        for k in range(2, target_classes + 2):
            for restart in range(restarts):
                idx = robust.nonzero().squeeze(1)
                if len(idx) == 0:
                    return result.to(x.dtype)
                found, adv = _fab(model, x0[idx], y[idx], ranked[idx, -k], eps=eps, norm=norm, steps=steps,
                                  alpha_max=alpha_max, eta=eta, beta=beta, random_start=restart > 0, dtype=x.dtype)
                idx, adv = idx[found], adv[found].to(x.dtype)
                if len(idx) == 0:
                    continue
                # AutoAttack counts FAB's point only if the model misclassifies it and it is within eps.
                with torch.no_grad():
                    fooled = model(adv).argmax(1) != y[idx]
                adv = adv.to(x0.dtype)
                ok = fooled & (_norm(adv - x0[idx], norm) <= eps)
                result[idx[ok]] = adv[ok]
                robust[idx[ok]] = False
        return result.to(x.dtype)


def _norm(delta: Tensor, norm: str) -> Tensor:
    """Per-example L-inf or L2 norm. Shape: (B, ...) -> (B,)."""
    if norm == "linf":
        return reduce(delta.abs(), "b ... -> b", "max")
    return reduce(delta.square(), "b ... -> b", "sum").sqrt()


def _fab(model: nn.Module, x: Tensor, y: Tensor, target: Tensor, *, eps: float, norm: str, steps: int,
         alpha_max: float, eta: float, beta: float, random_start: bool, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """One targeted FAB run (fab_base.py ``attack_single_run``, ``is_targeted=True``).

    Returns whether a misclassified iterate was found (B,) and the closest one found, else ``x``
    (B, ...).
    """
    n = len(x)
    flat_x = rearrange(x, "b ... -> b (...)")
    x_k = x.clone()
    if random_start:
        # fab_base.py: a random direction scaled to norm eps / 2 (``min(res2, eps)`` with res2 still 1e10).
        t = torch.rand_like(x) * 2 - 1 if norm == "linf" else torch.randn_like(x)
        x_k = (x + 0.5 * eps * t / _per_example(_norm(t, norm), x)).clamp(0, 1)
    best, best_dist = x.clone(), torch.full((n,), math.inf, device=x.device, dtype=x.dtype)
    for _ in range(steps):
        x_k.requires_grad_(True)
        logits = model(x_k.to(dtype)).float()
        # fab_pt.py ``get_diff_logits_grads_batch_targeted``: df = f_t - f_y and its input gradient.
        gap = (logits.gather(1, target[:, None]) - logits.gather(1, y[:, None])).squeeze(1)
        (grad,) = torch.autograd.grad(gap.sum(), x_k)
        x_k, gap = x_k.detach(), gap.detach().to(x.dtype)
        # The linearised boundary f_t - f_y = 0 around x_k: w.z = b with w = grad, b = w.x_k - gap.
        w = rearrange(grad, "b ... -> b (...)")
        flat_k = rearrange(x_k, "b ... -> b (...)")
        b = (w * flat_k).sum(1) - gap
        d = project_onto_hyperplane_in_box(torch.cat([flat_k, flat_x]), torch.cat([w, w]), torch.cat([b, b]), norm)
        d_k, d_0 = d[:n].view_as(x), d[n:].view_as(x)
        length = _norm(d, norm).clamp_min(_MIN_STEP)
        alpha = _per_example((length[:n] / (length[:n] + length[n:])).clamp(0, alpha_max), x)
        # The biased step: towards the boundary from x_k, leaning towards the projection of x.
        x_k = ((x_k + eta * d_k) * (1 - alpha) + (x + eta * d_0) * alpha).clamp(0, 1)
        with torch.no_grad():
            adversarial = model(x_k.to(dtype)).argmax(1) != y
        if adversarial.any():
            dist = _norm(x_k - x, norm)
            closer = adversarial & (dist < best_dist)
            best = torch.where(_per_example(closer, x), x_k, best)
            best_dist = torch.where(closer, dist, best_dist)
            # Backward step: an adversarial iterate moves back towards x.
            x_k = torch.where(_per_example(adversarial, x), x + (x_k - x) * beta, x_k)
    return best_dist < math.inf, best


def _per_example(values: Tensor, like: Tensor) -> Tensor:
    """(B,) values -> (B, 1, ..., 1), broadcastable against ``like``."""
    return values.view(-1, *([1] * (like.ndim - 1)))


def project_onto_hyperplane_in_box(points: Tensor, w: Tensor, b: Tensor, norm: str) -> Tensor:
    """The shortest step ``d`` from each point onto its hyperplane within the box: FAB's projection.

    Solves, per row, ``min ||d||_p  s.t.  w.(t + d) = b,  0 <= t + d <= 1`` exactly (the paper's
    projection with box constraints, AutoAttack's ``projection_linf`` and ``projection_l2``), for
    ``p`` = inf or 2. When no point of the box lies on the hyperplane, ``d`` moves to the vertex of
    the box closest to it. Coordinates with ``w_i = 0`` do not move.

    Args:
        points: (N, D) points ``t`` in [0, 1].
        w: (N, D) normals of the hyperplanes.
        b: (N,) offsets.
        norm: ``"linf"`` or ``"l2"``.

    Returns:
        (N, D) steps ``d``.

    """
    if norm == "linf":
        return _project_linf(points, w, b)
    if norm == "l2":
        return _project_l2(points, w, b)
    raise ValueError(f"unknown norm {norm!r}; use 'linf' or 'l2'")


def _project_linf(t: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """fab_projections.py ``projection_linf``.

    With the hyperplane oriented so that ``w.t >= b``, the optimal step is ``d_i = -sign(w_i)
    min(lam, room_i)``, ``room_i`` the distance from ``t_i`` to the bound it moves towards:
    ``w.d(lam)`` is piecewise linear and decreasing in ``lam``; a binary search over the sorted
    rooms finds the piece where it meets ``b - w.t``.
    """
    sign = torch.where((w * t).sum(1) - b >= 0, 1.0, -1.0).to(w.dtype)
    w, b = w * sign[:, None], b * sign
    up = (w < 0).to(t.dtype)  # these coordinates lower w.(t + d) by moving up, the others by moving down
    moves = (w != 0).to(t.dtype)
    d = (up - t) * moves  # the vertex of the box lowest on the hyperplane's normal
    room = up - t * (2 * up - 1)  # 1 - t upwards, t downwards
    order = room.argsort(dim=1)
    b = b - (w * t).sum(1)  # the value w.d must reach
    b0 = (w * d).sum(1)  # the lowest value it can reach
    descending = order.flip(1)
    w_sorted = w.gather(1, descending)
    # With the k + 1 roomiest coordinates free (not at their bound): w.d(lam) = sb[k] - s[k] * lam.
    s = torch.cumsum(w_sorted.abs(), dim=1)
    sb = torch.cumsum(-w_sorted * d.gather(1, descending), dim=1) + b0[:, None]
    # All coordinates free at lam = the smallest room: the solution is inside that first piece.
    all_free = b - (sb[:, -1] - s[:, -1] * room.gather(1, order[:, :1]).squeeze(1)) > 0
    searched = (b - b0 > 0) & ~all_free  # reachable, on a later piece; else the vertex d
    lo = torch.zeros(int(searched.sum()), device=t.device, dtype=t.dtype)
    hi = torch.full_like(lo, w.shape[1] - 1)
    order_, sb_, s_, room_, b_ = order[searched], sb[searched], s[searched], room[searched], b[searched]
    for _ in range(math.ceil(math.log2(w.shape[1]))):
        mid = torch.floor((lo + hi) / 2)
        k = mid.long()[:, None]
        at = order_.gather(1, order_.shape[1] - 1 - k)
        reached = b_ - (sb_.gather(1, k) - s_.gather(1, k) * room_.gather(1, at)).squeeze(1) > 0
        lo = torch.where(reached, mid, lo)
        hi = torch.where(reached, hi, mid)
    k = lo.long()
    if all_free.any():
        lam = ((b[all_free] - sb[all_free, -1]) / -s[all_free, -1]).clamp_min(0)[:, None]
        d[all_free] = (2 * up[all_free] - 1) * lam
    lam = ((b[searched] - sb[searched, k]) / -s[searched, k]).clamp_min(0)[:, None]
    d[searched] = torch.minimum(lam, d[searched]) * up[searched] + torch.maximum(-lam, d[searched]) * (1 - up[searched])
    return d * moves


def _project_l2(t: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """fab_projections.py ``projection_l2``.

    With the hyperplane oriented so that ``c = w.t - b >= 0``, the optimal step is ``d_i =
    clip(-a w_i)`` to the box for the smallest ``a >= 0`` that reaches the hyperplane; coordinate
    ``i`` hits its bound at ``a = r_i``. Sorting the ``r_i`` makes ``w.d(a)`` piecewise linear, and a
    binary search finds the piece where it meets ``-c``.
    """
    c = (w * t).sum(1) - b
    sign = torch.where(c >= 0, 1.0, -1.0).to(w.dtype)
    w, c = w * sign[:, None], c * sign
    flat = w.abs() < 1e-8  # coordinates treated as not moving
    r = torch.maximum(t / w, (t - 1) / w).clamp(min=-1e12, max=1e12)
    r = r.masked_fill(flat, 1e12)
    r = torch.where(r == -1e12, -r, r)
    rs, order = torch.sort(r, dim=1)
    rs2 = F.pad(rs[:, 1:], (0, 1))
    rs = rs.masked_fill(rs == 1e12, 0)
    rs2 = rs2.masked_fill(rs2 == 1e12, 0)
    w2_sorted = w.square().gather(1, order)
    w2_total = w2_sorted.sum(dim=1, keepdim=True)
    w2_free = w2_total - torch.cumsum(w2_sorted, dim=1)  # squared norm of w over the coordinates still free
    d = -(r * w) * (~flat).to(t.dtype)  # every coordinate at its bound
    # s[k] + c: the value of w.d + c with the k smallest r_i reached.
    s = torch.cat((-w2_total * rs[:, :1], torch.cumsum((rs - rs2) * w2_free, dim=1) - w2_total * rs[:, :1]), 1)
    none_at_bound = s[:, 0] + c < 0
    unreachable = (d * w).sum(1) + c > 0  # even every coordinate at its bound does not reach: the vertex
    searched = ~(none_at_bound | unreachable)
    lo = torch.zeros(int(searched.sum()), device=t.device, dtype=t.dtype)
    hi = torch.full_like(lo, w.shape[1] - 1)
    s_, c_ = s[searched], c[searched]
    for _ in range(math.ceil(math.log2(w.shape[1]))):
        mid = torch.floor((lo + hi) / 2)
        above = s_.gather(1, mid.long()[:, None]).squeeze(1) + c_ > 0
        lo = torch.where(above, mid, lo)
        hi = torch.where(above, hi, mid)
    k = lo.long()
    if none_at_bound.any():
        a = c[none_at_bound] / w2_total[none_at_bound].squeeze(-1)
        d[none_at_bound] = -a[:, None] * w[none_at_bound]
    if searched.any():
        a = (s[searched, k] + c[searched]) / w2_free[searched, k] + rs[searched, k]
        a[w2_free[searched, k] == 0] = 0
        at_bound = (a[:, None] > r[searched]).to(t.dtype)
        d[searched] = d[searched] * at_bound - a[:, None] * w[searched] * (1 - at_bound)
    return d * (~flat).to(t.dtype)

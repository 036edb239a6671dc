"""Square Attack: "Square Attack: a query-efficient black-box adversarial attack via random search".

Andriushchenko, Croce, Flammarion and Hein, ECCV 2020, https://arxiv.org/abs/1912.00049.

A random search on the margin loss ``f_y(x) - max_{k != y} f_k(x)`` that only queries the model's
logits (Algorithm 1). Each proposal changes one square window of the current perturbation:

* L-inf (Algorithm 2): the window is set to ``x +- eps``, one sign per channel, from a start of
  vertical stripes ``x +- eps`` (one sign per column and channel).
* L2 (Algorithm 3): the mass of a second window is moved into the first, which receives a
  "pseudo-Gaussian" pattern of nested rectangles of opposite sign in its two halves, then the whole
  perturbation is rescaled to norm ``eps``; the start is a 5x5 grid of such patterns.

A proposal is kept when it lowers the margin. The side of the window is ``sqrt(p * h * w)``,
with ``p`` halved at fixed fractions of the query budget (the paper's piecewise schedule written
for 10,000 queries and rescaled to ``queries``), starting at ``p_init``.

Reference we follow: AutoAttack's ``autoattack/square.py`` (github.com/fra31/auto-attack), the
version its standard ensemble runs (``p_init=0.8``, 5,000 queries, margin loss, rescaled
schedule); torchattacks' ``Square`` is a copy of it (agreement checked in
tests/attacks/test_square.py). Where we differ, and why:

* Windows, signs and pattern orientations are drawn independently per example, as in the paper's
  Algorithm 1 and the authors' first code (github.com/max-andr/square-attack, ``attack.py``);
  AutoAttack's vectorised code shares one window per iteration across the batch. Per example the
  proposals have the same distribution, so the success rate is the same in expectation.
* The global torch RNG is used (callers seed it); AutoAttack reseeds with a fixed seed.
* "Fooled" is the model's argmax leaving ``y`` (AutoAttack: margin <= 0; they differ only on an
  exact tie of logits), so a returned point always changes the prediction.

Queries: one forward of the whole batch finds the clean-correct examples; each restart then spends
per still-correct example one query on its start and one per iteration until it is fooled (at most
``1 + queries``). Fooled examples are never queried again; no other forward pass is made.

Contract as :func:`~research.attacks.pgd.pgd`: any ``nn.Module`` mapping [0, 1] images to logits,
modes and BatchNorm statistics restored (:func:`~research.attacks.mode.attack_mode`), no autograd
at all (every query is under ``torch.no_grad``), works under ``torch.inference_mode``, the search
runs in float32 (float64 for float64 input) and the result comes back in the input's dtype.
"""

from __future__ import annotations

import math
from functools import cache

import torch
from einops import rearrange, reduce
from torch import Tensor, nn

from research.attacks.mode import attack_mode
from research.attacks.pgd import _check_args

# AutoAttack's guard against dividing by a zero norm (square.py, ``normalize`` and the L2 window norms).
_TINY = 1e-12


def square(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    queries: int = 5000,
    p_init: float = 0.8,
    restarts: int = 1,
    eval_mode: bool = True,
) -> Tensor:
    """Untargeted Square Attack on the margin loss; only the logits of the model are used.

    Args:
        model: maps (B, C, H, W) images in [0, 1] to (B, num_classes) logits.
        x: (B, C, H, W) images in [0, 1].
        y: (B,) integer labels, the true classes.
        eps: radius of the ball in ``norm``, in pixel units (e.g. 0.3 for L-inf on MNIST).
        norm: ``"linf"`` or ``"l2"``.
        queries: iterations of the random search per restart (AutoAttack: 5,000), each one query
            per still-correct example, after one query for the start.
        p_init: initial fraction of the pixels the square covers (AutoAttack: 0.8); it is halved
            on the schedule of the paper, rescaled to ``queries``.
        restarts: independent runs from a new random start, each on the examples still correctly
            classified.
        eval_mode: attack the model in eval mode (default); False attacks each module in its
            current mode, see :func:`~research.attacks.mode.attack_mode`.

    Returns:
        (B, C, H, W) images in [0, 1], in ``x``'s dtype and device, detached: per example a point
        with ``||x_adv - x|| <= eps`` in ``norm`` that the model misclassifies, where the search
        found one, else ``x`` itself (as AutoAttack returns). Examples the model already
        misclassifies are returned unchanged and never attacked.

    Raises:
        ValueError: an argument out of range, an unknown norm, ``x`` not a (B, C, H, W) batch in
            [0, 1], ``y`` not one integer label per image, or an L2 attack on images smaller than
            5x5 pixels (its start is a 5x5 grid of squares).

    """
    _check_args(x, y, eps=eps, step_size=1.0, steps=0, norm=norm, random_start=True, restarts=restarts)
    if isinstance(queries, bool) or not isinstance(queries, int) or queries < 0:
        raise ValueError(f"queries must be an integer >= 0, got {queries!r}; AutoAttack uses 5000")
    if not (isinstance(p_init, int | float) and 0 < p_init <= 1):
        raise ValueError(f"p_init must be a fraction in (0, 1], got {p_init!r}; AutoAttack uses 0.8")
    if x.ndim != 4:
        raise ValueError(f"square attacks (B, C, H, W) image batches, got x of shape {tuple(x.shape)}")
    if y.ndim != 1 or y.is_floating_point() or y.is_complex():
        raise ValueError(f"y must be (B,) integer class labels, got a {y.dtype} tensor of shape {tuple(y.shape)}")
    if norm == "l2" and min(x.shape[-2:]) < 5:
        raise ValueError(
            f"square(norm='l2') needs images of at least 5x5 pixels (its start is a 5x5 grid of squares), "
            f"got {x.shape[-2]}x{x.shape[-1]}; use norm='linf' or larger images"
        )
    # Leave inference mode (a Lightning test step runs in it) so that the tensors built here are
    # ordinary ones; no gradient is ever needed. The search runs in float32 (small changes do not
    # vanish); the model sees the input's dtype.
    with torch.inference_mode(False), torch.no_grad(), attack_mode(model, eval_mode=eval_mode):
        x0 = x.detach().to(torch.promote_types(x.dtype, torch.float32), copy=True)
        y = y.clone().long()
        run = _linf_run if norm == "linf" else _l2_run
        result = x0.clone()
        robust = _query(model, x0, y, x.dtype)[1].logical_not()
        for _ in range(restarts):
            idx = robust.nonzero().squeeze(1)
            if len(idx) == 0:
                break
            adv, fooled = run(model, x0[idx], y[idx], eps=eps, queries=queries, p_init=p_init, dtype=x.dtype)
            result[idx[fooled]] = adv[fooled]
            robust[idx[fooled]] = False
        return result.to(x.dtype)


def p_schedule(p_init: float, iteration: int, queries: int) -> float:
    """The fraction of pixels a square covers at ``iteration`` (0-based) of ``queries``.

    The paper's piecewise-constant schedule: ``p_init`` halved after 10, 50, 200, 500, 1000, 2000,
    4000, 6000 and 8000 of 10,000 iterations, the breakpoints rescaled to ``queries`` (AutoAttack's
    ``p_selection`` with ``resc_schedule=True``).
    """
    it = int(iteration / queries * 10000)
    halvings = sum(it > bound for bound in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
    return p_init / 2**halvings


def _query(model: nn.Module, x_adv: Tensor, y: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """One forward: the margin ``f_y - max_{k != y} f_k`` (B,) and whether the argmax left ``y`` (B,)."""
    logits = model(x_adv.to(dtype)).float()
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return true - other, logits.argmax(1) != y


def _random_signs(*shape: int, like: Tensor) -> Tensor:
    return torch.randint(0, 2, shape, device=like.device).to(like.dtype) * 2 - 1


def _corners(n: int, span: int, s: int, device: torch.device) -> Tensor:
    """(n,) top (or left) edges of windows of side ``s``: uniform in [0, span - s), as AutoAttack draws them.

    ``random_int(0, h - s)`` in AutoAttack (and ``randint(0, h - s)`` in the authors' first code)
    never places a window at the last offset; kept, so the proposals are theirs.
    """
    return torch.randint(0, max(span - s, 1), (n,), device=device)


def _search(model: nn.Module, x: Tensor, y: Tensor, x_best: Tensor, queries: int, dtype: torch.dtype,
            propose) -> tuple[Tensor, Tensor]:
    """Algorithm 1: keep a proposal that lowers the margin; stop querying an example once it is fooled.

    ``propose(x, x_best, iteration)`` returns one proposal per row of its inputs.
    Returns the last accepted points (B, C, H, W) and whether each fools the model (B,).
    """
    margin, fooled = _query(model, x_best, y, dtype)
    for iteration in range(queries):
        idx = fooled.logical_not().nonzero().squeeze(1)
        if len(idx) == 0:
            break
        candidate = propose(x[idx], x_best[idx], iteration)
        new_margin, new_fooled = _query(model, candidate, y[idx], dtype)
        # AutoAttack: accept when the loss improves or the example is misclassified.
        accept = (new_margin < margin[idx]) | new_fooled
        margin[idx[accept]] = new_margin[accept]
        fooled[idx] = new_fooled
        x_best[idx[accept]] = candidate[accept]
    return x_best, fooled


def _linf_run(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, queries: int, p_init: float,
              dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    n, c, h, w = x.shape
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)

    def propose(x: Tensor, x_best: Tensor, iteration: int) -> Tensor:
        p = p_schedule(p_init, iteration, queries)
        s = min(max(round(math.sqrt(p * h * w)), 1), h, w)
        top, left = _corners(len(x), h, s, x.device), _corners(len(x), w, s, x.device)
        inside = ((rows >= top[:, None]) & (rows < top[:, None] + s))[:, :, None] & (
            (cols >= left[:, None]) & (cols < left[:, None] + s)
        )[:, None, :]  # (n, h, w)
        # A step of 2 eps then the clamp to the ball sets the window to x +- eps (one sign per channel).
        step = 2 * eps * _random_signs(len(x), c, 1, 1, like=x) * rearrange(inside, "b h w -> b 1 h w")
        return torch.minimum(torch.maximum(x_best + step, x - eps), x + eps).clamp(0, 1)

    # The paper's L-inf start: vertical stripes x +- eps, one sign per column and channel.
    start = (x + eps * _random_signs(n, c, 1, w, like=x)).clamp(0, 1)
    return _search(model, x, y, start, queries, dtype, propose)


def _l2_run(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, queries: int, p_init: float,
            dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    n, c, h, w = x.shape

    def propose(x: Tensor, x_best: Tensor, iteration: int) -> Tensor:
        m = len(x)
        p = p_schedule(p_init, iteration, queries)
        s = max(round(math.sqrt(p * h * w)), 3)
        s = min(s + 1 if s % 2 == 0 else s, h, w)  # odd, so the pattern has a centre
        delta = rearrange(x_best - x, "b c h w -> b c (h w)")
        first = _window_indices(_corners(m, h, s, x.device), _corners(m, w, s, x.device), s, w)
        second = _window_indices(_corners(m, h, s, x.device), _corners(m, w, s, x.device), s, w)
        first_c, second_c = (_repeat_channels(i, c) for i in (first, second))
        window = delta.gather(2, first_c)  # (m, c, s*s)
        both = torch.zeros(m, h * w, dtype=torch.bool, device=x.device).scatter(1, first, True).scatter(1, second, True)
        # Norms per channel of the first window and of both windows, and of the whole perturbation.
        window_norm = reduce(window.square(), "b c k -> b c 1", "sum").sqrt()
        windows_norm = reduce((delta * both[:, None]).square(), "b c k -> b c 1", "sum").sqrt()
        image_norm = reduce(delta.square(), "b c k -> b 1 1", "sum").sqrt()
        new = _patterns(s, m, like=x) * _random_signs(m, c, 1, like=x) + window / (_TINY + window_norm)
        # The first window takes the mass of both windows plus what the budget has left, shared by the channels.
        budget = ((eps**2 - image_norm.square()).clamp_min(0) / c + windows_norm.square()).sqrt()
        new = new / (_TINY + reduce(new.square(), "b c k -> b c 1", "sum").sqrt()) * budget
        delta = delta.scatter(2, second_c, 0.0).scatter(2, first_c, new)
        delta = rearrange(delta, "b c (h w) -> b c h w", h=h)
        return (x + _rescale(delta, eps)).clamp(0, 1)

    # The paper's L2 start: a 5x5 grid of patterns with random signs, rescaled to norm eps.
    s = min(h, w) // 5  # AutoAttack: h // 5 (it assumes square images)
    start = torch.zeros_like(x)
    for top in range((h - 5 * s) // 2, h - s + 1, s):
        for left in range((w - 5 * s) // 2, w - s + 1, s):
            pattern = rearrange(_patterns(s, n, like=x), "b 1 (h w) -> b 1 h w", h=s)
            start[:, :, top:top + s, left:left + s] += pattern * _random_signs(n, c, 1, 1, like=x)
    start = (x + _rescale(start, eps)).clamp(0, 1)
    return _search(model, x, y, start, queries, dtype, propose)


def _rescale(delta: Tensor, eps: float) -> Tensor:
    """``eps * delta / ||delta||_2`` per example (AutoAttack's ``normalize`` times eps)."""
    return eps * delta / (reduce(delta.square(), "b c h w -> b 1 1 1", "sum").sqrt() + _TINY)


def _window_indices(top: Tensor, left: Tensor, s: int, width: int) -> Tensor:
    """(n, s*s) flat pixel indices of the windows of side ``s`` at (``top``, ``left``)."""
    offsets = torch.arange(s, device=top.device)
    rows = (top[:, None] + offsets)[:, :, None]
    cols = (left[:, None] + offsets)[:, None, :]
    return rearrange(rows * width + cols, "b i j -> b (i j)")


def _repeat_channels(indices: Tensor, c: int) -> Tensor:
    return indices[:, None].expand(-1, c, -1)


def _patterns(s: int, n: int, *, like: Tensor) -> Tensor:
    """(n, 1, s*s) unit-norm L2 patterns of side ``s``, each transposed with probability 1/2."""
    pattern = _pseudo_gaussian(s).to(device=like.device, dtype=like.dtype)
    flip = torch.rand(n, device=like.device) > 0.5
    patterns = torch.where(flip[:, None, None], pattern.T, pattern)
    return rearrange(patterns, "b i j -> b 1 (i j)")


@cache
def _pseudo_gaussian(s: int) -> Tensor:
    """Algorithm 3's pattern (AutoAttack's ``eta``): nested rectangles in each half, the halves of opposite sign."""
    pattern = torch.zeros(s, s, dtype=torch.float64)
    pattern[: s // 2] = _nested_rectangles(s // 2, s)
    pattern[s // 2 :] = -_nested_rectangles(s - s // 2, s)
    return pattern / pattern.norm()


def _nested_rectangles(height: int, width: int) -> Tensor:
    """AutoAttack's ``eta_rectangles``: rectangles grown from the centre, the k-th weighted 1 / (k + 1)^2."""
    pattern = torch.zeros(height, width, dtype=torch.float64)
    if height == 0:
        return pattern
    top, left = height // 2, width // 2
    for k in range(max(height // 2 + 1, width // 2 + 1)):
        rows = slice(max(top - k, 0), min(top + k + 1, height))
        pattern[rows, max(left - k, 0) : min(left + k + 1, width)] += 1 / (k + 1) ** 2
    return pattern / pattern.norm()

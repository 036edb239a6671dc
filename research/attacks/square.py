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

* None in the search: one window, one sign per channel and one pattern orientation per
  iteration, shared by the batch, drawn from the CPU generator in AutoAttack's order and shapes,
  so that from the same seed the search is AutoAttack's, draw for draw (checked against
  torchattacks). The paper's Algorithm 1 and the authors' first code
  (github.com/max-andr/square-attack) draw per image; per example the proposals have the same
  distribution either way, but sharing them correlates the examples' outcomes: on 1,000 MNIST
  digits the robust accuracy of one run spread by about 1.2 points across seeds, against 0.3
  with per-example draws (same mean).
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
from einops import rearrange
from torch import Tensor, nn

from research.attacks.mode import attack_context
from research.attacks.pgd import _check_args, _check_class_labels

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
    _check_class_labels(y)
    if norm == "l2" and min(x.shape[-2:]) < 5:
        raise ValueError(
            f"square(norm='l2') needs images of at least 5x5 pixels (its start is a 5x5 grid of squares), "
            f"got {x.shape[-2]}x{x.shape[-1]}; use norm='linf' or larger images"
        )
    # A query-only search: no gradient is ever needed.
    with attack_context(model, x, y, eval_mode=eval_mode, grad=False) as (x0, y):
        y = y.long()
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


# The random draws, as AutoAttack makes them: on the CPU generator (then moved), in its order and shapes.


def _random_signs(*shape: int, like: Tensor) -> Tensor:
    """AutoAttack's ``random_choice``: signs of uniform noise, drawn on the CPU."""
    return torch.sign(2 * torch.rand(shape) - 1).to(device=like.device, dtype=like.dtype)


def _random_offset(span: int) -> int:
    """AutoAttack's ``random_int(0, span)``: uniform in [0, span), or 0 when ``span`` is 0.

    The window is therefore never placed at the last offset (as also in the authors' first code,
    ``np.random.randint(0, h - s)``); kept, so that the proposals are AutoAttack's.
    """
    return int((span * torch.rand(1)).long())


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

    def propose(x: Tensor, x_best: Tensor, iteration: int) -> Tensor:
        s = min(max(round(math.sqrt(p_schedule(p_init, iteration, queries) * h * w)), 1), h, w)
        top, left = _random_offset(h - s), _random_offset(w - s)
        step = torch.zeros_like(x[0])
        # A step of 2 eps then the clamp to the ball sets the window to x +- eps, one sign per channel.
        step[:, top : top + s, left : left + s] = 2 * eps * _random_signs(c, 1, 1, like=x)
        return torch.minimum(torch.maximum(x_best + step, x - eps), x + eps).clamp(0, 1)

    # The paper's L-inf start: vertical stripes x +- eps, one sign per column and channel.
    start = (x + eps * _random_signs(n, c, 1, w, like=x)).clamp(0, 1)
    return _search(model, x, y, start, queries, dtype, propose)


def _l2_run(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, queries: int, p_init: float,
            dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    n, c, h, w = x.shape
    eps_squared = torch.tensor(eps, dtype=x.dtype, device=x.device) ** 2  # as AutoAttack rounds it

    def propose(x: Tensor, x_best: Tensor, iteration: int) -> Tensor:
        delta = x_best - x
        s = max(round(math.sqrt(p_schedule(p_init, iteration, queries) * h * w)), 3)
        s = min(s + 1 if s % 2 == 0 else s, h, w)  # odd, so that the pattern has a centre
        top, left = _random_offset(h - s), _random_offset(w - s)
        first = (slice(None), slice(None), slice(top, top + s), slice(left, left + s))
        window_norm = (delta[first] ** 2).sum(dim=(-2, -1), keepdim=True).sqrt()  # per channel
        top, left = _random_offset(h - s), _random_offset(w - s)
        second = (slice(None), slice(None), slice(top, top + s), slice(left, left + s))
        both = torch.zeros_like(x)
        both[first] = 1.0
        both[second] = 1.0
        windows_norm = ((delta * both) ** 2).sum(dim=(-2, -1), keepdim=True).sqrt()  # per channel
        image_norm = _l2(delta)
        new = _pattern(s, like=x) * _random_signs(len(x), c, 1, 1, like=x) + delta[first] / (_TINY + window_norm)
        new = new.contiguous()  # sums in AutoAttack's order (a transposed pattern would give the result its layout)
        # The first window takes the mass of both windows plus what the budget has left, shared by the channels.
        budget = ((eps_squared - image_norm**2).clamp_min(0) / c + windows_norm**2).sqrt()
        new = new / (_TINY + (new**2).sum(dim=(-2, -1), keepdim=True).sqrt()) * budget
        delta[second] = 0.0
        delta[first] = new
        return (x + delta / (_l2(delta) + _TINY) * eps).clamp(0, 1)

    # The paper's L2 start: a 5x5 grid of patterns with random signs, rescaled to norm eps.
    s = min(h, w) // 5  # AutoAttack: h // 5 (it assumes square images)
    start = torch.zeros_like(x)
    for top in range((h - 5 * s) // 2, h - s + 1, s):
        for left in range((w - 5 * s) // 2, w - s + 1, s):
            start[:, :, top : top + s, left : left + s] += _pattern(s, like=x) * _random_signs(n, c, 1, 1, like=x)
    start = (x + start / (_l2(start) + _TINY) * eps).clamp(0, 1)
    return _search(model, x, y, start, queries, dtype, propose)


def _l2(delta: Tensor) -> Tensor:
    """Per-example L2 norm. Shape: (B, C, H, W) -> (B, 1, 1, 1)."""
    return rearrange(rearrange(delta**2, "b c h w -> b (c h w)").sum(-1).sqrt(), "b -> b 1 1 1")


def _pattern(s: int, *, like: Tensor) -> Tensor:
    """Algorithm 3's pattern of side ``s`` (1, 1, s, s), transposed with probability 1/2 (AutoAttack's ``eta``)."""
    pattern = _pseudo_gaussian(s).to(device=like.device, dtype=like.dtype)
    if torch.rand(1) > 0.5:
        pattern = pattern.T.contiguous()
    return rearrange(pattern, "h w -> 1 1 h w")


@cache
def _pseudo_gaussian(s: int) -> Tensor:
    """Nested rectangles in each half, the halves of opposite sign, unit L2 norm (float32, as AutoAttack's)."""
    pattern = torch.zeros(s, s)
    pattern[: s // 2] = _nested_rectangles(s // 2, s)
    pattern[s // 2 :] = -1.0 * _nested_rectangles(s - s // 2, s)
    return pattern / (pattern**2).sum(dim=(0, 1), keepdim=True).sqrt()


def _nested_rectangles(height: int, width: int) -> Tensor:
    """AutoAttack's ``eta_rectangles``: rectangles grown from the centre, the k-th weighted 1 / (k + 1)^2."""
    pattern = torch.zeros(height, width)
    top, left = height // 2, width // 2
    for k in range(max(height // 2 + 1, width // 2 + 1)):
        rows = slice(max(top - k, 0), min(top + k + 1, height))
        pattern[rows, max(left - k, 0) : min(left + k + 1, width)] += 1.0 / torch.tensor([float(k + 1)]) ** 2
    return pattern / (pattern**2).sum(dim=(0, 1), keepdim=True).sqrt()

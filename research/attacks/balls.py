"""The threat models of PGD: an L-inf or L2 ball of radius ``eps`` around the input, inside [0, 1].

Each ball is Madry et al.'s step object (the ``robustness`` library's ``AttackerStep``): where to
start (``random_start``), how to move along a gradient (``step``) and how to return to the
allowed set (``project``), so that both norms share one PGD loop. Images are (B, ...) batches
and every norm is taken per example.
"""

from __future__ import annotations

import torch
from einops import reduce
from torch import Tensor

# Guards the division by a norm of zero (a zero gradient, or a perturbation of zero).
_TINY = 1e-12


def _per_example(values: Tensor, like: Tensor) -> Tensor:
    """(B,) values -> (B, 1, ..., 1), broadcastable against ``like``."""
    return values.view(-1, *([1] * (like.ndim - 1)))


def l2_norm(x: Tensor) -> Tensor:
    """Per-example L2 norm. Shape: (B, ...) -> (B,)."""
    return reduce(x.square(), "b ... -> b", "sum").sqrt()


class LinfBall:
    """{x' : ||x' - x||_inf <= eps} intersected with [0, 1]^d; steps follow the gradient's sign."""

    def __init__(self, eps: float) -> None:
        self.eps = eps

    def random_start(self, x: Tensor) -> Tensor:
        """A point uniform in the ball (Madry et al. 2018, section 3), clamped to [0, 1]."""
        return (x + torch.empty_like(x).uniform_(-self.eps, self.eps)).clamp_(0, 1)

    def step(self, x_adv: Tensor, grad: Tensor, step_size: float) -> Tensor:
        """Steepest ascent for the L-inf norm: ``step_size`` along ``sign(grad)`` (Madry et al. eq. 2)."""
        return x_adv + step_size * grad.sign()

    def project(self, x: Tensor, x_adv: Tensor) -> Tensor:
        """The closest point of the ball to ``x_adv``: clamp each pixel's change, then the pixel.

        Per coordinate this is the exact projection onto [x - eps, x + eps] intersected with [0, 1].
        """
        return (x + (x_adv - x).clamp(-self.eps, self.eps)).clamp_(0, 1)


class L2Ball:
    """{x' : ||x' - x||_2 <= eps} intersected with [0, 1]^d; steps follow the normalised gradient."""

    def __init__(self, eps: float) -> None:
        self.eps = eps

    def random_start(self, x: Tensor) -> Tensor:
        """A point uniform in the ball, clamped to [0, 1].

        The direction is a normalised Gaussian; the radius ``eps * u ** (1 / d)`` (u uniform in
        [0, 1], d pixels per example) makes the point uniform in the volume, not on the sphere.
        """
        direction = torch.randn_like(x)
        direction /= _per_example(l2_norm(direction).clamp_min(_TINY), x)
        d = x[0].numel()
        radius = self.eps * torch.rand(len(x), device=x.device, dtype=x.dtype).pow(1 / d)
        return (x + _per_example(radius, x) * direction).clamp_(0, 1)

    def step(self, x_adv: Tensor, grad: Tensor, step_size: float) -> Tensor:
        """Steepest ascent for the L2 norm: ``step_size`` along ``grad / ||grad||_2``."""
        return x_adv + step_size * grad / _per_example(l2_norm(grad).clamp_min(_TINY), grad)

    def project(self, x: Tensor, x_adv: Tensor) -> Tensor:
        """Shrink the perturbation onto the ball, then clamp to [0, 1] (as Madry et al. and torchattacks do).

        Clamping only moves pixels towards ``x`` (which lies in [0, 1]), so the result stays in
        the ball. It is not always the closest point of the intersection, which no common
        implementation computes.
        """
        delta = x_adv - x
        scale = (self.eps / l2_norm(delta).clamp_min(_TINY)).clamp_(max=1)
        return (x + delta * _per_example(scale, x)).clamp_(0, 1)


BALLS = {"linf": LinfBall, "l2": L2Ball}

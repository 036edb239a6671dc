"""Stochastic depth (Huang et al. 2016, arXiv 1603.09382), "drop path" in timm's naming."""

from __future__ import annotations

from torch import Tensor, nn


def drop_path(x: Tensor, drop_prob: float = 0.0, training: bool = False) -> Tensor:
    """Zero a residual branch for a random subset of samples, scaling the rest by 1 / keep_prob.

    The scaling keeps the expected output equal to ``x``, so nothing changes at eval time.

    Args:
        x: a residual branch's output, (B, ...); one draw per sample.
        drop_prob: probability of dropping a sample's branch, in [0, 1].
        training: identity unless True.

    Returns:
        Same shape as ``x``.

    """
    if not 0.0 <= drop_prob <= 1.0:
        raise ValueError(f"drop_prob must be in [0, 1], got {drop_prob}")
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep_prob)
    return x * keep.div_(keep_prob) if keep_prob > 0.0 else x * keep


class DropPath(nn.Module):
    """Module form of :func:`drop_path`, active in training mode only.

    Args:
        drop_prob: probability of dropping a sample's branch, in [0, 1].

    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError(f"drop_prob must be in [0, 1], got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        """Drop whole samples of ``x`` with probability ``drop_prob`` (training only).

        Args:
            x: (B, ...).

        Returns:
            Same shape as ``x``.

        """
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"

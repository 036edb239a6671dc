"""Depthwise-separable convolution (Sifre 2014; Chollet 2017; Howard et al. 2017, section 3.1).

A standard KxK convolution from ``I`` to ``O`` channels filters and combines channels in one
step and has ``K*K*I*O`` weights. The separable version factors it into a depthwise KxK
convolution (one filter per input channel, ``groups=I``: ``K*K*I`` weights) and a pointwise 1x1
convolution that mixes channels (``I*O`` weights). The ratio of weights (and of multiply-adds,
which scale the same way per output pixel) is MobileNet's equation (5)::

    (K*K*I + I*O) / (K*K*I*O) = 1/O + 1/K^2

For a 3x3 convolution from 2 to 4 channels: 72 weights standard, 18 + 8 = 26 separable.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class DepthwiseSeparableConv2d(nn.Module):
    """Depthwise KxK convolution (``groups=in_chans``), then a pointwise 1x1 convolution.

    Bare by default (``norm_layer=None, act_layer=None``): two convolutions and nothing between,
    so the weight count is exactly ``K*K*I + I*O`` (plus biases if ``bias``). MobileNet v1's
    block (Howard et al. 2017, Figure 3) puts BatchNorm and ReLU after *each* of the two
    convolutions: pass ``norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU`` (biases are then
    redundant with BatchNorm's shift, so leave ``bias=False``).

    Args:
        in_chans: input channels ``I``.
        out_chans: output channels ``O``.
        kernel_size: side ``K`` of the depthwise filter.
        stride: stride of the depthwise convolution (the pointwise one never strides).
        padding: padding of the depthwise convolution; None gives "same" padding ``K // 2``.
        bias: biases on both convolutions.
        norm_layer: called as ``norm_layer(channels)`` after each convolution; None for none.
        act_layer: called as ``act_layer()`` after each normalisation; None for none.
    """

    def __init__(
        self,
        *,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        bias: bool = False,
        norm_layer: Callable[[int], nn.Module] | None = None,
        act_layer: Callable[[], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if in_chans < 1 or out_chans < 1:
            raise ValueError(f"in_chans and out_chans must be >= 1, got {in_chans} and {out_chans}")
        if kernel_size < 1 or stride < 1:
            raise ValueError(f"kernel_size and stride must be >= 1, got {kernel_size} and {stride}")
        padding = kernel_size // 2 if padding is None else padding
        self.depthwise = nn.Conv2d(
            in_chans, in_chans, kernel_size, stride=stride, padding=padding, groups=in_chans, bias=bias
        )
        self.norm1 = norm_layer(in_chans) if norm_layer is not None else nn.Identity()
        self.act1 = act_layer() if act_layer is not None else nn.Identity()
        self.pointwise = nn.Conv2d(in_chans, out_chans, 1, bias=bias)
        self.norm2 = norm_layer(out_chans) if norm_layer is not None else nn.Identity()
        self.act2 = act_layer() if act_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Filter each channel, then mix channels.

        Args:
            x: (B, I, H, W).

        Returns:
            (B, O, H', W') with H' = (H + 2 * padding - K) // stride + 1 (H' = ceil(H / stride) for
            the default "same" padding and odd K).
        """
        x = self.act1(self.norm1(self.depthwise(x)))
        return self.act2(self.norm2(self.pointwise(x)))


def separable_weight_ratio(*, out_chans: int, kernel_size: int) -> float:
    """Weights (or multiply-adds) of a separable over a standard convolution: ``1/O + 1/K^2`` (Howard et al., eq. 5)."""
    return 1 / out_chans + 1 / kernel_size**2

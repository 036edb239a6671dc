"""MobileNet v1 (Howard et al. 2017, https://arxiv.org/abs/1704.04861).

"MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications".

A 3x3 stem convolution, then 13 depthwise-separable blocks (Table 1), each a depthwise 3x3 and a
pointwise 1x1 convolution with BatchNorm and ReLU after both (Figure 3), global average pooling
and a linear classifier. The width multiplier alpha (section 4.2) scales every layer's channels;
the resolution multiplier is simply the input size, since the pooling makes the model take any
image size. 1.0 MobileNet-224 has 4.2M parameters and 569M multiply-adds (Table 8); 0.75, 0.5
and 0.25 have 2.6M/325M, 1.3M/149M and 0.5M/41M (Table 6); tests/models/test_mobilenet.py checks
all four.

Reference: the TF-slim ``mobilenet_v1.py`` the paper's models were trained with. Deviations: Table 1
prints the 13th depthwise convolution with stride 2, but its output stays 7x7 in the same table
(and in TF-slim): stride 1 here. Weights are initialised as torchvision's MobileNets do (Kaiming
normal, fan-out), TF-slim uses a truncated normal of std 0.09. ``mobilenet_v1_cifar`` is our
variant for 28-32 pixel images: a stride-1 stem (as CIFAR ResNets keep the full resolution in the
first stage), so a 32x32 image ends in 2x2 maps rather than 1x1.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from research.layers.separable import DepthwiseSeparableConv2d
from research.models.registry import register_model

#: (output channels, stride) of the 13 depthwise-separable blocks, Table 1 (the 13th at stride 1, see above)
MOBILENET_V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    *((512, 1),) * 5,
    (1024, 2),
    (1024, 1),
)
STEM_CHANNELS = 32


class MobileNetV1(nn.Module):
    """MobileNet v1 with a width multiplier, for any input size and channels.

    Args:
        width_multiplier: alpha of section 4.2; every layer has ``round(alpha * channels)``
            channels (at least 1). The paper's models use 1.0, 0.75, 0.5 and 0.25.
        in_chans: channels of the input images.
        num_classes: classifier outputs; 0 replaces ``fc`` by the identity (pooled features).
        stem_stride: stride of the first 3x3 convolution: 2 as in the paper (224x224 images),
            1 for small images (28-32 pixels).
        drop_rate: dropout before the classifier (TF-slim's default keeps 99.9%; the paper gives none).
    """

    def __init__(
        self,
        *,
        width_multiplier: float = 1.0,
        in_chans: int = 3,
        num_classes: int = 1000,
        stem_stride: int = 2,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if width_multiplier <= 0:
            raise ValueError(
                f"width_multiplier must be > 0 (the paper uses 1.0, 0.75, 0.5, 0.25), got {width_multiplier}"
            )
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1 (1 for grey, 3 for RGB), got {in_chans}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 1, or 0 for a model without classifier, got {num_classes}")
        if stem_stride not in (1, 2):
            raise ValueError(
                f"stem_stride must be 2 (the paper, 224x224 images) or 1 (small images), got {stem_stride}"
            )

        def width(channels: int) -> int:
            return max(1, round(channels * width_multiplier))

        self.width_multiplier, self.in_chans, self.num_classes = width_multiplier, in_chans, num_classes
        stem = width(STEM_CHANNELS)
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem, 3, stride=stem_stride, padding=1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(inplace=True),
        )
        blocks, chans = [], stem
        for out, stride in MOBILENET_V1_BLOCKS:
            blocks.append(
                DepthwiseSeparableConv2d(
                    in_chans=chans,
                    out_chans=width(out),
                    kernel_size=3,
                    stride=stride,
                    norm_layer=nn.BatchNorm2d,
                    act_layer=lambda: nn.ReLU(inplace=True),
                )
            )
            chans = width(out)
        self.blocks = nn.Sequential(*blocks)
        self.num_features = chans
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(chans, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and separable blocks.

        Args:
            x: (B, in_chans, H, W).

        Returns:
            (B, num_features, H / 32, W / 32) maps (H / 16 with ``stem_stride=1``), rounded up.
        """
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"MobileNetV1 was built for in_chans={self.in_chans} and takes (B, {self.in_chans}, H, W) images, "
                f"got shape {tuple(x.shape)}"
            )
        return self.blocks(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pooling, dropout, then ``fc`` unless ``pre_logits``.

        Args:
            x: (B, num_features, H', W') from :meth:`forward_features`.
            pre_logits: return the pooled features instead of the logits.

        Returns:
            (B, num_classes), or (B, num_features) if ``pre_logits`` or ``num_classes == 0``.
        """
        x = rearrange(x, "b c h w -> b c (h w)").mean(-1)
        return x if pre_logits else self.fc(self.drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: (B, in_chans, H, W) -> (B, num_classes) logits ((B, num_features) if num_classes == 0)."""
        return self.forward_head(self.forward_features(x))


@register_model
def mobilenet_v1(**kwargs) -> MobileNetV1:
    """The paper's MobileNet v1 (stride-2 stem, for 224x224 ImageNet images); 4.2M parameters at alpha 1.0."""
    return MobileNetV1(**{"stem_stride": 2, **kwargs})


@register_model
def mobilenet_v1_cifar(**kwargs) -> MobileNetV1:
    """MobileNet v1 with a stride-1 stem for 28-32 pixel images (CIFAR, MNIST); same weights count as mobilenet_v1."""
    return MobileNetV1(**{"stem_stride": 1, "num_classes": 10, **kwargs})

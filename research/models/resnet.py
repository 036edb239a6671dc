"""ResNet: "Deep Residual Learning for Image Recognition", He, Zhang, Ren and Sun, CVPR 2016.

https://arxiv.org/abs/1512.03385

Two families from the paper, built by one :class:`ResNet` class:

* ImageNet ResNets (Table 1): ``resnet18/34/50/101/152``. 7x7 stem and max pooling, four stages of
  basic (18, 34) or bottleneck (50, 101, 152) blocks.
* CIFAR ResNets (section 4.2): ``resnet20/32/44/56/110/1202``, i.e. 6n+2 layers. 3x3 stem with
  16 channels and no pooling, three stages of 16/32/64 channels with n basic blocks each.
* The plain nets they are compared with (section 4.2, Fig. 6): ``plain20/32/44/56``, the same layers
  with no shortcuts (``shortcut="none"``), whose training error rises with depth: the degradation
  problem that the shortcuts solve.

Reference we match: ``torchvision.models.resnet``. Submodule names are torchvision's, so a torchvision
(or timm ``resnetXX``, which uses the same names) state_dict loads by name and gives the same logits.

Deviations from the paper, all following torchvision unless noted:

* Bottlenecks put the stride in the 3x3 conv ("ResNet v1.5"); the paper puts it in the first 1x1
  conv, and Table 1's FLOPs (3.8/7.6/11.3 G for 50/101/152) count that. ``stride_in_1x1=True``
  restores the paper's placement with the same parameters.
* ImageNet models default to shortcut option B (projection when the shape changes), which the
  paper uses for ResNet-50/101/152 (section 3.3 and Table 3); Table 2's ResNet-18/34 used option A,
  available as ``shortcut="A"``.
* Option A's zero channels go after the identity channels, as in the authors' Torch code
  (fb.resnet.torch); the paper does not say where they go.
* Convolutions use He init with ``fan_out`` for both families (the paper cites He et al. 2015 [13]).
* The model returns logits; softmax belongs to the loss.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from research.models.registry import register_model
from research.models.weights import register_layout


def _conv3x3(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    # No bias: every conv is followed by BN (section 3.4), whose shift makes a bias redundant.
    return nn.Conv2d(in_chs, out_chs, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, kernel_size=1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Shortcut option A (section 3.3): identity with zero entries padded for the new channels.

    Parameter-free. Where the map shrinks, the identity is "performed with a stride of 2", i.e. it
    keeps every ``stride``-th pixel, the same grid a strided 3x3 (padding 1) or 1x1 conv samples.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        if out_chs < in_chs:
            raise ValueError(f"option A can only add channels, not go from {in_chs} to {out_chs}")
        self.in_chs, self.out_chs, self.stride = in_chs, out_chs, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Subsample and zero-pad channels.

        Shape: (B, in_chs, H, W) -> (B, out_chs, ceil(H / stride), ceil(W / stride)).
        """
        x = x[:, :, :: self.stride, :: self.stride]
        # F.pad pads from the last dim backwards: (W left, W right, H top, H bottom, C front, C back).
        return F.pad(x, (0, 0, 0, 0, 0, self.out_chs - self.in_chs))

    def extra_repr(self) -> str:
        return f"{self.in_chs}, {self.out_chs}, stride={self.stride}"


def _shortcut(in_chs: int, out_chs: int, stride: int, option: str) -> nn.Module | None:
    """Build a block's ``downsample``: None (identity) where the shape is unchanged, else option A or B.

    Option ``"none"`` (a plain net) has no shortcut, so nothing to build.
    """
    if (stride == 1 and in_chs == out_chs) or option == "none":
        return None
    if option == "A":
        return ZeroPadShortcut(in_chs, out_chs, stride)
    # Option B (eq. 2): a linear projection W_s, a 1x1 conv, plus BN as in the other convs.
    return nn.Sequential(_conv1x1(in_chs, out_chs, stride), nn.BatchNorm2d(out_chs))


class BasicBlock(nn.Module):
    """Two 3x3 convs and a shortcut (Fig. 2; Fig. 5 left): relu(F(x) + shortcut(x))."""

    expansion = 1

    def __init__(self, in_chs: int, planes: int, *, stride: int = 1, shortcut: str = "B") -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_chs, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _shortcut(in_chs, planes, stride, shortcut)
        self.residual = shortcut != "none"  # False: a plain net's two layers (Fig. 3 middle), no addition

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: (B, in_chs, H, W) -> (B, planes, H / stride, W / stride)."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if not self.residual:
            return self.relu(out)
        identity = x if self.downsample is None else self.downsample(x)
        # Second nonlinearity after the addition (section 3.2, Fig. 2).
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) and a shortcut (section 4.1 "Deeper Bottleneck", Fig. 5 right)."""

    expansion = 4

    def __init__(
        self, in_chs: int, planes: int, *, stride: int = 1, shortcut: str = "B", stride_in_1x1: bool = False
    ) -> None:
        super().__init__()
        out_chs = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = _conv1x1(in_chs, planes, stride_1x1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride_3x3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, out_chs)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_chs, out_chs, stride, shortcut)
        self.residual = shortcut != "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: (B, in_chs, H, W) -> (B, 4 * planes, H / stride, W / stride)."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if not self.residual:
            return self.relu(out)
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """A ResNet of either family: stem, stages ``layer1..layerN``, global average pooling, ``fc``.

    Args:
        layers: number of blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
        block: ``"basic"`` (two 3x3 convs) or ``"bottleneck"`` (1x1-3x3-1x1, 4x expansion).
        widths: channels of each stage's 3x3 convs; the stem has ``widths[0]`` channels.
        stem: ``"imagenet"`` (7x7/2 conv and 3x3/2 max pool) or ``"cifar"`` (3x3/1 conv, no pool).
        shortcut: ``"A"`` (zero-padding, no parameters) or ``"B"`` (1x1 projection + BN) where a
            block changes the shape; elsewhere the shortcut is the identity. ``"none"``: no shortcuts
            anywhere, the paper's plain net (section 4.1, Fig. 3 middle), e.g. ``plain20``.
        stride_in_1x1: bottleneck only; put the stride in the first 1x1 conv as the paper does
            instead of the 3x3 conv (torchvision's v1.5, the default).
        zero_init_residual: start each block's last BN at weight 0 so that every block begins as
            the identity (Goyal et al. 2017, arXiv 1706.02677); off in the paper and torchvision.
        in_chans: channels of the input images.
        num_classes: size of the ``fc`` output; 0 replaces ``fc`` by the identity (features).

    """

    def __init__(
        self,
        *,
        layers: tuple[int, ...],
        block: Literal["basic", "bottleneck"] = "basic",
        widths: tuple[int, ...] = (64, 128, 256, 512),
        stem: Literal["imagenet", "cifar"] = "imagenet",
        shortcut: Literal["A", "B", "none"] = "B",
        stride_in_1x1: bool = False,
        zero_init_residual: bool = False,
        in_chans: int = 3,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        _check_args(layers, block, widths, stem, shortcut, stride_in_1x1, in_chans, num_classes)
        if zero_init_residual and shortcut == "none":
            raise ValueError("zero_init_residual=True needs shortcuts: a plain net's block started at zero outputs "
                             "zeros; pass shortcut='A' or 'B', or zero_init_residual=False")
        block_cls = _BLOCKS[block]
        self.in_chans, self.num_classes = in_chans, num_classes

        if stem == "imagenet":  # Table 1, conv1 and the max pool of conv2_x
            self.conv1 = nn.Conv2d(in_chans, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:  # Section 4.2: "The first layer is 3x3 convolutions", no pooling before the stages
            self.conv1 = _conv3x3(in_chans, widths[0])
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)

        in_chs = widths[0]
        block_kw: dict = {"shortcut": shortcut}
        if block == "bottleneck":
            block_kw["stride_in_1x1"] = stride_in_1x1
        self.stage_names = [f"layer{i}" for i in range(1, len(layers) + 1)]
        for i, (name, depth, planes) in enumerate(zip(self.stage_names, layers, widths)):
            # The first block of every stage but the first halves the map (conv3_1, conv4_1, ...).
            blocks = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block_cls(in_chs, planes, stride=stride, **block_kw))
                in_chs = planes * block_cls.expansion
            self.add_module(name, nn.Sequential(*blocks))

        self.num_features = in_chs
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # torchvision's init; fc keeps nn.Linear's default, as there.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if not zero_init_residual:
            return
        # A second pass: modules() visits a block before its BNs, which the first pass sets to 1.
        for m in self.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and stages, before pooling.

        Shape: (B, in_chans, H, W) -> (B, num_features, H', W'), with H' = H / 32 for the ImageNet
        stem and H / 4 for the CIFAR one (rounded up at each stride-2 step).
        """
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            got = x.shape[1] if x.ndim == 4 else "C"
            raise ValueError(
                f"{type(self).__name__} was built for in_chans={self.in_chans} and takes "
                f"(B, {self.in_chans}, H, W) images, got shape {tuple(x.shape)}. Build it with "
                f"in_chans={got} or convert the images (e.g. grey to RGB by repeating the channel)."
            )
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pooling, then ``fc`` unless ``pre_logits``.

        Shape: (B, num_features, H', W') -> (B, num_classes), or (B, num_features) if ``pre_logits``
        or ``num_classes == 0``.
        """
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: (B, in_chans, H, W) -> (B, num_classes) logits ((B, num_features) if num_classes == 0)."""
        return self.forward_head(self.forward_features(x))


def _check_args(layers, block, widths, stem, shortcut, stride_in_1x1, in_chans, num_classes) -> None:
    """Reject user mistakes with a message that says what to pass instead."""
    for name, value, allowed in (("block", block, _BLOCKS), ("stem", stem, ("imagenet", "cifar")),
                                 ("shortcut", shortcut, ("A", "B"))):
        if value not in allowed and not (name == "shortcut" and value == "none"):
            plain = " (or 'none': a plain net without shortcuts)" if name == "shortcut" else ""
            raise ValueError(f"unknown {name} {value!r}; use one of {list(allowed)}{plain}")
    if len(layers) == 0 or len(layers) != len(widths):
        raise ValueError(f"layers {tuple(layers)} and widths {tuple(widths)} need one entry per stage")
    if min(layers) < 1 or min(widths) < 1:
        raise ValueError(f"every stage needs at least one block and one channel, got layers={tuple(layers)}, "
                         f"widths={tuple(widths)}")
    if stride_in_1x1 and block != "bottleneck":
        raise ValueError("stride_in_1x1 only applies to bottleneck blocks (resnet50/101/152)")
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1 (3 for RGB, 1 for grey), got {in_chans}")
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 1, or 0 for a model without classifier, got {num_classes}")


# torchvision's keys: the stem, layer1-4 blocks (conv1-3, bn1-3, downsample.0/.1) and fc.
_TORCHVISION_KEY = re.compile(
    r"(conv1|bn1|fc|layer[1-4]\.\d+\.(conv[1-3]|bn[1-3]|downsample\.[01]))"
    r"\.(weight|bias|running_mean|running_var|num_batches_tracked)"
)


def _is_torchvision(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Tell whether all keys are torchvision's (or timm ``resnetXX``'s) ImageNet ResNet keys."""
    required = {"conv1.weight", "bn1.running_mean", "layer4.0.conv1.weight", "fc.weight"}
    return required <= state_dict.keys() and all(_TORCHVISION_KEY.fullmatch(k) for k in state_dict)


# Submodules are named like torchvision's, so the conversion is the identity; shape mismatches
# (num_classes, in_chans, depth) are reported by import_weights.
register_layout(ResNet, "torchvision", detect=_is_torchvision, convert=lambda model, sd: sd)


_CIFAR = {"stem": "cifar", "widths": (16, 32, 64), "shortcut": "A", "num_classes": 10}


@register_model
def resnet18(**kwargs) -> ResNet:
    """ResNet-18 (Table 1): basic blocks (2, 2, 2, 2), 11.7M parameters."""
    return ResNet(**{"block": "basic", "layers": (2, 2, 2, 2), **kwargs})


@register_model
def resnet34(**kwargs) -> ResNet:
    """ResNet-34 (Table 1): basic blocks (3, 4, 6, 3), 21.8M parameters."""
    return ResNet(**{"block": "basic", "layers": (3, 4, 6, 3), **kwargs})


@register_model
def resnet50(**kwargs) -> ResNet:
    """ResNet-50 (Table 1): bottleneck blocks (3, 4, 6, 3), 25.6M parameters."""
    return ResNet(**{"block": "bottleneck", "layers": (3, 4, 6, 3), **kwargs})


@register_model
def resnet101(**kwargs) -> ResNet:
    """ResNet-101 (Table 1): bottleneck blocks (3, 4, 23, 3), 44.5M parameters."""
    return ResNet(**{"block": "bottleneck", "layers": (3, 4, 23, 3), **kwargs})


@register_model
def resnet152(**kwargs) -> ResNet:
    """ResNet-152 (Table 1): bottleneck blocks (3, 8, 36, 3), 60.2M parameters."""
    return ResNet(**{"block": "bottleneck", "layers": (3, 8, 36, 3), **kwargs})


@register_model
def resnet20(**kwargs) -> ResNet:
    """CIFAR ResNet-20 (section 4.2, n=3): 0.27M parameters."""
    return ResNet(**{**_CIFAR, "layers": (3, 3, 3), **kwargs})


@register_model
def resnet32(**kwargs) -> ResNet:
    """CIFAR ResNet-32 (section 4.2, n=5): 0.46M parameters."""
    return ResNet(**{**_CIFAR, "layers": (5, 5, 5), **kwargs})


@register_model
def resnet44(**kwargs) -> ResNet:
    """CIFAR ResNet-44 (section 4.2, n=7): 0.66M parameters."""
    return ResNet(**{**_CIFAR, "layers": (7, 7, 7), **kwargs})


@register_model
def resnet56(**kwargs) -> ResNet:
    """CIFAR ResNet-56 (section 4.2, n=9): 0.85M parameters."""
    return ResNet(**{**_CIFAR, "layers": (9, 9, 9), **kwargs})


@register_model
def resnet110(**kwargs) -> ResNet:
    """CIFAR ResNet-110 (section 4.2, n=18): 1.7M parameters."""
    return ResNet(**{**_CIFAR, "layers": (18, 18, 18), **kwargs})


@register_model
def resnet1202(**kwargs) -> ResNet:
    """CIFAR ResNet-1202 (section 4.2, n=200): 19.4M parameters."""
    return ResNet(**{**_CIFAR, "layers": (200, 200, 200), **kwargs})


# The plain nets of section 4.2 and Fig. 6: the CIFAR ResNets' layers without any shortcut.
_PLAIN = {**_CIFAR, "shortcut": "none"}


@register_model
def plain20(**kwargs) -> ResNet:
    """CIFAR plain-20 (section 4.2, Fig. 6): resnet20's 20 layers without shortcuts, 0.27M parameters."""
    return ResNet(**{**_PLAIN, "layers": (3, 3, 3), **kwargs})


@register_model
def plain32(**kwargs) -> ResNet:
    """CIFAR plain-32 (section 4.2, Fig. 6): resnet32's layers without shortcuts."""
    return ResNet(**{**_PLAIN, "layers": (5, 5, 5), **kwargs})


@register_model
def plain44(**kwargs) -> ResNet:
    """CIFAR plain-44 (section 4.2, Fig. 6): resnet44's layers without shortcuts."""
    return ResNet(**{**_PLAIN, "layers": (7, 7, 7), **kwargs})


@register_model
def plain56(**kwargs) -> ResNet:
    """CIFAR plain-56 (section 4.2, Fig. 6): resnet56's layers without shortcuts, 0.85M parameters."""
    return ResNet(**{**_PLAIN, "layers": (9, 9, 9), **kwargs})

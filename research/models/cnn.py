"""Small CNNs for MNIST-sized images, the usual subjects of adversarial-robustness experiments.

* ``madry_mnist_cnn``: the network of "Towards Deep Learning Models Resistant to Adversarial
  Attacks", Madry et al., ICLR 2018 (https://arxiv.org/abs/1706.06083, section 5 and appendix
  C), as defined in the MNIST challenge repository (github.com/MadryLab/mnist_challenge,
  ``model.py``): 5x5 convolutions of 32 and 64 filters with "same" padding, each followed by ReLU
  and 2x2 max-pooling, a 1024-unit fully connected layer and the classifier; 3,274,634
  parameters for 28x28 digits.
* ``five_layer_cnn``: the five-layer CNN of our course notes: 3x3 convolutions of 16, 32 and 64
  channels without padding (BatchNorm after the first two, 2x2 max-pooling after the second and
  the third) and a two-layer classifier on the 64x5x5 features of a 28x28 digit;
  ``batch_norm=False`` drops the BatchNorm layers.

Deviations: both use PyTorch's default initialisation (the challenge code draws weights from a
truncated normal of std 0.1 and sets biases to 0.1). The flattened features are in (C, H, W)
order, TensorFlow's are (H, W, C), so the challenge's fc weights would need a permutation.
The notes do not fix the classifier's hidden width; ours is ``hidden_dim=128``.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from research.models.registry import register_model


class SmallCNN(nn.Module):
    """Convolutional ``features``, then flatten, a hidden fully connected layer with ReLU and ``fc``.

    Args:
        features: maps (B, in_chans, img_size, img_size) images to (B, C', H', W') maps.
        feature_shape: (C', H', W'), the shape ``features`` gives for one image.
        hidden_dim: width of the hidden fully connected layer, ``num_features``.
        in_chans: channels of the input images (for the input check).
        num_classes: size of the ``fc`` output; 0 replaces ``fc`` by the identity (features).

    """

    def __init__(
        self,
        *,
        features: nn.Sequential,
        feature_shape: tuple[int, int, int],
        hidden_dim: int,
        in_chans: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 1, or 0 for a model without classifier, got {num_classes}")
        self.in_chans, self.num_classes, self.num_features = in_chans, num_classes, hidden_dim
        self.features = features
        c, h, w = feature_shape
        self.hidden = nn.Linear(c * h * w, hidden_dim)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(hidden_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Convolutions and pooling. Shape: (B, in_chans, H, W) -> (B, C', H', W')."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"{type(self).__name__} was built for in_chans={self.in_chans} and takes "
                f"(B, {self.in_chans}, H, W) images, got shape {tuple(x.shape)}"
            )
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Flatten, hidden layer, then ``fc`` unless ``pre_logits``.

        Shape: (B, C', H', W') -> (B, num_classes), or (B, num_features) if ``pre_logits`` or
        ``num_classes == 0``.
        """
        x = self.relu(self.hidden(rearrange(x, "b c h w -> b (c h w)")))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: (B, in_chans, H, W) -> (B, num_classes) logits ((B, num_features) if num_classes == 0)."""
        return self.forward_head(self.forward_features(x))


def _check_size(name: str, img_size: int, side: int, in_chans: int) -> None:
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1 (1 for grey, 3 for RGB), got {in_chans}")
    if side < 1:
        raise ValueError(f"{name} needs larger images: img_size={img_size} leaves no feature map (28 for MNIST)")


@register_model
def madry_mnist_cnn(*, in_chans: int = 1, num_classes: int = 10, img_size: int = 28) -> SmallCNN:
    """Madry et al.'s MNIST CNN: conv5x5-32, pool, conv5x5-64, pool, fc-1024, fc; 3.27M parameters at 28x28.

    Args:
        in_chans: channels of the input images.
        num_classes: classifier outputs; 0 for the 1024 features.
        img_size: side of the square input; the fc layer takes 64 x (img_size // 4)^2 features.

    """
    side = img_size // 4  # two 2x2 poolings of "same"-padded maps
    _check_size("madry_mnist_cnn", img_size, side, in_chans)
    features = nn.Sequential(
        nn.Conv2d(in_chans, 32, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )
    return SmallCNN(features=features, feature_shape=(64, side, side), hidden_dim=1024, in_chans=in_chans,
                    num_classes=num_classes)


@register_model
def five_layer_cnn(
    *, in_chans: int = 1, num_classes: int = 10, img_size: int = 28, batch_norm: bool = True, hidden_dim: int = 128
) -> SmallCNN:
    """The course notes' five-layer CNN: three unpadded 3x3 convs (16, 32, 64) and two fc layers.

    Args:
        in_chans: channels of the input images.
        num_classes: classifier outputs; 0 for the ``hidden_dim`` features.
        img_size: side of the square input: 28 gives 64x5x5 features.
        batch_norm: BatchNorm after the first two convolutions; False drops both (the convs then
            get biases, which BatchNorm's shift would have made redundant).
        hidden_dim: width of the first fully connected layer.

    """
    side = ((img_size - 4) // 2 - 2) // 2  # 28 -> 26 -> 24 -> pool 12 -> 10 -> pool 5
    _check_size("five_layer_cnn", img_size, side, in_chans)

    def conv_bn_relu(in_chs: int, out_chs: int) -> list[nn.Module]:
        conv = nn.Conv2d(in_chs, out_chs, kernel_size=3, bias=not batch_norm)
        return [conv, nn.BatchNorm2d(out_chs), nn.ReLU(inplace=True)] if batch_norm else [conv, nn.ReLU(inplace=True)]

    features = nn.Sequential(
        *conv_bn_relu(in_chans, 16),
        *conv_bn_relu(16, 32),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, kernel_size=3),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )
    return SmallCNN(features=features, feature_shape=(64, side, side), hidden_dim=hidden_dim, in_chans=in_chans,
                    num_classes=num_classes)

"""DCGAN generator and discriminator (Radford et al. 2016, https://arxiv.org/abs/1511.06434).

"Unsupervised Representation Learning with Deep Convolutional Generative Adversarial Networks".

The architecture guidelines of section 3: no pooling (fractional-strided convolutions in the
generator, strided convolutions in the discriminator), BatchNorm in both except the generator's
output and the discriminator's input layer, ReLU in the generator with tanh on its output,
LeakyReLU of slope 0.2 in the discriminator; every weight drawn from N(0, 0.02) (section 4).

The layout follows the PyTorch DCGAN example (the reference most ports match): z, seen as a
1x1 map, goes through a transposed convolution to an s x s map (Figure 1's "project and
reshape"), then 4x4 transposed convolutions of stride 2 double the side and halve the channels
until the image size; the discriminator mirrors this and ends in an s x s convolution to one
logit. ``s`` is what is left of ``img_size`` after halving while it is even and above 7: 7 for
28x28 digits (7 -> 14 -> 28), 4 for 32x32 and 64x64 (Figure 1: 4 -> 8 -> 16 -> 32 -> 64).

Deviations: the discriminator returns a logit, not a sigmoid probability, so that the task can
use the numerically stable ``binary_cross_entropy_with_logits``; BatchNorm scales start at 1
(the paper's N(0, 0.02) is meant for the weights of the convolutions).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from research.models.registry import register_model


def upsampling_plan(img_size: int) -> tuple[int, int]:
    """(side of the first map, number of stride-2 steps) for a square image of side ``img_size``."""
    if img_size < 4:
        raise ValueError(f"DCGAN needs images of at least 4x4 pixels, got img_size={img_size}")
    side, steps = img_size, 0
    while side % 2 == 0 and side > 7:
        side, steps = side // 2, steps + 1
    if steps == 0:
        raise ValueError(
            f"img_size={img_size} cannot be reached by doubling a smaller map; use an even size such as 28, 32 or 64"
        )
    return side, steps


def init_dcgan_weights(module: nn.Module) -> None:
    """N(0, 0.02) for every convolution weight (Radford et al., section 4); zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    """Maps latent vectors to images in [-1, 1].

    Args:
        latent_dim: size of z (100 in the paper).
        img_size: side of the square images made; see :func:`upsampling_plan`.
        out_chans: image channels (1 grey, 3 colour).
        base_width: channels of the last hidden layer; each earlier layer has twice the next
            one's (the paper's 64x64 model: 128, so 1024 channels at 4x4).
    """

    def __init__(self, *, latent_dim: int = 100, img_size: int = 28, out_chans: int = 1, base_width: int = 64) -> None:
        super().__init__()
        if latent_dim < 1 or out_chans < 1 or base_width < 1:
            raise ValueError(
                f"latent_dim, out_chans and base_width must be >= 1, got {latent_dim}, {out_chans} and {base_width}"
            )
        side, steps = upsampling_plan(img_size)
        self.latent_dim, self.img_size, self.out_chans = latent_dim, img_size, out_chans
        widths = [base_width * 2 ** (steps - 1 - i) for i in range(steps)]  # e.g. 28x28: [2w, w]
        layers: list[nn.Module] = [
            # "project and reshape" (Figure 1) as a transposed convolution of the 1x1 map z
            nn.ConvTranspose2d(latent_dim, widths[0], side, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        for c_in, c_out in zip(widths, widths[1:]):
            up = nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False)
            layers += [up, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        # no BatchNorm on the output layer: it made samples oscillate in the paper (section 3)
        layers += [nn.ConvTranspose2d(widths[-1], out_chans, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        init_dcgan_weights(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Generate images.

        Args:
            z: (B, latent_dim) latent vectors, usually N(0, I).

        Returns:
            (B, out_chans, img_size, img_size) images in [-1, 1].
        """
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"the generator takes (B, {self.latent_dim}) latent vectors, got shape {tuple(z.shape)}")
        return self.net(rearrange(z, "b z -> b z 1 1"))


class DCGANDiscriminator(nn.Module):
    """Maps images in [-1, 1] to one real-vs-fake logit each.

    Args:
        img_size: side of the square images; see :func:`upsampling_plan`.
        in_chans: image channels.
        base_width: channels of the first layer; each later layer has twice the previous one's.
    """

    def __init__(self, *, img_size: int = 28, in_chans: int = 1, base_width: int = 64) -> None:
        super().__init__()
        if in_chans < 1 or base_width < 1:
            raise ValueError(f"in_chans and base_width must be >= 1, got {in_chans} and {base_width}")
        side, steps = upsampling_plan(img_size)
        self.img_size, self.in_chans = img_size, in_chans
        widths = [base_width * 2**i for i in range(steps)]  # e.g. 28x28: [w, 2w]
        # no BatchNorm on the input layer (section 3)
        layers: list[nn.Module] = [nn.Conv2d(in_chans, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        for c_in, c_out in zip(widths, widths[1:]):
            down = nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False)
            layers += [down, nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2, inplace=True)]
        # "the last convolution layer is flattened and then fed into a single sigmoid output" (section 3):
        # a convolution as large as the last map is that linear layer (the sigmoid is in the loss)
        layers.append(nn.Conv2d(widths[-1], 1, side, stride=1, padding=0, bias=False))
        self.net = nn.Sequential(*layers)
        init_dcgan_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Score images.

        Args:
            x: (B, in_chans, img_size, img_size) images in [-1, 1].

        Returns:
            (B,) logits: D(x) = sigmoid(logit) is the probability that x is real.
        """
        if x.ndim != 4 or x.shape[1:] != (self.in_chans, self.img_size, self.img_size):
            size = f"(B, {self.in_chans}, {self.img_size}, {self.img_size})"
            raise ValueError(f"the discriminator was built for {size} images, got shape {tuple(x.shape)}")
        return rearrange(self.net(x), "b 1 1 1 -> b")


@register_model
def dcgan_generator(
    *, latent_dim: int = 100, img_size: int = 28, out_chans: int = 1, base_width: int = 64
) -> DCGANGenerator:
    """DCGAN generator; defaults for 28x28 grey digits (z 100 -> 7x7x128 -> 14x14x64 -> 28x28x1)."""
    return DCGANGenerator(latent_dim=latent_dim, img_size=img_size, out_chans=out_chans, base_width=base_width)


@register_model
def dcgan_discriminator(*, img_size: int = 28, in_chans: int = 1, base_width: int = 64) -> DCGANDiscriminator:
    """DCGAN discriminator; defaults for 28x28 grey digits (28x28x1 -> 14x14x64 -> 7x7x128 -> logit)."""
    return DCGANDiscriminator(img_size=img_size, in_chans=in_chans, base_width=base_width)

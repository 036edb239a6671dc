"""Training-time augmentation applied to a whole batch of images at once.

An augmentation spec is a ``+``-joined list of steps, applied in order:

- ``none``: no augmentation.
- ``crop``: zero-pad by 4 pixels and crop back at a random offset (digits: shifts, no flips).
- ``flip``: horizontal flip with probability 1/2.
- ``crop_flip``: ``crop`` then ``flip``, the CIFAR recipe (He et al. 2016, Sec. 4.2).
- ``rand-...``: a timm RandAugment string such as ``rand-m9-mstd0.5`` (Cubuk et al. 2020).

For example ``crop_flip+rand-m9-mstd0.5``. Crop and flip are vectorised over the batch; RandAugment
is timm's PIL implementation, run image by image, so it costs far more per sample. Every step keeps
each image's height and width, square or not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.data.auto_augment import rand_augment_transform
from torch import Tensor
from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image

AUGMENT_STEPS = ("none", "crop", "flip", "crop_flip")
CROP_PADDING = 4


def parse_augment(spec: str) -> list[str]:
    """Split ``spec`` into its steps, checking each one.

    Raises:
        ValueError: an unknown step or a RandAugment string timm cannot parse.

    """
    steps = [s.strip() for s in spec.split("+")]
    for step in steps:
        if step.startswith("rand-") or step == "rand":
            _rand_augment(step, img_size=32, fill=(0.5,))  # timm validates the string on construction
        elif step not in AUGMENT_STEPS:
            raise ValueError(
                f"unknown augment {step!r} in {spec!r}; known: {', '.join(AUGMENT_STEPS)}, a timm "
                "RandAugment string such as 'rand-m9-mstd0.5', or several joined with '+' "
                "(e.g. 'crop_flip+rand-m9')"
            )
    return [s for s in steps if s != "none"]


def random_crop(images: Tensor, padding: int = CROP_PADDING) -> Tensor:
    """Zero-pad each image by ``padding`` and crop it back to its size at its own random offset.

    Args:
        images: (B, C, H, W), any dtype.
        padding: pixels added on every side; the offset is uniform in [0, 2 * padding].

    Returns:
        (B, C, H, W), the same dtype.

    """
    b, _, h, w = images.shape
    padded = rearrange(F.pad(images, (padding,) * 4), "b c h w -> b h w c")
    top = torch.randint(0, 2 * padding + 1, (b, 1, 1))
    left = torch.randint(0, 2 * padding + 1, (b, 1, 1))
    rows = top + torch.arange(h).view(1, h, 1)  # (B, H, 1)
    cols = left + torch.arange(w).view(1, 1, w)  # (B, 1, W)
    crops = padded[torch.arange(b).view(b, 1, 1), rows, cols]  # (B, H, W, C)
    return rearrange(crops, "b h w c -> b c h w")


def random_flip(images: Tensor) -> Tensor:
    """Flip each image of a (B, C, H, W) batch left-right with probability 1/2."""
    flip = torch.rand(images.shape[0]) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def _rand_augment(spec: str, *, img_size: int | tuple[int, int], fill: tuple[float, ...]):
    # timm's create_transform uses these two hparams: translations scaled to the image's shorter
    # side (the default, 250 px, is meant for 224 px images; timm 1.0 transforms_factory takes
    # min(img_size) for (H, W)) and the dataset mean as the fill colour.
    side = img_size if isinstance(img_size, int) else min(img_size)
    hparams = {"translate_const": int(side * 0.45), "img_mean": tuple(round(255 * m) for m in fill)}
    try:
        return rand_augment_transform(spec, hparams)
    except (AssertionError, ValueError) as err:  # timm asserts on a malformed string
        raise ValueError(
            f"bad RandAugment string {spec!r} ({err or 'unparsable'}); the form is 'rand-m<magnitude>"
            f"[-n<ops>][-mstd<std>][-p<prob>]', e.g. 'rand-m9-mstd0.5', see timm rand_augment_transform"
        ) from err


class BatchAugment:
    """Apply an augmentation spec to uint8 or float batches of shape (B, C, H, W).

    Args:
        spec: the steps, as described in this module's docstring.
        img_size: image side or (height, width), to scale RandAugment's translations (by the
            shorter side); the batches keep their own size.
        fill: per-channel mean in [0, 1], RandAugment's fill colour for pixels moved in from outside.

    """

    def __init__(self, spec: str, *, img_size: int | tuple[int, int], fill: tuple[float, ...]):
        self.spec = spec
        self.steps = []
        for step in parse_augment(spec):
            if step in ("crop", "crop_flip"):
                self.steps.append(random_crop)
            if step in ("flip", "crop_flip"):
                self.steps.append(random_flip)
            if step.startswith("rand"):
                self.steps.append(PerImage(_rand_augment(step, img_size=img_size, fill=fill)))

    def __call__(self, images: Tensor) -> Tensor:
        for step in self.steps:
            images = step(images)
        return images

    def __repr__(self) -> str:
        return f"BatchAugment({self.spec!r})"


class PerImage:
    """Lift a PIL transform to a (B, C, H, W) batch function that keeps the batch's dtype and range."""

    def __init__(self, pil_transform):
        self.pil_transform = pil_transform

    def __call__(self, images: Tensor) -> Tensor:
        out = torch.stack([pil_to_tensor(self.pil_transform(to_pil_image(img))) for img in images])
        return out if images.dtype == torch.uint8 else out.to(images.dtype) / 255

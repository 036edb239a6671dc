"""Image tensors: sizes, dtype, channel conversion and per-channel statistics.

Images are (N, C, H, W) tensors, uint8 (0-255) or float in [0, 1]. A size is one side (a square) or
a (height, width) pair. The datamodules convert every source to the ``img_size`` and ``in_chans``
a config asks for with :func:`convert_images`, and :func:`convert_stats` says what that does to
the source's mean and std.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms.v2.functional import resize

# ITU-R BT.601 luma, the weights of PIL's convert("L").
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def image_hw(img_size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) of an image size given as one side (a square) or as a (height, width) pair.

    Raises:
        ValueError: not a positive int or a pair of them.
    """
    if isinstance(img_size, Sequence) and not isinstance(img_size, str):
        sides = tuple(img_size)
    else:
        sides = (img_size, img_size)
    if len(sides) != 2 or not all(_positive_int(side) for side in sides):
        raise ValueError(
            f"img_size must be a positive integer (the side of a square) or a [height, width] pair of them, "
            f"e.g. [32, 48]; got {img_size!r}"
        )
    return int(sides[0]), int(sides[1])


def _positive_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and value > 0


def size_value(height: int, width: int) -> int | tuple[int, int]:
    """How an image size is stored and printed: the side of a square, else the (height, width) pair."""
    return height if height == width else (height, width)


def to_float(images: Tensor) -> Tensor:
    """uint8 images (0-255) or float images in [0, 1] -> float32 in [0, 1]."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


def luminance(images: Tensor) -> Tensor:
    """(N, 3, H, W) RGB -> (N, 1, H, W) luma with :data:`LUMA_WEIGHTS`, rounded for uint8 as PIL does."""
    grey = torch.einsum("c,nchw->nhw", torch.tensor(LUMA_WEIGHTS), images.float()).unsqueeze(1)
    return grey.round_().to(torch.uint8) if images.dtype == torch.uint8 else grey


def convert_images(images: Tensor, *, img_size: int | tuple[int, int], in_chans: int) -> Tensor:
    """Resize (N, C, H, W) images to (N, in_chans, height, width), ``img_size`` a side or (height, width).

    Resizing is bilinear with antialiasing (a change of aspect ratio stretches, nothing is cropped);
    3 -> 1 channels takes the :func:`luminance`, 1 -> 3 repeats the grey channel (as a broadcast
    view, so no memory is spent on the copies).
    """
    size = list(image_hw(img_size))
    to_grey = in_chans == 1 and images.shape[1] == 3
    if to_grey or list(images.shape[-2:]) != size:
        # In chunks: both steps go through float copies, which for a whole split could be large.
        chunks = [luminance(chunk) if to_grey else chunk for chunk in images.split(1024)]
        images = torch.cat([resize(chunk, size, antialias=True) for chunk in chunks])
    if in_chans == 3 and images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images


def convert_stats(
    mean: Sequence[float], std: Sequence[float], in_chans: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of images after :func:`convert_images` changes their channels.

    Repeating a grey channel repeats its statistics. For luminance the mean is exact; the std
    ``sum(w * std)`` is exact only for fully correlated channels and an upper bound otherwise
    (close for natural images, whose R, G and B are strongly correlated).
    """
    if len(mean) != len(std):
        raise ValueError(f"mean {tuple(mean)} and std {tuple(std)} must have one entry per channel")
    if len(mean) == in_chans:
        return tuple(mean), tuple(std)
    if len(mean) == 1 and in_chans == 3:
        return tuple(mean) * 3, tuple(std) * 3
    if len(mean) == 3 and in_chans == 1:
        return (float(np.dot(LUMA_WEIGHTS, mean)),), (float(np.dot(LUMA_WEIGHTS, std)),)
    raise ValueError(f"mean/std with {len(mean)} channels do not fit images with {in_chans} channels")


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (unbiased) std of (N, C, H, W) images, in [0, 1] units, in float64."""
    if images.dtype == torch.uint8:  # exact and fast: from the histogram of the 256 levels
        counts = torch.stack(
            [torch.bincount(channel.flatten(), minlength=256) for channel in images.unbind(1)]
        )
        levels = torch.arange(256, dtype=torch.float64) / 255
        sums, squares = counts.double() @ levels, counts.double() @ levels.square()
    else:  # chunk by chunk, to bound the float64 copy
        sums = squares = torch.zeros(images.shape[1], dtype=torch.float64)
        for chunk in images.split(1024):
            x = chunk.double()
            sums, squares = sums + x.sum((0, 2, 3)), squares + x.square().sum((0, 2, 3))
    n = images.numel() // images.shape[1]
    mean = sums / n
    std = ((squares / n - mean.square()) * n / (n - 1)).clamp(min=0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())

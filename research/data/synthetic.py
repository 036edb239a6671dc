"""Random but learnable images for smoke tests: each class is a template plus noise."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2.functional import resize

from research.data.image_tensors import image_hw
from research.data.vision import ImageSource, VisionDataModule


class SyntheticDataModule(VisionDataModule):
    """Random but learnable images for smoke tests: each class is a template plus noise.

    Templates are random 4x4 grids upsampled to ``img_size``, so they are smooth and survive a
    crop shift; pixel noise of std ``noise`` is added and clamped to [0, 1]. Classes are balanced.
    A validation and a test split are carved out as for any source without them. The images are
    drawn at ``setup`` (or when ``mean``/``std``, measured on them, are first read).

    Args:
        num_samples: images in total, before splitting.
        num_classes: number of classes (templates).
        img_size: image side, or (height, width).
        in_chans: image channels.
        seed: seed of the templates, the noise and the validation split.
        noise: std of the per-pixel Gaussian noise.
        **kwargs: the other :class:`~research.data.vision.VisionDataModule` arguments.

    Raises:
        ValueError: fewer samples than classes, or no class.

    """

    def __init__(
        self,
        num_samples: int = 256,
        num_classes: int = 10,
        img_size: int | tuple[int, int] = 32,
        in_chans: int = 3,
        seed: int = 0,
        noise: float = 0.1,
        **kwargs,
    ):
        super().__init__(img_size=img_size, in_chans=in_chans, seed=seed, **kwargs)
        if num_samples < num_classes or num_classes < 1:
            raise ValueError(f"need num_samples >= num_classes >= 1, got {num_samples} and {num_classes}")
        self.num_samples, self.noise = num_samples, noise
        self._described = ImageSource(
            in_chans=in_chans, img_size=img_size, class_names=[f"class_{i}" for i in range(num_classes)]
        )

    def describe(self) -> ImageSource:
        return self._described

    def load(self) -> dict[str, Dataset]:
        in_chans, num_classes = self._described.in_chans, len(self._described.class_names)
        g = torch.Generator().manual_seed(self.seed)
        grids = torch.rand(num_classes, in_chans, 4, 4, generator=g)
        height, width = image_hw(self._described.img_size)
        templates = resize(grids, [height, width], antialias=False)  # bilinear
        labels = (torch.arange(self.num_samples) % num_classes)[torch.randperm(self.num_samples, generator=g)]
        noise = torch.randn(self.num_samples, in_chans, height, width, generator=g)
        images = (templates[labels] + self.noise * noise).clamp(0, 1)
        return {"train": self.tensor_split((images * 255).round().to(torch.uint8), labels)}

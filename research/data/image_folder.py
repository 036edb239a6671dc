"""Images in torchvision's ImageFolder layout, read from disk batch by batch.

``root/train/<class>/<image>``, optionally ``root/val`` and ``root/test`` alike. The layout is
checked when the datamodule is built, each file's header at ``setup`` (:func:`readable_samples`),
and an image is decoded, converted and resized when its batch is read (:class:`ImageFiles`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension, make_dataset
from torchvision.transforms.v2.functional import pil_to_tensor

from research.data.image_tensors import image_hw
from research.data.vision import ImageSource, VisionDataModule
from research.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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

    def read_batch(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        """The batch (images (B, C, H, W) uint8, labels (B,)) at ``indices``."""
        images, labels = zip(*(self[i] for i in indices))
        return torch.stack(images), torch.stack(labels)


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


class ImageFolderDataModule(VisionDataModule):
    """Images in torchvision's ImageFolder layout, read from disk batch by batch.

    ``root/train/<class>/<image>`` is required; ``root/val`` and ``root/test`` in the same layout
    are optional (carved from train when absent) and must have train's class folders. Classes are
    the train folders, sorted. The first training image sets the defaults: grey images give
    ``in_chans=1``, all others 3; its (height, width) gives ``img_size``. Every image is resized to
    ``img_size``.

    The layout is checked at construction, before any training starts: every class folder of
    every split holds an image, and ``val/`` and ``test/`` have exactly train's class folders.
    No image is read then: the first one's header when the attributes are first read, every
    header at ``setup``.

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
            class folders of ``val/`` or ``test/`` that differ from train's; later, an unreadable
            first image or (at setup) an image file that cannot be read.

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
                f"no folder {train_dir.resolve()}: ImageFolderDataModule expects root/train/<class>/<image> "
                "(torchvision ImageFolder layout), with optional root/val and root/test alike"
            )
        classes = class_folders(train_dir)
        if not classes:
            raise UserError(
                f"no class folder under {train_dir}: ImageFolderDataModule expects root/train/<class>/<image>, "
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
        self._mean, self._std = mean, std

    def describe(self) -> ImageSource:
        """The classes, and the first readable training image's channels and size.

        Raises:
            UserError: the first image cannot be read (and ``skip_unreadable`` is off), or none can.

        """
        train_dir = self.root / "train"
        classes = list(self._class_to_idx)
        files = list(image_files(train_dir / classes[0]))
        first = files[0]  # sets the defaults below, so it must be readable (the rest are checked at setup)
        why = unreadable_image(first)
        if why is not None and not self.skip_unreadable:
            raise UserError(f"image file {first} cannot be read ({why}); fix or remove it, or skip such files "
                            "with --data.init_args.skip_unreadable true")
        if why is not None:
            first = next((p for p in files[1:] if unreadable_image(p) is None), None)
            if first is None:
                raise UserError(f"none of the {len(files)} image files in {train_dir / classes[0]} can be read")
        with Image.open(first) as image:
            grey, (w, h) = image.mode in ("1", "L", "LA", "I", "I;16", "F"), image.size
        return ImageSource(
            in_chans=1 if grey else 3,
            img_size=(h, w),
            class_names=classes,
            mean=IMAGENET_MEAN if self._mean is None else self._mean,
            std=IMAGENET_STD if self._std is None else self._std,
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

    def load(self) -> dict[str, Dataset]:
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

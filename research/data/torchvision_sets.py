"""The classic image benchmarks, in torchvision's folder layout: MNIST, Fashion-MNIST, CIFAR-10/100.

torchvision downloads them (``download=True``); our own readers then load each split whole into
memory, much faster than torchvision's per-sample PIL path. Offline, missing files stop the
run at construction with the folder they belong in. The official train/test splits are kept;
the validation split is carved from train with a fixed seed.
"""

from __future__ import annotations

from pathlib import Path

import torchvision
from torch.utils.data import Dataset

from research.data.readers import read_cifar_batches, read_idx
from research.data.vision import ImageSource, VisionDataModule


class TorchvisionDataModule(VisionDataModule):
    """Base of the datasets that torchvision downloads: file checks and the download itself.

    A subclass sets the class constants below (its :meth:`describe`) and implements ``load``. ``mean`` and
    ``std`` are the published statistics of the native images (converted for ``in_chans``), so
    they are known before any file is read; resizing changes the std a little (MNIST at 32 px:
    about 0.29 instead of 0.308), which is harmless for normalisation.

    Args:
        root: download root, as for torchvision (the files go in ``root/FOLDER``).
        download: fetch missing files in ``prepare_data`` (needs a network).
        **kwargs: :class:`VisionDataModule` arguments.

    Raises:
        FileNotFoundError: files missing and ``download`` is False.

    """

    FOLDER: str  # relative to root, where torchvision puts the files
    FILES: tuple[str, ...]  # the files that must be there
    TORCHVISION_CLASS: type
    CLASSES: tuple[str, ...]
    IN_CHANS: int
    IMG_SIZE: int
    MEAN: tuple[float, ...]  # per-channel statistics of the train split, in [0, 1] units
    STD: tuple[float, ...]

    def __init__(self, root: str | Path = "data", *, download: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.root, self.download = Path(root), download
        if not download:
            self._check_files()

    def describe(self) -> ImageSource:
        return ImageSource(
            in_chans=self.IN_CHANS, img_size=self.IMG_SIZE, class_names=self.CLASSES, mean=self.MEAN, std=self.STD
        )

    @property
    def raw_dir(self) -> Path:
        """The folder that holds the dataset's files."""
        return self.root / self.FOLDER

    def _find(self, name: str) -> Path | None:
        """Return the path of ``name`` or of its gzipped form in :attr:`raw_dir`, or None."""
        return next((p for p in (self.raw_dir / name, self.raw_dir / f"{name}.gz") if p.is_file()), None)

    def _check_files(self) -> None:
        missing = [name for name in self.FILES if self._find(name) is None]
        if missing:
            name = type(self).__name__.removesuffix("DataModule")  # the dataset's name, as torchvision spells it
            raise FileNotFoundError(
                f"{name}: {', '.join(missing)} not found in {self.raw_dir.resolve()}. "
                f"Set download=true in the config (--data.download true on the command line) to fetch "
                f"them there, or copy the files there yourself (root={str(self.root)!r})."
            )

    def prepare_data(self) -> None:
        """Download both splits through torchvision if ``download`` (it skips files already there)."""
        if self.download:
            for train in (True, False):
                self.TORCHVISION_CLASS(str(self.root), train=train, download=True)

    def setup(self, stage: str | None = None) -> None:
        self._check_files()  # a failed or skipped download
        super().setup(stage)


class MNISTDataModule(TorchvisionDataModule):
    """MNIST: 60,000 train and 10,000 test 28x28 grey handwritten digits (LeCun et al. 1998).

    Reads the idx files (plain or ``.gz``) from ``root/MNIST/raw/``. Arguments as for
    :class:`TorchvisionDataModule`.
    """

    FOLDER = "MNIST/raw"
    FILES = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )
    TORCHVISION_CLASS = torchvision.datasets.MNIST
    CLASSES = tuple("0123456789")
    IN_CHANS, IMG_SIZE = 1, 28
    MEAN, STD = (0.1307,), (0.3081,)

    def load(self) -> dict[str, Dataset]:
        def split(prefix: str) -> Dataset:
            images = read_idx(self._find(f"{prefix}-images-idx3-ubyte"))  # (N, 28, 28)
            return self.tensor_split(images[:, None], read_idx(self._find(f"{prefix}-labels-idx1-ubyte")))

        return {"train": split("train"), "test": split("t10k")}


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST: 60,000 train and 10,000 test 28x28 grey clothing images (Xiao et al. 2017).

    The same idx format as MNIST, read from ``root/FashionMNIST/raw/``.
    """

    FOLDER = "FashionMNIST/raw"
    TORCHVISION_CLASS = torchvision.datasets.FashionMNIST
    CLASSES = (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    )
    MEAN, STD = (0.2860,), (0.3530,)


class CIFAR10DataModule(TorchvisionDataModule):
    """CIFAR-10: 50,000 train and 10,000 test 32x32 colour images in 10 classes (Krizhevsky 2009).

    Reads the python-version batches from ``root/cifar-10-batches-py/``.
    """

    FOLDER = "cifar-10-batches-py"
    TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
    TEST_FILES = ("test_batch",)
    FILES = TRAIN_FILES + TEST_FILES
    LABELS_KEY = "labels"
    TORCHVISION_CLASS = torchvision.datasets.CIFAR10
    CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    IN_CHANS, IMG_SIZE = 3, 32
    # The std of all train pixels; the often quoted (0.2023, 0.1994, 0.2010) does not match the data.
    MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

    def load(self) -> dict[str, Dataset]:
        def split(names: tuple[str, ...]) -> Dataset:
            return self.tensor_split(*read_cifar_batches([self._find(n) for n in names], self.LABELS_KEY))

        return {"train": split(self.TRAIN_FILES), "test": split(self.TEST_FILES)}


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100: 50,000 train and 10,000 test 32x32 colour images in 100 fine classes.

    Reads ``train`` and ``test`` from ``root/cifar-100-python/``; the labels are the fine ones.
    """

    FOLDER = "cifar-100-python"
    TRAIN_FILES, TEST_FILES = ("train",), ("test",)
    FILES = TRAIN_FILES + TEST_FILES
    LABELS_KEY = "fine_labels"
    TORCHVISION_CLASS = torchvision.datasets.CIFAR100
    # The fine label names in label order, as in the archive's ``meta`` file.
    CLASSES = tuple(
        "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly "
        "camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile "
        "cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp "
        "lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom "
        "oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine "
        "possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake "
        "spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor "
        "train trout tulip turtle wardrobe whale willow_tree wolf woman worm".split()
    )
    MEAN, STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

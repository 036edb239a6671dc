"""Datasets read from files: idx (MNIST, Fashion-MNIST), CIFAR pickles, ImageFolder trees.

Every test writes its own tiny files in tmp_path; nothing is downloaded.
"""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from research.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
)
from research.data.image_tensors import channel_stats
from research.data.readers import read_cifar_batches, read_idx, write_idx

SHARED_FASHION = Path("/work/shared/data/fashion-mnist")


def write_mnist_tree(
    raw: Path, n_train: int = 40, n_test: int = 10, suffix: str = ""
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[f"{prefix}-images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{prefix}-labels"] = (np.arange(n) % 10).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte{suffix}", arrays[f"{prefix}-images"])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte{suffix}", arrays[f"{prefix}-labels"])
    return arrays


def write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray, labels_key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"data": images.reshape(len(images), -1), labels_key: labels.tolist()}, f)


def test_read_idx_plain_and_gzipped(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        result = read_idx(write_idx(tmp_path / name, array))
        assert result.dtype == np.uint8 and result.flags.writeable
        np.testing.assert_array_equal(result, array)


def test_read_idx_rejects_bad_files(tmp_path):
    good = write_idx(tmp_path / "good", np.zeros((4, 5), np.uint8)).read_bytes()
    (tmp_path / "truncated").write_bytes(good[:-3])
    with pytest.raises(ValueError, match=r"holds 29 bytes but its header \(4, 5\) needs 32"):
        read_idx(tmp_path / "truncated")
    (tmp_path / "not-idx").write_bytes(b"\x89PNG" + good[4:])
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(tmp_path / "not-idx")


@pytest.mark.parametrize(("cls", "suffix"), [(MNISTDataModule, ""), (FashionMNISTDataModule, ".gz")])
def test_mnist_family_reads_torchvision_layout(tmp_path, cls, suffix):
    arrays = write_mnist_tree(tmp_path / cls.FOLDER, suffix=suffix)
    dm = cls(root=tmp_path, batch_size=8, img_size=32)
    assert (dm.num_classes, dm.in_chans, dm.img_size, len(dm.class_names)) == (10, 1, 32, 10)
    assert dm.mean == cls.MEAN and dm.std == cls.STD
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (36, 4, 10)  # official test kept
    images, labels = next(iter(dm.predict_dataloader()))  # the source's order
    assert images.shape == (8, 1, 32, 32) and images.dtype == torch.float32
    np.testing.assert_array_equal(labels.numpy(), arrays["t10k-labels"][:8])
    native = cls(root=tmp_path, batch_size=10)
    native.setup()
    images, _ = next(iter(native.predict_dataloader()))
    np.testing.assert_array_equal((images[:, 0] * 255).round().numpy(), arrays["t10k-images"])


@pytest.mark.parametrize(
    ("cls", "folder"),
    [
        (MNISTDataModule, "MNIST/raw"),
        (FashionMNISTDataModule, "FashionMNIST/raw"),
        (CIFAR10DataModule, "cifar-10-batches-py"),
        (CIFAR100DataModule, "cifar-100-python"),
    ],
)
def test_missing_files_fail_at_construction_with_folder_and_fix(tmp_path, cls, folder):
    expected = str((tmp_path / folder).resolve())
    with pytest.raises(FileNotFoundError, match=r"not found in " + expected) as error:
        cls(root=tmp_path)
    assert "download=true" in str(error.value) and "--data.download true" in str(error.value)


def test_download_true_defers_the_check_to_setup(tmp_path):
    dm = MNISTDataModule(root=tmp_path, download=True)  # no network is touched before prepare_data
    assert dm.num_classes == 10
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        dm.setup()  # as after a failed download


def test_partial_files_name_the_missing_ones(tmp_path):
    write_mnist_tree(tmp_path / "MNIST/raw")
    (tmp_path / "MNIST/raw/t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"MNIST: t10k-labels-idx1-ubyte not found"):
        MNISTDataModule(root=tmp_path)


def test_cifar10_reads_python_batches(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    train = rng.integers(0, 256, (5, 4, 3, 32, 32), dtype=np.uint8)  # 5 batches of 4
    for i in range(5):
        write_cifar_batch(folder / f"data_batch_{i + 1}", train[i], np.arange(4) + i, "labels")
    test = rng.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
    write_cifar_batch(folder / "test_batch", test, np.arange(6), "labels")
    dm = CIFAR10DataModule(root=tmp_path, batch_size=6, val_fraction=0.2)
    assert (dm.num_classes, dm.in_chans, dm.img_size, dm.class_names[0]) == (10, 3, 32, "airplane")
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (16, 4, 6)
    images, labels = next(iter(dm.predict_dataloader()))  # the source's order
    np.testing.assert_array_equal((images * 255).round().numpy(), test)
    assert labels.tolist() == list(range(6))
    assert sorted(dm.train_set.dataset.labels.tolist()) == sorted(
        (np.arange(4)[None] + np.arange(5)[:, None]).ravel()
    )


def test_cifar100_fine_labels_and_grey_conversion(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-100-python"
    write_cifar_batch(
        folder / "train",
        rng.integers(0, 256, (30, 3, 32, 32), dtype=np.uint8),
        np.arange(30) * 3,
        "fine_labels",
    )
    write_cifar_batch(folder / "test", np.zeros((5, 3, 32, 32), np.uint8), np.full(5, 99), "fine_labels")
    dm = CIFAR100DataModule(root=tmp_path, batch_size=5, in_chans=1, img_size=16)
    assert dm.num_classes == 100 and list(dm.class_names) == sorted(dm.class_names)
    assert dm.class_names[:2] == ("apple", "aquarium_fish") and dm.class_names[-1] == "worm"
    assert len(dm.mean) == 1 and dm.mean[0] == pytest.approx(0.299 * 0.5071 + 0.587 * 0.4865 + 0.114 * 0.4409)
    dm.setup()
    images, labels = next(iter(dm.predict_dataloader()))  # the source's order
    assert images.shape == (5, 1, 16, 16) and labels.tolist() == [99] * 5


def test_cifar_batch_with_wrong_keys(tmp_path):
    write_cifar_batch(tmp_path / "b", np.zeros((2, 3, 32, 32), np.uint8), np.zeros(2), "coarse_labels")
    with pytest.raises(ValueError, match="expected 'data' and 'fine_labels'"):
        read_cifar_batches([tmp_path / "b"], "fine_labels")


@pytest.mark.skipif(
    not SHARED_FASHION.is_dir(), reason="the real Fashion-MNIST files are not on this machine"
)
def test_real_fashion_mnist(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for path in SHARED_FASHION.glob("*.gz"):
        (raw / path.name).symlink_to(path)
    dm = FashionMNISTDataModule(root=tmp_path, batch_size=256)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (54_000, 6_000, 10_000)
    assert torch.bincount(dm.test_set.dataset.labels).tolist() == [1000] * 10
    mean, std = channel_stats(dm.train_set.dataset.images)  # the published constants match the data
    assert mean[0] == pytest.approx(FashionMNISTDataModule.MEAN[0], abs=1e-4)
    assert std[0] == pytest.approx(FashionMNISTDataModule.STD[0], abs=1e-4)


def write_image_tree(root: Path, splits: dict[str, dict[str, int]], size=(12, 12), mode: str = "RGB") -> None:
    """splits: {"train": {"cat": 3, ...}, ...}; image i of class k is filled with the value 10 * k + i."""
    for split, classes in splits.items():
        for k, (name, count) in enumerate(sorted(classes.items())):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                value = 10 * k + i
                Image.new(mode, size, (value,) * len(mode) if mode != "L" else value).save(
                    root / split / name / f"{i}.png"
                )


def test_image_folder_reads_splits_and_labels(tmp_path):
    write_image_tree(tmp_path, {"train": {"cat": 5, "dog": 5}, "test": {"cat": 2, "dog": 1}})
    dm = ImageFolderDataModule(tmp_path, batch_size=4, drop_last=False)
    assert (dm.num_classes, dm.class_names, dm.in_chans, dm.img_size) == (2, ("cat", "dog"), 3, 12)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (9, 1, 3)  # val carved from train
    images, labels = next(iter(dm.predict_dataloader()))  # the source's order
    assert images.shape == (3, 3, 12, 12) and labels.tolist() == [0, 0, 1]
    values = (images[:, :, 0, 0] * 255).round()
    assert values.tolist() == [[0] * 3, [1] * 3, [10] * 3]
    assert {tuple(x.shape) for x, _ in dm.train_dataloader()} == {(4, 3, 12, 12), (1, 3, 12, 12)}


def test_image_folder_resizes_and_converts(tmp_path):
    write_image_tree(tmp_path, {"train": {"a": 4, "b": 4}}, size=(20, 10), mode="L")
    assert ImageFolderDataModule(tmp_path).img_size == (10, 20)  # PIL's (width, height) 20x10 is 10 rows of 20
    dm = ImageFolderDataModule(
        tmp_path, img_size=8, in_chans=3, batch_size=2, val_fraction=0.25, test_fraction=0.25
    )
    assert dm.in_chans == 3 and dm.mean == (0.485, 0.456, 0.406)
    dm.setup()
    images, _ = next(iter(dm.val_dataloader()))
    assert images.shape == (2, 3, 8, 8)
    assert torch.equal(images[:, 0], images[:, 1])  # grey repeated into RGB


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="expects root/train/<class>/<image>"):
        ImageFolderDataModule(tmp_path)
    write_image_tree(tmp_path, {"train": {"cat": 2}, "val": {"cat": 1, "cow": 1}})
    with pytest.raises(ValueError, match=r"val has class folder cow that .*train lacks"):
        ImageFolderDataModule(tmp_path)

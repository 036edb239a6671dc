"""Every evaluation split comes in a fixed random order: its first batch holds more than one class.

A split in source order (the embedded digits are sorted by label) makes ``fast_dev_run`` and
``limit_val_batches`` see zeros and ones only. The order comes from the datamodule's seed (the
test split's from a seed of its own, like its contents), so it is the same in every run.
"""

import numpy as np
import pytest
import torch
from test_vision_files import write_cifar_batch, write_image_tree, write_mnist_tree

from research.data import (
    CIFAR10DataModule,
    EmbeddedMNISTDataModule,
    FunctionRegressionDataModule,
    ImageFolderDataModule,
    LanguageWordsDataModule,
    MNISTDataModule,
    NpzDataModule,
    SyntheticDataModule,
)


def labels_of(batch) -> torch.Tensor:
    return batch["labels"] if isinstance(batch, dict) else batch[1]


def first_batches(dm) -> list:
    dm.setup()
    return [next(iter(loader)) for loader in (dm.val_dataloader(), dm.test_dataloader())]


def sorted_npz(tmp_path):
    labels = np.repeat(np.arange(4), 100)  # in label order, like the embedded digits
    path = tmp_path / "sorted.npz"
    np.savez(path, images=np.zeros((400, 6, 6), np.uint8), labels=labels)
    return NpzDataModule(path, batch_size=8)


def image_folder(tmp_path):
    if not (tmp_path / "folder").exists():
        write_image_tree(tmp_path / "folder", {"train": {"a": 12, "b": 12, "c": 12}, "test": {"a": 6, "b": 6, "c": 6}})
    return ImageFolderDataModule(tmp_path / "folder", batch_size=6)


def mnist(tmp_path):
    if not (tmp_path / MNISTDataModule.FOLDER).exists():
        write_mnist_tree(tmp_path / MNISTDataModule.FOLDER, suffix="")
    return MNISTDataModule(root=tmp_path, batch_size=4)


def cifar(tmp_path):
    folder = tmp_path / CIFAR10DataModule.FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in [*((f"data_batch_{i}", 20) for i in range(1, 6)), ("test_batch", 100)]:
        labels = np.sort(np.arange(n) % 10)
        write_cifar_batch(folder / name, np.zeros((n, 3, 32, 32), np.uint8), labels, "labels")
    return CIFAR10DataModule(root=tmp_path, batch_size=8)


MAKERS = {
    "embedded": lambda tmp_path: EmbeddedMNISTDataModule(batch_size=16),
    "synthetic": lambda tmp_path: SyntheticDataModule(num_samples=200, batch_size=16),
    "npz": sorted_npz,
    "image_folder": image_folder,
    "mnist": mnist,
    "cifar10": cifar,
    "words": lambda tmp_path: LanguageWordsDataModule(batch_size=16),  # the embedded words, sorted alphabetically
}


@pytest.mark.parametrize("name", MAKERS)
def test_first_val_and_test_batch_hold_several_classes_in_a_fixed_order(name, tmp_path):
    batches = first_batches(MAKERS[name](tmp_path))
    for batch in batches:
        assert len(labels_of(batch).unique()) > 1, f"{name}: a first batch of one class {labels_of(batch)}"
    again = first_batches(MAKERS[name](tmp_path))  # a new datamodule: another run with the same seed
    for batch, other in zip(batches, again):
        assert torch.equal(labels_of(batch), labels_of(other))


def test_function_regression_evaluation_order_is_fixed():
    first, again = (first_batches(FunctionRegressionDataModule(batch_size=8)) for _ in range(2))
    for (x, _), (x_again, _) in zip(first, again):
        assert torch.equal(x, x_again) and not torch.equal(x.flatten(), x.flatten().sort().values)

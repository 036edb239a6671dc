"""The base of every datamodule: three splits in memory after ``setup`` and the one way to load them."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
from torch.utils.data import DataLoader, Dataset, Sampler

from research.data.loaders import TEST_ORDER_SEED, make_loader, run_seed, trainer_position

SPLITS = ("train", "val", "test", "predict")


def check_loading(batch_size: int, num_workers: int) -> None:
    """Stop on a batch size below 1 or a negative number of workers (datamodule constructors call it).

    Raises:
        ValueError: saying which.
    """
    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"need batch_size >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")


class SplitDataModule(L.LightningDataModule):
    """Train, validation, test and predict (the test split) loaders over ``train_set``/``val_set``/``test_set``.

    A subclass sets ``batch_size``, ``num_workers`` and ``seed`` in ``__init__`` and the three sets in
    ``setup``; it may say how to batch a split's examples (:meth:`collate`, None: torch's default) or
    order whole batches itself (:meth:`batch_sampler`). The training split comes in a new order every
    epoch drawn from the run's seed, the validation split in a fixed order drawn from ``seed``, the
    test split in one that ignores it, and predict in the test split's own order (see
    :mod:`research.data.loaders`).
    """

    batch_size: int | None
    num_workers: int
    seed: int
    pin_memory: bool = False
    drop_last: bool = False  # of the training split's last, incomplete batch

    train_set: Dataset | None = None
    val_set: Dataset | None = None
    test_set: Dataset | None = None

    def collate(self, split: str) -> Callable | None:
        """How to batch the examples of ``split`` (one of :data:`SPLITS`); None: torch's default."""
        return None

    def batch_sampler(self, split: str) -> Sampler[list[int]] | None:
        """A sampler of whole batches of ``split`` that orders them itself; None: batches of ``batch_size``."""
        return None

    def loader(self, split: str) -> DataLoader:
        """The loader of ``split``, one of :data:`SPLITS`; call :meth:`setup` first."""
        train = split == "train"
        return make_loader(
            self.test_set if split == "predict" else getattr(self, f"{split}_set"),
            seed={"train": run_seed(), "val": self.seed, "test": TEST_ORDER_SEED, "predict": None}[split],
            shuffle=train,
            batch_size=self.batch_size,
            batch_sampler=self.batch_sampler(split),
            collate_fn=self.collate(split),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=train and self.drop_last,
            **trainer_position(self),
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader("train")

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")

    def predict_dataloader(self) -> DataLoader:
        """The test split in its own order."""
        return self.loader("predict")

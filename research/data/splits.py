"""The loaders of a datamodule whose three splits live in memory (built by its ``setup``)."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
from torch.utils.data import DataLoader, Dataset

from research.data.loaders import TEST_ORDER_SEED, make_loader, run_seed, trainer_position


class SplitDataModule(L.LightningDataModule):
    """Train, validation, test (and predict, on the test split) loaders over ``train_set``/``val_set``/``test_set``.

    A subclass sets ``batch_size``, ``num_workers`` and ``seed`` in ``__init__`` and the three sets in
    ``setup``, and returns how to batch its examples from :meth:`collate` (None: torch's default).
    The validation split comes in a fixed order drawn from ``seed``, the test split in one that
    ignores it, the training split in a new order every epoch (see :mod:`research.data.loaders`).
    """

    batch_size: int
    num_workers: int
    seed: int

    def collate(self) -> Callable | None:
        return None

    def _loader(self, dataset: Dataset | list, *, shuffle: bool, seed: int | None = None) -> DataLoader:
        return make_loader(
            dataset,
            seed=run_seed() if shuffle else seed,
            shuffle=shuffle,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=self.collate(),
            **trainer_position(self),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False, seed=self.seed)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False, seed=TEST_ORDER_SEED)

    def predict_dataloader(self) -> DataLoader:
        """The test split in its own order."""
        return self._loader(self.test_set, shuffle=False)

"""The loaders of a datamodule whose three splits live in memory (built by its ``setup``)."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
from torch.utils.data import DataLoader, Dataset


class SplitDataModule(L.LightningDataModule):
    """Train, validation, test (and predict, on the test split) loaders over ``train_set``/``val_set``/``test_set``.

    A subclass sets ``batch_size`` and ``num_workers`` in ``__init__`` and the three sets in ``setup``,
    and returns how to batch its examples from :meth:`collate` (None: torch's default).
    """

    batch_size: int
    num_workers: int

    def collate(self) -> Callable | None:
        return None

    def _loader(self, dataset: Dataset | list, *, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=self.collate(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

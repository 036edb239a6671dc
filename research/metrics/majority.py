"""The majority baseline that a classifier (or a masked-token predictor) must beat to show it learned anything."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class MostFrequentAccuracy(Metric):
    """Accuracy of always predicting the most frequent target: the majority class, or the unigram baseline of MLM.

    The most frequent target is the one among the evaluated targets themselves (an upper bound on
    any guess that ignores the input), so an accuracy above it shows the model uses its input.

    Args:
        num_classes: number of classes (the vocabulary size for tokens).
        ignore_index: a target value that is not counted (MLM's -100 at unselected positions), or None.

    """

    full_state_update = False

    def __init__(self, num_classes: int, *, ignore_index: int | None = None) -> None:
        super().__init__()
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.add_state("counts", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, target: Tensor) -> None:
        """Count target ids (any shape)."""
        if self.ignore_index is not None:
            target = target[target != self.ignore_index]
        self.counts += torch.bincount(target.flatten(), minlength=self.num_classes)

    def compute(self) -> Tensor:
        return self.counts.max().float() / self.counts.sum().clamp(min=1)

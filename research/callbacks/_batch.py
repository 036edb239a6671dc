"""What the attack callbacks need from a task's batches: (images in [0, 1], integer labels), and a few of them kept.

The three attack callbacks (:mod:`~research.callbacks.adversarial_training`,
:mod:`~research.callbacks.robust_evaluation`, :mod:`~research.callbacks.adversarial_examples`)
work on any task whose batches are ``(images, labels, ...)``: float images (B, C, H, W) in
[0, 1] (ARCHITECTURE.md: a task normalises them itself, so epsilon is in pixel units) and
integer class labels (B,). Anything else stops with a message that names the callback.
The two that attack evaluation examples keep the same few of them every epoch
(:class:`EvaluationSubsetCallback`).
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

Stage = Literal["val", "test"]


def check_at_least_one(owner: str, **values: int) -> None:
    """Stop with ``<owner>: <name> must be >= 1`` for the first of ``values`` below 1 (counts, sizes, periods)."""
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{owner}: {name} must be >= 1, got {value}")


def check_image_batch(batch: Any, *, owner: str) -> None:
    """Stop with what ``owner`` expects unless the batch is (float images in [0, 1], integer labels).

    Callers check the first batch of a loader only: the pixel range costs a device sync on GPU,
    and every batch of a datamodule has the same form.

    Args:
        batch: what the task's dataloader yields.
        owner: the callback's name, for the message.

    Raises:
        ValueError: a batch that is not (float images in [0, 1], integer labels).
    """
    expects = (
        f"{owner} expects batches of (images, labels): float images (B, C, H, W) in [0, 1] and integer "
        "class labels (B,), as the datamodules in research.data yield them"
    )
    if not isinstance(batch, list | tuple) or len(batch) < 2:
        raise ValueError(f"{expects}; got a batch of type {type(batch).__name__}. Use it with an image task only.")
    x, y = batch[0], batch[1]
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim != 4:
        got = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{expects}; the first item is a {got}. Use it with an image task only.")
    if not isinstance(y, Tensor) or y.is_floating_point() or y.is_complex() or tuple(y.shape) != (len(x),):
        got = f"{y.dtype} tensor of shape {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"{expects}; the labels are a {got} (soft or per-pixel labels cannot be attacked).")
    if x.numel():
        low, high = x.min().item(), x.max().item()
        if low < 0 or high > 1:
            raise ValueError(
                f"{expects}; the images span [{low:.3g}, {high:.3g}]. Leave normalisation to the task "
                "(its forward), so that eps is in pixel units and clamping to [0, 1] is right."
            )


class FixedSubset:
    """A fixed random sample of ``count`` examples from the first pass over an evaluation loader.

    Reservoir sampling (Vitter 1985, Algorithm R) with a seeded generator: every example of the
    pass is equally likely to be kept, without knowing the loader's length in advance, and the
    same loader order and seed give the same subset. Not simply the first ``count`` examples:
    some splits come ordered by class (the embedded MNIST digits do), and their first examples
    would all be zeros. :meth:`close` ends the pass; from then on the subset never changes, so
    every epoch is measured on the same images. ``count`` is per process: under DDP each rank
    samples its own shard.

    Args:
        count: how many examples to keep (all of them if the pass has fewer).
        owner: the callback's name, for error messages.
        seed: seed of the sampling.
    """

    def __init__(self, *, count: int, owner: str, seed: int = 0):
        self.count, self.owner = count, owner
        self._generator = torch.Generator().manual_seed(seed)
        self._kept: list[tuple[int, Any]] = []  # (position in the pass, example: (image, label) here)
        self._seen = 0
        self.closed = False

    def __len__(self) -> int:
        return len(self._kept)

    def close(self) -> None:
        """End the first pass (call it at the end of the first evaluation epoch)."""
        self.closed = True

    def add(self, batch: Any) -> None:
        """Offer the batch's examples to the sample; a no-op once closed."""
        if self.closed:
            return
        if self._seen == 0:
            self.check(batch)
        size = self.size(batch)
        positions = torch.arange(self._seen, self._seen + size)
        # Algorithm R: the t-th example (from 0) replaces a uniform slot in [0, t] when that slot is kept.
        slots = (torch.rand(size, generator=self._generator) * (positions + 1)).long()
        for i, (position, slot) in enumerate(zip(positions.tolist(), slots.tolist())):
            if position < self.count:
                self._kept.append((position, self.example(batch, i)))
            elif slot < self.count:
                self._kept[slot] = (position, self.example(batch, i))
        self._seen += size

    # What a subset of another kind of batch (token batches: research.callbacks.embedding_evaluation) overrides.
    def check(self, batch: Any) -> None:
        """Stop with a message unless the (first) batch is of the kind this subset keeps."""
        check_image_batch(batch, owner=self.owner)

    def size(self, batch: Any) -> int:
        """Examples in the batch."""
        return len(batch[1])

    def example(self, batch: Any, i: int) -> Any:
        """The ``i``-th example of the batch, detached and cloned: here (image, label)."""
        return batch[0][i].detach().clone(), batch[1][i].detach().clone()

    def tensors(self) -> tuple[Tensor, Tensor]:
        """(N, C, H, W) images and (N,) labels in loader order, as normal tensors (cloned outside inference mode)."""
        if not self._kept:
            raise ValueError(f"{self.owner}: the loader yielded no examples to attack")
        kept = sorted(self._kept, key=lambda item: item[0])
        with torch.inference_mode(False):
            return torch.stack([x for _, (x, _) in kept]).clone(), torch.stack([y for _, (_, y) in kept]).clone()


class EvaluationSubsetCallback(Callback):
    """A callback that works on the same fixed subset of validation (test) examples at every epoch.

    The subset is a :class:`FixedSubset` of the first validation (test) epoch, the sanity check
    not counted, of the first dataloader. At the end of every ``every_n_epochs``-th validation
    epoch (and of any validation outside ``fit``) and of every test, :meth:`evaluate` is called
    with the stage. With ``rank_zero_only`` only global rank 0 gathers and evaluates; otherwise
    each rank samples its own shard.

    Subclasses set :attr:`owner` (the name in messages) and implement :meth:`subset_size` and
    :meth:`evaluate`, which reads the subset with ``self._subsets[stage].tensors()``.
    """

    owner = "EvaluationSubsetCallback"

    def __init__(self, *, every_n_epochs: int, rank_zero_only: bool) -> None:
        self.every_n_epochs, self.rank_zero_only = every_n_epochs, rank_zero_only
        self._subsets: dict[Stage, FixedSubset] = {}

    def subset_size(self, trainer: L.Trainer) -> int:
        """How many examples this process keeps."""
        raise NotImplementedError

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: Stage) -> None:
        """Work on ``self._subsets[stage]``, at the end of an epoch that is due."""
        raise NotImplementedError

    def _active(self, trainer: L.Trainer) -> bool:
        return trainer.is_global_zero or not self.rank_zero_only

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for name in ("val", "test"):
            self._subsets.setdefault(name, FixedSubset(count=self.subset_size(trainer), owner=self.owner))

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._active(trainer) and not trainer.sanity_checking and dataloader_idx == 0:
            self._subsets["val"].add(batch)

    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._active(trainer) and dataloader_idx == 0:
            self._subsets["test"].add(batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self._active(trainer):
            return
        self._subsets["val"].close()
        if trainer.current_epoch % self.every_n_epochs == 0 or trainer.state.fn != "fit":
            self.evaluate(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._active(trainer):
            self._subsets["test"].close()
            self.evaluate(trainer, pl_module, "test")

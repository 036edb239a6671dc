"""The DataLoaders of every datamodule: random draws that are a function of (seed, epoch, batch).

A resumed run must see the batches the uninterrupted run would have seen. torch seeds a worker's
generators once, when the worker starts (``base_seed + worker_id``, the base drawn from the loader's
generator when an iterator is created), and persistent workers keep those streams across epochs:
the augmentation of epoch 3 depends on how many batches the workers made since they started, and a
run resumed in epoch 2 starts fresh workers. So nothing here lives in a stream:

- the training order is a permutation drawn from (seed, epoch) (:class:`EpochShuffle`); Lightning
  calls ``set_epoch`` on ``dataloader.batch_sampler.sampler`` before every epoch, the resumed one
  included, and injects its own ``DistributedSampler`` (also ordered by seed and epoch) under DDP;
- every training batch is fetched and collated with torch's, Python's and NumPy's global generators
  seeded from (seed, epoch, batch index, rank) (:class:`SeededBatchSampler`, :class:`ReadBatch`),
  in whichever process loads it; the main process's generators are put back afterwards, so with
  ``num_workers=0`` the model's dropout stream is untouched. Augmentation (crops, flips, timm's
  RandAugment) and MLM masking are thus the same with any ``num_workers`` and persistence;
- a loader's iterator starts at the first batch asked of it, not when it is created
  (:class:`Loader`): Lightning creates the epoch's iterator before it calls ``set_epoch``
  (``_FitLoop.setup_data``), and workers, like the translation's bucket sampler, draw the first
  batches' indices (and with them the epoch) as soon as torch's iterator exists. Worse, a schedule
  over the run (``trainer.estimated_stepping_batches`` in ``configure_optimizers``) builds the loader
  and creates that iterator before the checkpoint is restored, and Lightning keeps it for the
  resumed epoch, which would get epoch 0's order and draws with workers (not with ``num_workers=0``,
  whose iterator draws nothing until asked). A loader built outside a trainer also starts at the
  ``epoch`` it is given (:func:`trainer_position` for a datamodule), for whoever iterates it without
  calling ``set_epoch``;
- each loader has a generator of its own, so creating an iterator (which draws the workers' base
  seed) never advances the global generator that :class:`~research.callbacks.RNGState` saves;
- a batch is read whole, through DataLoader's documented roles only: the loader's dataset is
  :class:`Indices` (item i is i), so a batch sampler's list of indices reaches the ``collate_fn``
  (:class:`ReadBatch`), which reads the examples from the split (in-memory images in one indexing
  operation, :func:`read_examples`) and batches them;
- an evaluation split comes in a fixed random order (:func:`fixed_order`), so ``fast_dev_run`` and
  ``limit_val_batches`` see every class, and the same examples in every run with the same seed.

The training seed is the run's (``seed_everything``, which Lightning keeps in ``PL_GLOBAL_SEED`` and
also gives its DDP sampler); 0 without one.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, Subset, default_collate

_ORDER, _BATCH, _EVAL = 0, 1, 2  # tags that keep the streams of the different draws apart
# The test split's order ignores the datamodule's seed, as its contents do: the same in every run.
TEST_ORDER_SEED = 0


def run_seed() -> int:
    """The run's seed as ``seed_everything`` set it (Lightning's ``PL_GLOBAL_SEED``), 0 if unset."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def _derive(*entropy: int, count: int = 1) -> list[int]:
    # SeedSequence hashes its entropy, so nearby (seed, epoch, batch) tuples give unrelated seeds.
    words = np.random.SeedSequence([e % 2**64 for e in entropy]).generate_state(count, np.uint64)
    return [int(w) for w in words]


def fixed_order(n: int, seed: int) -> list[int]:
    """A permutation of ``range(n)`` that depends on ``seed`` only: the order of an evaluation split."""
    generator = torch.Generator().manual_seed(_derive(_EVAL, seed)[0])
    return torch.randperm(n, generator=generator).tolist()


class EpochShuffle(RandomSampler):
    """All indices of ``data_source`` once, in a random order drawn from (``seed``, epoch).

    A ``RandomSampler`` so that Lightning knows the loader shuffles (it then shuffles the
    ``DistributedSampler`` it puts in its place under DDP).
    """

    def __init__(self, data_source: Sequence, *, seed: int = 0) -> None:
        super().__init__(data_source)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(_derive(_ORDER, self.seed, self.epoch)[0])
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


class SeededIndices(list):
    """One batch's indices (a list, as a batch sampler yields) with ``seeds``.

    ``seeds`` are those of the batch's torch, Python and NumPy draws.
    """

    def __init__(self, indices: Iterable[int], seeds: tuple[int, int, int]):
        super().__init__(indices)
        self.seeds = seeds


class SeededBatchSampler(BatchSampler):
    """Batches of ``sampler``'s indices, each with seeds drawn from (``seed``, epoch, batch index, ``rank``).

    The epoch is the sampler's (``EpochShuffle`` or Lightning's ``DistributedSampler``, whose
    ``set_epoch`` Lightning calls). Lightning re-creates this class with another ``sampler`` under
    DDP, keeping the other arguments.
    """

    def __init__(self, sampler: Sampler[int], batch_size: int, drop_last: bool, *, seed: int = 0, rank: int = 0):
        super().__init__(sampler, batch_size, drop_last)
        self.seed, self.rank = seed, rank

    def __iter__(self) -> Iterator[SeededIndices]:
        epoch = getattr(self.sampler, "epoch", 0)
        for i, indices in enumerate(super().__iter__()):
            torch_seed, python_seed, numpy_seed = _derive(_BATCH, self.seed, epoch, i, self.rank, count=3)
            yield SeededIndices(indices, (torch_seed, python_seed, numpy_seed % 2**32))


@contextmanager
def seeded_generators(seeds: tuple[int, int, int] | None):
    """Seed torch's (CPU), Python's and NumPy's global generators; put their states back on exit (None: no-op)."""
    if seeds is None:
        yield
        return
    saved = torch.get_rng_state(), random.getstate(), np.random.get_state()
    torch.default_generator.manual_seed(seeds[0])  # not torch.manual_seed: that would reseed CUDA too
    random.seed(seeds[1])
    np.random.seed(seeds[2])
    try:
        yield
    finally:
        torch.set_rng_state(saved[0])
        random.setstate(saved[1])
        np.random.set_state(saved[2])


def read_examples(dataset: Dataset, indices: list[int]):
    """The examples of ``dataset`` at ``indices``: one ``read_batch(indices)`` call where the dataset has it.

    A dataset that holds its split as tensors (:class:`~research.data.vision.TensorImages`) reads a
    whole batch in one indexing operation and returns it batched; any other gives a list of examples.
    ``Subset`` layers are looked through.
    """
    while isinstance(dataset, Subset):
        indices, dataset = [dataset.indices[i] for i in indices], dataset.dataset
    read_batch = getattr(dataset, "read_batch", None)
    return read_batch(indices) if read_batch is not None else [dataset[i] for i in indices]


class Indices(Dataset):
    """The DataLoader's dataset: item ``i`` is ``i``, so a batch of indices reaches the collate whole.

    ``__getitems__`` (torch's hook for batched reads) hands the batch sampler's list back as it is, so
    a :class:`SeededIndices` keeps its seeds; :class:`ReadBatch` then reads the examples.
    """

    def __init__(self, length: int):
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> int:
        return index

    def __getitems__(self, indices: list[int]) -> list[int]:
        return indices


class ReadBatch:
    """A loader's ``collate_fn``: read a batch of indices from ``dataset`` and ``collate`` it.

    Both the read and the collate run under the batch's seeds when it has them (:class:`SeededIndices`):
    MLM's random next sentences are drawn when read, augmentation and masking when collated.

    Args:
        dataset: the split.
        collate: how to batch what :func:`read_examples` returns (None: torch's default).

    """

    def __init__(self, dataset: Dataset, collate: Callable | None = None):
        self.dataset, self.collate = dataset, collate or default_collate

    def __call__(self, indices: list[int]):
        with seeded_generators(getattr(indices, "seeds", None)):
            return self.collate(read_examples(self.dataset, indices))


class Loader(DataLoader):
    """A DataLoader whose iterator starts (workers prefetching, samplers reading their epoch) at its first batch.

    torch's multi-process iterator sends the first ``prefetch_factor * num_workers`` batches of
    indices to the workers as soon as it is created, so the epoch the samplers read is the one set
    then, not the one Lightning sets before the epoch's first batch; see the module docstring.
    """

    def __iter__(self) -> Iterator:
        return _StartsAtFirstBatch(self)


class _StartsAtFirstBatch:
    """An iterator over ``loader`` that creates torch's iterator when the first batch is asked for."""

    def __init__(self, loader: Loader):
        self.loader, self.iterator = loader, None

    def __iter__(self) -> _StartsAtFirstBatch:
        return self

    def __next__(self):
        if self.iterator is None:
            # torch's own __iter__: persistent workers are reset for the new epoch here
            self.iterator = DataLoader.__iter__(self.loader)
        return next(self.iterator)

    def __len__(self) -> int:
        return len(self.loader)


def trainer_position(datamodule) -> dict[str, int]:
    """``rank`` and ``epoch`` for :func:`make_loader` from the datamodule's trainer (0 and 0 without one)."""
    trainer = datamodule.trainer
    if trainer is None:
        return {}
    # the number Lightning hands to set_epoch (fit_loop.on_advance_start); a run resumed from an
    # end-of-epoch checkpoint has it one ahead of trainer.current_epoch when the loader is built. It is
    # 0 when the loader is built before the checkpoint is restored (trainer.estimated_stepping_batches
    # in configure_optimizers): harmless, as Lightning sets the epoch before the first batch (Loader).
    return {"rank": trainer.global_rank, "epoch": trainer.fit_loop.epoch_progress.current.processed}


def make_loader(
    dataset: Dataset,
    *,
    seed: int | None,
    shuffle: bool = False,
    batch_size: int | None = None,
    batch_sampler: Sampler[list[int]] | None = None,
    collate_fn: Callable | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
    rank: int = 0,
    epoch: int = 0,
) -> DataLoader:
    """The one way this package builds a DataLoader (a :class:`Loader`).

    Args:
        dataset: the split.
        seed: with ``shuffle``, the seed of the training order and draws (usually :func:`run_seed`);
            without, the seed of the split's fixed order (None: the split's own order, for predict).
        shuffle: training: a new order every epoch and seeded draws per batch.
        batch_size: examples per batch (or give ``batch_sampler``).
        batch_sampler: a sampler of whole batches that orders them itself from (seed, epoch), such
            as the translation's length buckets; the collate must then draw nothing at random.
        collate_fn: how to batch what :func:`read_examples` returns (None: torch's default).
        num_workers: worker processes; they persist across epochs when there are any.
        pin_memory: pin batches in page-locked memory.
        drop_last: drop the last incomplete batch (training).
        rank: this process's rank under DDP, so that ranks draw differently.
        epoch: the epoch the loader is first iterated in (a resumed run's is not 0).

    """
    common = dict(
        collate_fn=ReadBatch(dataset, collate_fn),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
        # the workers' base seed is drawn from this, not from the global generator: see the module docstring
        generator=torch.Generator().manual_seed(_derive(_ORDER, seed or 0, -1)[0]),
    )
    indices = Indices(len(dataset))
    if batch_sampler is not None:
        loader = Loader(indices, batch_sampler=batch_sampler, **common)
        _set_sampler_epoch(loader, epoch)
        return loader
    if shuffle:
        sampler = EpochShuffle(indices, seed=seed or 0)
        sampler.set_epoch(epoch)
        batches = SeededBatchSampler(sampler, batch_size, drop_last, seed=seed or 0, rank=rank)
        return Loader(indices, batch_sampler=batches, **common)
    if seed is not None:
        indices = Subset(indices, fixed_order(len(dataset), seed))
    return Loader(indices, batch_size=batch_size, shuffle=False, drop_last=drop_last, **common)

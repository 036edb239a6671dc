"""Training batches are a function of (seed, epoch, batch): the same with any workers and after a resume.

Also pins the torch and Lightning behaviour that :mod:`research.data.loaders` relies on, so that a
dependency that changes it fails here.
"""

from types import SimpleNamespace

import lightning as L
import torch
from lightning.fabric.utilities.data import _replace_dunder_methods, _set_sampler_epoch
from lightning.pytorch.utilities.data import _is_dataloader_shuffled, _update_dataloader
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

from research.data import SyntheticDataModule
from research.data.loaders import EpochShuffle, SeededBatchSampler

AUGMENT = "crop_flip+rand-m9-mstd0.5"  # torch's generator (crops, flips), Python's and NumPy's (timm)


def epochs(loader, which) -> list[torch.Tensor]:
    batches = []
    for epoch in which:
        _set_sampler_epoch(loader, epoch)  # what Lightning calls before each epoch
        batches += [torch.cat([x.flatten(), y.float()]) for x, y in loader]
    return batches


def images(num_workers: int) -> SyntheticDataModule:
    dm = SyntheticDataModule(num_samples=120, img_size=16, batch_size=16, augment=AUGMENT, num_workers=num_workers)
    dm.setup()
    return dm


def test_train_batches_are_the_same_with_any_workers_and_in_a_resumed_epoch():
    L.seed_everything(3)
    reference = epochs(images(0).train_dataloader(), [0, 1, 2])
    workers = epochs(images(2).train_dataloader(), [0, 1, 2])  # persistent workers, one stream each until now
    resumed = epochs(images(2).train_dataloader(), [2])  # fresh workers that start in epoch 2
    assert all(torch.equal(a, b) for a, b in zip(reference, workers, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(reference[-len(resumed):], resumed, strict=True))
    assert not torch.equal(reference[0], reference[len(resumed)])  # epochs differ
    L.seed_everything(4)
    assert not torch.equal(epochs(images(0).train_dataloader(), [0])[0], reference[0])  # the run's seed counts


def test_train_draws_leave_the_global_generators_alone():
    L.seed_everything(0)
    loader = images(0).train_dataloader()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = epochs(loader, [0])
    assert torch.equal(torch.get_rng_state(), before)  # the model's dropout stream is untouched
    torch.manual_seed(456)
    assert all(torch.equal(a, b) for a, b in zip(first, epochs(loader, [0]), strict=True))


def test_lightning_sets_the_epoch_knows_it_shuffles_and_keeps_the_seeds_under_ddp():
    L.seed_everything(5)
    dm = images(0)
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = dm.train_dataloader()  # as Lightning's data connector calls the hook
    assert isinstance(loader.batch_sampler.sampler, EpochShuffle)
    _set_sampler_epoch(loader, 7)
    assert loader.batch_sampler.sampler.epoch == 7
    assert _is_dataloader_shuffled(loader)  # so Lightning's DistributedSampler shuffles too
    ddp = _update_dataloader(loader, DistributedSampler(loader.dataset, num_replicas=2, rank=1, shuffle=True))
    batches = ddp.batch_sampler
    assert isinstance(batches, SeededBatchSampler) and isinstance(batches.sampler, DistributedSampler)
    assert (batches.seed, batches.batch_size, batches.drop_last) == (5, 16, True)
    _set_sampler_epoch(ddp, 2)
    assert batches.sampler.epoch == 2  # the epoch SeededBatchSampler reads


def at_epoch(dm, epoch: int):
    """Attach a stand-in trainer in ``epoch``: what a run resumed into that epoch builds its loader with."""
    progress = SimpleNamespace(current=SimpleNamespace(processed=epoch))
    dm.trainer = SimpleNamespace(global_rank=0, fit_loop=SimpleNamespace(epoch_progress=progress))
    return dm


def test_a_loader_built_in_a_resumed_epoch_starts_with_that_epoch():
    # Lightning creates the iterator (and workers prefetch) before it calls set_epoch
    L.seed_everything(0)
    reference = epochs(images(0).train_dataloader(), [0, 1, 2])
    loader = at_epoch(images(2), 2).train_dataloader()
    first = [torch.cat([x.flatten(), y.float()]) for x, y in loader]  # no set_epoch
    assert all(torch.equal(a, b) for a, b in zip(reference[-len(first):], first, strict=True))


def test_an_iterator_created_before_set_epoch_serves_the_epoch_set_before_its_first_batch():
    # Lightning creates the iterator in setup_data (also from estimated_stepping_batches, before a
    # checkpoint is restored) and sets the epoch afterwards; torch's workers prefetch on creation
    L.seed_everything(0)
    reference = epochs(images(0).train_dataloader(), [0, 1, 2])
    loader = images(2).train_dataloader()  # persistent workers
    early = iter(loader)
    _set_sampler_epoch(loader, 1)
    first = [torch.cat([x.flatten(), y.float()]) for x, y in early]
    assert all(torch.equal(a, b) for a, b in zip(reference[len(first):2 * len(first)], first, strict=True))
    early = iter(loader)  # the next epoch's, made again before set_epoch
    _set_sampler_epoch(loader, 2)
    second = [torch.cat([x.flatten(), y.float()]) for x, y in early]
    assert all(torch.equal(a, b) for a, b in zip(reference[-len(second):], second, strict=True))

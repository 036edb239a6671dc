"""EMA overhead: a train step with Lightning's EMAWeightAveraging (configs/trainer/ema.yaml) vs without, one run.

    python benchmarks/ema_overhead.py [--model resnet20] [--steps 40] [--batch-size 128] [--repeats 3] [--clock cpu]

Both sides run ImageClassification under the Trainer on the same initial weights and the same batches
(the embedded MNIST digits); one side adds ``EMAWeightAveraging(decay=0.999)``, which after every
optimizer step updates the average of every parameter and buffer (``torch.optim.swa_utils.AveragedModel``:
one elementwise pass over the weights). Steady-state time per step (the EMA update included: it runs
in ``on_train_batch_end``, between two batch starts) is taken after ``--warmup`` steps; the two sides
alternate ``--repeats`` times and the medians are compared, with the median of the paired ratios as
the steadier figure on a shared machine. ``--clock cpu`` (the default) times by the process's CPU time,
which on a machine shared with other jobs counts only this process's work (run it with one thread,
OMP_NUM_THREADS=1); ``--clock wall`` by the wall clock. Goal: ratio <= 1.03.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging
from lightning_overhead import steady
from torch.utils.data import DataLoader

from research.data import EmbeddedMNISTDataModule
from research.models import create_model
from research.tasks import ImageClassification


class StepClock(Callback):
    """The clock's reading at every batch start and at the end of training."""

    def __init__(self, clock):
        self.clock, self.times = clock, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.times.append(self.clock())

    def on_train_end(self, trainer, pl_module):
        self.times.append(self.clock())


def fit_time(model, batches, mean, std, *, ema: bool, warmup: int, clock) -> float:
    """Seconds per steady-state train step of ``model`` on ``batches``, with or without the EMA callback."""
    task = ImageClassification(
        model, num_classes=10, mean=mean, std=std, optim={"name": "sgd", "lr": 0.1, "weight_decay": 1e-4}
    )
    timer = StepClock(clock)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=len(batches),
        logger=False,
        callbacks=[timer, *([EMAWeightAveraging(decay=0.999)] if ema else [])],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    # batch_size=None: the loader yields the prepared batches as they are.
    trainer.fit(task, train_dataloaders=DataLoader(batches, batch_size=None))
    return steady(timer.times, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    dm = EmbeddedMNISTDataModule(batch_size=args.batch_size)
    dm.setup("fit")
    batches = []
    for batch in dm.train_dataloader():  # a fixed list: both sides see the very same tensors
        batches.append(batch)
        if len(batches) == args.steps:
            break
    init = create_model(args.model, num_classes=10, in_chans=dm.in_chans)
    mean, std = list(dm.mean), list(dm.std)

    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    times: dict[bool, list[float]] = {False: [], True: []}
    for repeat in range(args.repeats):
        for ema in (False, True) if repeat % 2 == 0 else (True, False):  # alternate who goes first
            model = copy.deepcopy(init)
            times[ema].append(fit_time(model, batches, mean, std, ema=ema, warmup=args.warmup, clock=clock))
    plain, averaged = statistics.median(times[False]), statistics.median(times[True])
    paired = statistics.median(a / p for a, p in zip(times[True], times[False]))
    print(
        f"model {args.model}, batch {args.batch_size}, {args.steps} steps x {args.repeats} repeats, "
        f"{torch.get_num_threads()} threads, {args.clock} clock, torch {torch.__version__}, lightning {L.__version__}"
    )
    for name, runs in (("without EMA", times[False]), ("with EMA", times[True])):
        spread = ", ".join(f"{1e3 * t:.1f}" for t in runs)
        print(f"{name:12} {1e3 * statistics.median(runs):8.2f} ms/step  (runs: {spread})")
    print(f"ratio EMA/plain {averaged / plain:6.3f}x  (median of paired ratios {paired:.3f}; goal <= 1.03)")


if __name__ == "__main__":
    main()

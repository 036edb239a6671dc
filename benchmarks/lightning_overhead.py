"""Lightning overhead: the fit command's ImageClassification vs a raw PyTorch loop, same model/data/batches.

    python benchmarks/lightning_overhead.py [--model resnet20] [--steps 60] [--batch-size 128] [--repeats 3]

Both sides train the same initial weights on the same batches (the embedded MNIST digits, the
quick-start job) with the same optimizer and per-step cosine schedule. The Lightning side runs the
task exactly as python -m research fit does (metrics, logging to a CSV logger, rich progress bar); the raw loop
normalises, forwards, backwards and steps. Steady-state time per step is taken between the first
``--warmup`` steps and the last one, and the two are measured alternately ``--repeats`` times; the
medians are compared. Goal: ratio <= 1.05.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, RichProgressBar
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from research.data import EmbeddedMNISTDataModule
from research.models import create_model
from research.tasks import ImageClassification
from research.tasks.optim import build_optimizer, warmup_cosine


class StepTimes(Callback):
    def __init__(self):
        self.times = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.times.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module):
        self.times.append(time.perf_counter())


def steady(times: list[float], warmup: int) -> float:
    """Seconds per step after the warm-up steps."""
    return (times[-1] - times[warmup]) / (len(times) - 1 - warmup)


def raw_loop(model, batches, mean, std, args) -> float:
    opt = build_optimizer(model, "sgd", lr=0.1, weight_decay=1e-4, nesterov=True)
    sched = warmup_cosine(opt, warmup_steps=0, total_steps=len(batches))
    model.train()
    times = []
    for x, y in batches:
        times.append(time.perf_counter())
        loss = F.cross_entropy(model((x - mean) / std), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    times.append(time.perf_counter())
    return steady(times, args.warmup)


def lightning_fit(model, batches, mean, std, args) -> float:
    task = ImageClassification(
        model,
        num_classes=10,
        mean=mean.flatten().tolist(),
        std=std.flatten().tolist(),
        optim={"name": "sgd", "lr": 0.1, "weight_decay": 1e-4, "nesterov": True},
    )
    timer = StepTimes()
    with tempfile.TemporaryDirectory() as logs:
        trainer = L.Trainer(
            accelerator="cpu",
            max_steps=len(batches),
            logger=CSVLogger(logs),
            callbacks=[timer, RichProgressBar()],
            enable_checkpointing=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            log_every_n_steps=50,
        )
        # batch_size=None: the loader yields the prepared batches as they are.
        trainer.fit(task, train_dataloaders=DataLoader(batches, batch_size=None))
    return steady(timer.times, args.warmup)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    dm = EmbeddedMNISTDataModule(batch_size=args.batch_size)
    dm.setup("fit")
    batches = []
    for batch in dm.train_dataloader():  # fixed list: both sides see the very same tensors
        batches.append(batch)
        if len(batches) == args.steps:
            break
    mean, std = torch.tensor(dm.mean).view(-1, 1, 1), torch.tensor(dm.std).view(-1, 1, 1)
    init = create_model(args.model, num_classes=10, in_chans=dm.in_chans)

    raw, lit = [], []
    for _ in range(args.repeats):
        raw.append(raw_loop(copy.deepcopy(init), batches, mean, std, args))
        lit.append(lightning_fit(copy.deepcopy(init), batches, mean, std, args))
    r, li = statistics.median(raw), statistics.median(lit)
    print(
        f"model {args.model}, batch {args.batch_size}, {args.steps} steps x {args.repeats} repeats, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"raw PyTorch loop      {1000 * r:8.2f} ms/step  (runs: {', '.join(f'{1000 * t:.1f}' for t in raw)})"
    )
    print(
        f"research (Lightning)  {1000 * li:8.2f} ms/step  (runs: {', '.join(f'{1000 * t:.1f}' for t in lit)})"
    )
    print(f"ratio lightning/raw   {li / r:8.3f}x  (goal <= 1.05)")


if __name__ == "__main__":
    main()

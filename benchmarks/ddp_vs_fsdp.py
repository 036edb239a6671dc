"""Sharded (FSDP2) vs replicated (DDP) data parallelism: train step time at 2 processes, as a ratio in one run.

    python benchmarks/ddp_vs_fsdp.py [--model vit_tiny_patch4_32] [--batch-size 32] [--steps 20] [--repeats 2]

Two CPU processes over gloo (``accelerator="cpu", devices=2``; on a machine with 2+ GPUs, ``--accelerator gpu``
runs them over NCCL). Lightning starts the second process by re-running this command, and both
strategies are timed in the same pair of processes, alternately ``--repeats`` times: the same task
(:class:`~research.tasks.ImageClassification`), synthetic 32x32 images, AdamW, seed. FSDP2 is
:class:`research.tasks.sharding.FSDP2Strategy` (one unit per transformer block, then the root); each step
then all-gathers every unit's weights in the forward and again in the backward and reduce-scatters
the gradients, where DDP all-reduces the gradients once. Steady-state time per step is taken after the
first ``--warmup`` steps; the medians are compared. Also printed: the parameters one process holds
(FSDP2: its shard; the AdamW moments follow them).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.distributed.tensor import DTensor

from research.data import SyntheticDataModule
from research.tasks import ImageClassification
from research.tasks.sharding import FSDP2Strategy


class StepTimes(Callback):
    """Wall-clock time at every step's start and at the end of training; the bytes of parameters one process holds."""

    def __init__(self):
        self.times: list[float] = []
        self.local_bytes = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.times.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module):
        self.times.append(time.perf_counter())
        local = [p.to_local() if isinstance(p, DTensor) else p for p in pl_module.parameters()]
        self.local_bytes = sum(p.numel() * p.element_size() for p in local)


def steady(times: list[float], warmup: int) -> float:
    """Seconds per step after the warm-up steps."""
    return (times[-1] - times[warmup]) / (len(times) - 1 - warmup)


def time_fit(strategy, args, root: str) -> tuple[float, int]:
    L.seed_everything(0)
    task = ImageClassification({"name": args.model, "num_classes": 10},
                               optim={"name": "adamw", "lr": 1e-3, "schedule": "constant"})
    data = SyntheticDataModule(num_samples=4 * args.batch_size * args.steps, num_classes=10,
                               img_size=32, in_chans=3, batch_size=args.batch_size)
    probe = StepTimes()
    trainer = L.Trainer(accelerator=args.accelerator, devices=2, strategy=strategy, max_steps=args.steps,
                        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[probe],
                        default_root_dir=root)
    trainer.fit(task, datamodule=data)
    return steady(probe.times, args.warmup), probe.local_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_tiny_patch4_32")
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--accelerator", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))  # the processes share the cores
    times: dict[str, list[float]] = {"ddp": [], "fsdp2": []}
    memory: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as root:
        for _ in range(args.repeats):
            for name in times:
                strategy = "ddp" if name == "ddp" else FSDP2Strategy()
                seconds, memory[name] = time_fit(strategy, args, root)
                times[name].append(seconds)
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:
        ddp, fsdp = statistics.median(times["ddp"]), statistics.median(times["fsdp2"])
        print(f"{args.model}, batch {args.batch_size} per process, 2 processes ({args.accelerator}), "
              f"{torch.get_num_threads()} threads each")
        for name, median in (("ddp", ddp), ("fsdp2", fsdp)):
            print(f"  {name:6s} {1000 * median:7.1f} ms/step   parameters per process {memory[name] / 2**20:6.2f} MiB"
                  f"   (runs: {', '.join(f'{1000 * t:.1f}' for t in times[name])})")
        print(f"  FSDP2 / DDP: step time {fsdp / ddp:.2f}, parameters held {memory['fsdp2'] / memory['ddp']:.2f}")


if __name__ == "__main__":
    main()

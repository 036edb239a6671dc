"""What tests/test_multinode.py and tests/test_slurm_requeue.py add to ``python -m research fit``: callbacks, tiny runs.

The runs import the callbacks by name (``--trainer.callbacks+ cluster_callbacks.SaveWeights``): the tests
put tests/ on their ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


def tiny_run(num_samples: int, max_epochs: int) -> list[str]:
    """Arguments after configs/resnet/mnist_resnet20.yaml for a quick CPU run: ResNet-20 on 16 px synthetic images.

    Batches of 16, one validation batch, no logger, progress bar, summary or test after fit.
    """
    return [
        "--data", "research.data.SyntheticDataModule", "--data.num_samples", str(num_samples),
        "--data.num_classes", "4", "--data.img_size", "16", "--data.batch_size", "16", "--data.in_chans", "1",
        "--model.model", '{"name": "resnet20", "num_classes": 4, "in_chans": 1}',
        "--trainer.max_epochs", str(max_epochs), "--trainer.limit_val_batches", "1", "--trainer.logger", "false",
        "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--test_after_fit", "false",
    ]


def free_port() -> int:
    """A TCP port free on localhost now: each run's MASTER_PORT, so that runs side by side do not collide."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SaveWeights(Callback):
    """Every rank writes its task's ``state_dict`` to ``<dirpath>/rank<global rank>.pt`` when fit ends.

    Lightning's checkpoints are written by global rank 0 only; this shows what every rank holds.
    """

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        torch.save(pl_module.state_dict(), self.dirpath / f"rank{trainer.global_rank}.pt")


class WaitForSignal(Callback):
    """At the end of training step ``step``, write this process's id to ``marker`` and wait for an hpc checkpoint.

    The test sends SIGUSR1 to that process when the marker appears, so the signal lands at a known
    step (a real preemption lands anywhere); Python runs Lightning's handler during the sleep, and the
    wait ends once the handler has written ``hpc_ckpt_*.ckpt``.
    """

    def __init__(self, step: int, marker: str, timeout: float = 60.0):
        self.step, self.marker, self.timeout = step, Path(marker), timeout

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if trainer.global_step != self.step:
            return
        self.marker.write_text(str(os.getpid()))
        deadline = time.monotonic() + self.timeout
        while not list(Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt")):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no SIGUSR1 (no hpc checkpoint) within {self.timeout} s of step {self.step}")
            time.sleep(0.05)


class SignalAt(Callback):
    """At the end of training step ``step``, send SIGUSR1 to this process (SLURM's warning, in-process)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)  # Python runs Lightning's handler before the next line

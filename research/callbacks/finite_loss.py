"""Stop a run the moment its loss stops being a number, before any checkpoint of that state is written."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from research.errors import UserError


class NonFiniteLoss(UserError):
    """The loss became NaN or inf; ``name``, ``value``, ``epoch`` and ``step`` say where."""

    def __init__(self, message: str, *, name: str, value: float, epoch: int, step: int) -> None:
        super().__init__(message)
        self.name, self.value, self.epoch, self.step = name, value, epoch, step


def _value(x: Any) -> float | None:
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        return float(x.detach())
    if isinstance(x, int | float) and not isinstance(x, bool):
        return float(x)
    return None


def _shown(path: str) -> str:
    """``path`` relative to the working directory when it is under it (as the user typed the run)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path


class FiniteLoss(Callback):
    """Raise a one-line :class:`NonFiniteLoss` as soon as a loss is NaN or inf.

    Checked after every training batch (the loss ``training_step`` returned and every logged
    ``train*`` metric whose name contains "loss", e.g. a GAN's ``train/d_loss``) and after every
    validation (the ``val*`` metrics whose name contains "loss"). The error names the metric, its
    value, the epoch and the global step, and suggests a lower learning rate or gradient clipping.

    Raising (rather than setting ``trainer.should_stop``) is what keeps the last good checkpoint the
    last good one: Lightning runs ModelCheckpoint after every other callback and skips all saving when
    a hook raises, so neither ``last.ckpt`` nor a "best" checkpoint is ever written from the diverged
    weights. Lightning's ``EarlyStopping(check_finite=True)`` is not enough: it looks at a single
    monitored metric and only when validation ends (a run can train a whole epoch on NaN first), and it
    stops gracefully, after which ModelCheckpoint writes ``last.ckpt`` of the NaN state at the end of
    training, the state a ``--ckpt_path last`` would then resume.
    """

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        values = self._logged(trainer, "train")
        values["the training loss (what training_step returned)"] = _value(loss)
        self._check(trainer, pl_module, values, f"training batch {batch_idx} of epoch {trainer.current_epoch}")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._check(trainer, pl_module, self._logged(trainer, "val"), f"validation after epoch {trainer.current_epoch}")

    @staticmethod
    def _logged(trainer: L.Trainer, stage: str) -> dict[str, float | None]:
        return {name: _value(v) for name, v in trainer.callback_metrics.items()
                if name.startswith(stage) and "loss" in name.rsplit("/", 1)[-1]}

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule, values: dict[str, float | None],
               where: str) -> None:
        bad = next(((name, v) for name, v in values.items() if v is not None and not math.isfinite(v)), None)
        if bad is None:
            return
        name, value = bad
        raise NonFiniteLoss(self._message(trainer, pl_module, name, value, where), name=name, value=value,
                            epoch=trainer.current_epoch, step=trainer.global_step)

    @staticmethod
    def _message(trainer: L.Trainer, pl_module: L.LightningModule, name: str, value: float, where: str) -> str:
        lrs = sorted({group["lr"] for opt in trainer.optimizers for group in opt.param_groups})
        lr = f" (now {', '.join(f'{x:g}' for x in lrs)})" if lrs else ""
        clip = " or gradient clipping (--trainer.gradient_clip_val 1.0)" if pl_module.automatic_optimization else ""
        checkpoint = trainer.checkpoint_callback
        last = getattr(checkpoint, "last_model_path", "") if checkpoint is not None else ""
        kept = f"{_shown(last)} keeps the last good state" if last else "no checkpoint was written"
        return (f"{name} became {value} at {where} (global step {trainer.global_step}); training stopped and "
                f"{kept}; try a lower learning rate{lr}{clip}, and check the data for NaN or inf")

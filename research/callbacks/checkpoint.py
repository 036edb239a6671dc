"""What a run leaves on disk names exactly the state it claims: ``last.ckpt``, ``best``, ``config.yaml``.

- :class:`ModelCheckpoint` is Lightning's, except that ``last.ckpt`` is rewritten at every save point
  and at the end of training. Since Lightning 2.6, ``ModelCheckpoint(save_last=True, monitor=...)``
  rewrites ``last.ckpt`` only in a step where a top-k checkpoint is also saved, so a run whose best
  epoch is its first leaves ``last.ckpt`` at that epoch (tests/test_checkpoints.py pins both).
- :func:`best_checkpoint` finds the best checkpoint of a run on disk, in any later process, from the
  record that ``last.ckpt`` keeps (Lightning's ``ckpt_path="best"`` only knows the current process).
- :class:`AtomicCheckpointIO` writes each checkpoint to a temporary file in its own folder and moves
  it into place, so a kill or a full disk during a save leaves the previous file whole.
- :class:`RunIdentity` stores the loggers' run ids in each checkpoint, so that a resumed run continues
  the same wandb run and CSV version instead of starting new ones.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks import ModelCheckpoint as _LightningModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from research.checkpoint_file import load_checkpoint
from research.errors import UserError

LAST = "last.ckpt"
RUN_KEY = "research_run"  # where RunIdentity puts the loggers' ids in a checkpoint


class ModelCheckpoint(_LightningModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` always holds the latest save point.

    Same arguments as Lightning's. With ``save_last=True``, ``last.ckpt`` is written at every save
    point (each epoch's end by default, whether or not a top-k checkpoint was saved there) and once
    more when training ends, so it holds the final step of the run and resumes exactly from there.
    ``enable_version_counter`` defaults to False: a new run into the same folder replaces
    ``last.ckpt`` instead of writing ``last-v1.ckpt`` beside a stale one.
    """

    def __init__(self, *args: Any, enable_version_counter: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, enable_version_counter=enable_version_counter, **kwargs)
        self._last_written_step = -1
        self.resuming = False  # set by the fit command for --ckpt_path: the folder is expected to hold checkpoints

    def _ModelCheckpoint__warn_if_dir_not_empty(self, dirpath: Any) -> None:  # noqa: N802  (Lightning's private name)
        """Lightning's "Checkpoint directory ... exists and is not empty", except on a resume, which expects it."""
        if not self.resuming:
            super()._ModelCheckpoint__warn_if_dir_not_empty(dirpath)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and self.dirpath and trainer.is_global_zero and "://" not in str(self.dirpath):
            check_writable(Path(self.dirpath))

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_written_step = trainer.global_step

    def _catch_up_last(self, trainer: L.Trainer) -> None:
        stale = self.save_last and self._last_written_step != trainer.global_step
        if stale and not self._should_skip_saving_checkpoint_but_last(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _should_skip_saving_checkpoint_but_last(self, trainer: L.Trainer) -> bool:
        from lightning.pytorch.trainer.states import TrainerFn

        return bool(trainer.fast_dev_run) or trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking

    def _at_epoch_save_point(self, trainer: L.Trainer) -> bool:
        return self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer) and self._at_epoch_save_point(trainer):
            self._catch_up_last(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer) and self._at_epoch_save_point(trainer):
            self._catch_up_last(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        # The run can stop between save points (max_steps mid-epoch, validation every n epochs).
        self._catch_up_last(trainer)


def check_writable(folder: Path) -> None:
    """Stop before the first step when checkpoints cannot be written to ``folder`` (not after an epoch).

    Raises:
        UserError: the folder cannot be created or a file cannot be written in it.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UserError(
            f"cannot write checkpoints to {folder} ({err.strerror or err}); make it writable or choose another "
            "folder (--experiment NAME writes to checkpoints/NAME)"
        ) from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, except that a checkpoint appears whole or not at all.

    The file is written to a temporary file in the same folder (so the move never crosses a
    filesystem), flushed to disk, and moved over the old one with ``os.replace``; on any failure
    the temporary file is removed and the old checkpoint is left as it was. Lightning's own writer
    stages through fsspec's temporary folder, which may be on another filesystem: a kill during
    that copy leaves a truncated or empty ``last.ckpt``.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint as a dict, memory-mapped and with ``weights_only=True`` (no code runs).

    Raises:
        UserError: the file is not a checkpoint (see :func:`research.checkpoint_file.load_checkpoint`).
    """
    return load_checkpoint(path, lightning=True, mmap=True)


def best_checkpoint(dirpath: str | Path) -> Path:
    """The best checkpoint of the run whose ``last.ckpt`` is in ``dirpath``.

    ``last.ckpt`` carries its ModelCheckpoint's record of the best checkpoint of the same run, so
    stale ``best-*.ckpt`` files of older runs in the folder are never picked.

    Raises:
        FileNotFoundError: ``dirpath`` holds no ``last.ckpt``, the run recorded no best checkpoint
            (no monitored metric), or the recorded file is gone.
    """
    dirpath = Path(dirpath)
    last = dirpath / LAST
    if not last.is_file():
        raise FileNotFoundError(
            f"no {LAST} under {dirpath}/, so no best checkpoint is known: train first (python -m research fit "
            "--config ...) or check --experiment; a checkpoint file can also be given as --ckpt_path PATH"
        )
    states = read_checkpoint(last).get("callbacks", {})
    recorded = [
        state["best_model_path"]
        for key, state in states.items()
        if key.startswith("ModelCheckpoint") and isinstance(state, dict) and state.get("best_model_path")
    ]
    if not recorded:
        raise FileNotFoundError(
            f"the run in {dirpath}/ recorded no best checkpoint (it monitors no metric); use --ckpt_path last"
        )
    best = Path(recorded[0])
    for candidate in (best, dirpath / best.name):  # recorded relative to the run's working directory
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"the best checkpoint of the run in {dirpath}/, {best.name}, is missing from disk")


class RunIdentity(Callback):
    """Keep the loggers' run ids in every checkpoint (``checkpoint["research_run"]``).

    ``python -m research fit --ckpt_path ...`` reads them back with :func:`logger_ids` and
    continues the same wandb run and the same CSV ``version_N`` folder.
    """

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        ids: dict[str, Any] = {}
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                ids["wandb"] = str(logger.version)
            elif isinstance(logger, CSVLogger):
                ids["csv"] = logger.version
        checkpoint[RUN_KEY] = {**ids, "step": trainer.global_step}


def logger_ids(ckpt_path: str | Path) -> dict[str, Any]:
    """The loggers' run ids and the global step that :class:`RunIdentity` stored in a checkpoint ({} if none)."""
    return dict(read_checkpoint(ckpt_path).get(RUN_KEY, {}))

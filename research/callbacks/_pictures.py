"""Where the picture callbacks put their PNGs, and how they reach wandb."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger


def run_folder(trainer: L.Trainer, dirpath: Path | None = None) -> Path:
    """``dirpath`` if given, else the first logger's folder, else the trainer's root folder."""
    if dirpath is not None:
        return Path(dirpath)
    # Not trainer.log_dir: it broadcasts, and only rank 0 gets here. WandbLogger has no log_dir.
    for logger in trainer.loggers:
        folder = getattr(logger, "log_dir", None)
        if folder:
            return Path(folder)
    return Path(trainer.default_root_dir)


def log_picture(trainer: L.Trainer, path: Path, *, key: str, caption: str | None = None) -> None:
    """Send the PNG at ``path`` to every wandb logger under ``key``, at the current step."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            extra = {} if caption is None else {"caption": [caption]}
            logger.log_image(key=key, images=[str(path)], step=trainer.global_step, **extra)

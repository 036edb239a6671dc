"""Loggers with what Lightning's lack: a resumed CSV log, a wandb run that starts without noise and never prompts."""

from __future__ import annotations

import csv
import netrc
import os
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger

LOG_ROOT = Path("logs")  # where runs log: logs/wandb, logs/csv/<experiment>/


def wandb_mode() -> str:
    """'online' only when the user is logged in; WANDB_MODE always wins; otherwise 'offline' (never prompts)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError):
        pass
    return "offline"


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger, without the two warnings its defaults make wandb print at every start.

    - "The anonymous setting has no effect": Lightning always passes ``anonymous`` to ``wandb.init``
      (None unless asked), and wandb >= 0.19 warns whenever the setting is given at all. It is passed
      only when ``anonymous=True`` is asked for.
    - "git root logs does not exist": wandb looks for the git repository from the run's folder
      (``save_dir``), which does not exist before the first run; it is created first, so wandb also
      records the commit of the code that ran.
    """

    def __init__(self, *args: Any, anonymous: bool | None = None, **kwargs: Any) -> None:
        super().__init__(*args, anonymous=anonymous, **kwargs)
        if not anonymous:
            self._wandb_init.pop("anonymous", None)
        folder = self._wandb_init.get("dir")
        if folder and "://" not in str(folder):
            Path(folder).mkdir(parents=True, exist_ok=True)


class ContinuedCSVLogger(CSVLogger):
    """Lightning's CSVLogger, except that writing into an existing version keeps its metrics.csv.

    Lightning's writer deletes an existing metrics.csv; a resumed run appends to it instead, after
    dropping the rows of steps that the resumed run will log again.
    """

    def __init__(self, *args: Any, resume_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step  # the global step of the checkpoint the run resumes from

    @property
    def experiment(self):
        if self._experiment is not None:
            return self._experiment
        path = Path(self.log_dir) / "metrics.csv"
        kept: list[dict[str, str]] = []
        if path.is_file():
            with path.open(newline="") as file:
                rows = list(csv.DictReader(file))
            limit = self.resume_step if self.resume_step is not None else float("inf")
            kept = [row for row in rows if row.get("step", "") == "" or int(float(row["step"])) <= limit]
            path.rename(path.with_suffix(".csv.previous"))  # Lightning's writer would delete it
        with warnings.catch_warnings():
            # Lightning warns that "previous log files ... will be deleted": not so here, they are kept above.
            warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
            writer = super().experiment
        previous = path.with_suffix(".csv.previous")
        if previous.exists():
            keys = sorted({key for row in kept for key in row})
            with path.open("w", newline="") as file:
                out = csv.DictWriter(file, fieldnames=keys)
                out.writeheader()
                out.writerows(kept)
            writer.metrics_keys = keys
            previous.unlink()
        return writer

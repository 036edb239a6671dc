"""``python -m research.fit``: LightningCLI over every task x every datamodule.

    python -m research.fit fit --config configs/resnet/mnist_resnet20.yaml
    python -m research.fit fit --config configs/resnet/mnist_resnet20.yaml --trainer.max_epochs 2
    python -m research.fit test --config configs/resnet/mnist_resnet20.yaml --ckpt_path best
    python -m research.fit fit --config configs/resnet/mnist_resnet20.yaml --ckpt_path last   # resume

A config file holds the constructor arguments of a task (``model:``), a datamodule (``data:``) and
the Trainer (``trainer:``). Unless the config says otherwise a run gets: a wandb logger (offline
unless you are logged in or set WANDB_MODE; it never prompts) and a CSV logger under logs/,
checkpoints (best and last) under checkpoints/<experiment>/, a rich progress bar, a learning-rate
monitor, and RNG states in its checkpoints so that ``--ckpt_path last`` resumes exactly.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import (
    Callback,
    LearningRateMonitor,
    ModelCheckpoint,
    ProgressBar,
    RichProgressBar,
)
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.utilities.model_helpers import is_overridden

import research.data  # noqa: F401  (makes the datamodules known by their short names)
import research.tasks  # noqa: F401  (makes the tasks known by their short names)
from research.callbacks import RNGState

CHECKPOINT_ROOT = Path("checkpoints")
LOG_ROOT = Path("logs")


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


def default_loggers(experiment: str) -> list[Logger]:
    run_name = experiment.replace("/", "-")
    return [
        WandbLogger(project="research", name=run_name, save_dir=str(LOG_ROOT), mode=wandb_mode()),
        CSVLogger(save_dir=str(LOG_ROOT / "csv"), name=experiment),
    ]


def default_callbacks(
    experiment: str, task: L.LightningModule, given: list[Callback], logging: bool
) -> list[Callback]:
    """Ours, minus any kind the config already set."""
    monitor, mode = getattr(task, "checkpoint_monitor", (None, "min"))
    defaults: list[Callback] = [
        ModelCheckpoint(
            dirpath=CHECKPOINT_ROOT / experiment,
            filename="best-{epoch}-{step}",
            monitor=monitor,
            mode=mode,
            save_last=True,
        ),
        RichProgressBar(),
        RNGState(),
    ]
    if logging:
        defaults.append(LearningRateMonitor(logging_interval="step"))

    def covered(default: Callback) -> bool:
        kind = ProgressBar if isinstance(default, ProgressBar) else type(default)
        return any(isinstance(c, kind) for c in given)

    return [*given, *(c for c in defaults if not covered(c))]


class ResearchCLI(LightningCLI):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(
            L.LightningModule,
            L.LightningDataModule,
            *args,
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="after fit, evaluate the best checkpoint on the test split",
        )
        parser.add_argument(
            "--experiment",
            type=str | None,
            default=None,
            help="run name for checkpoints/<experiment>/ and the loggers; default: the config's <family>/<name>",
        )

    def after_fit(self) -> None:
        """Test the best checkpoint at the end of ``fit`` when the datamodule has a test split."""
        if not self._get(self.config, "test_after_fit", default=True):
            return
        if (
            self.datamodule is None
            or not is_overridden("test_dataloader", self.datamodule)
            or self.trainer.interrupted
        ):
            return
        best = (
            getattr(self.trainer.checkpoint_callback, "best_model_path", "")
            if not self.trainer.fast_dev_run
            else ""
        )
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)

    def experiment_name(self) -> str:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("experiment"):
            return config["experiment"]
        files = config.get("config") or []
        if files:
            path = Path(str(files[-1])).with_suffix("")
            parts = path.parts
            return "/".join(parts[parts.index("configs") + 1 :]) if "configs" in parts else path.name
        return f"{type(self.model).__name__}-{type(self.datamodule).__name__}".lower()

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer_config = self._get(self.config_init, "trainer", default={})
        experiment = self.experiment_name()
        if trainer_config.get("logger") in (None, True):
            kwargs["logger"] = default_loggers(experiment)
        logging = trainer_config.get("logger") is not False
        if trainer_config.get("default_root_dir") is None:  # without loggers, config.yaml goes beside the checkpoints
            kwargs["default_root_dir"] = str(CHECKPOINT_ROOT / experiment)
        given = trainer_config.get("callbacks") or []
        kwargs["callbacks"] = default_callbacks(experiment, self.model, list(given), logging)
        if trainer_config.get("enable_progress_bar") is False:
            kwargs["callbacks"] = [c for c in kwargs["callbacks"] if not isinstance(c, ProgressBar)]
        return super().instantiate_trainer(**kwargs)


def main(args: list[str] | None = None, run: bool = True) -> ResearchCLI:
    return ResearchCLI(args=args, run=run)


if __name__ == "__main__":
    main()

"""``python -m research fit|validate|test|predict``: LightningCLI over every task x every datamodule.

    python -m research fit --config configs/resnet/mnist_resnet20.yaml
    python -m research fit --config configs/resnet/mnist_resnet20.yaml --trainer.max_epochs 2
    python -m research fit --config configs/resnet/mnist_resnet20.yaml --ckpt_path last   # resume
    python -m research test --config configs/resnet/mnist_resnet20.yaml --ckpt_path best

A config file holds the constructor arguments of a task (``model:``), a datamodule (``data:``) and
the Trainer (``trainer:``). Unless the config says otherwise a run gets: a wandb logger (offline
unless you are logged in or set WANDB_MODE; it never prompts) and a CSV logger under logs/,
checkpoints (best and last) under checkpoints/<experiment>/ with the run's resolved config.yaml beside
them, a rich progress bar, a learning-rate monitor, a stop at the first NaN or inf loss (the last good
checkpoint stays the last one), and RNG states in its checkpoints so that
``--ckpt_path last`` resumes exactly from a checkpoint written at an epoch's end (and continues the same
wandb run and CSV version); from one written mid-epoch, that epoch's batches start again (our loaders
do not resume mid-epoch; docs/guide.md).

``--ckpt_path last`` and ``--ckpt_path best`` name files of checkpoints/<experiment>/: ``last.ckpt`` (the
final step of the latest run, see :class:`research.callbacks.ModelCheckpoint`) and the best checkpoint
that run recorded; either one missing is an error, never a silent start from scratch.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Literal

import jsonargparse
import lightning as L
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ProgressBar, RichProgressBar
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.callbacks import ModelSummary as LightningModelSummary
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.model_helpers import is_overridden

import research.data  # noqa: F401  (makes the datamodules known by their short names)
import research.tasks  # noqa: F401  (makes the tasks known by their short names)
from research.callbacks import FiniteLoss, RNGState
from research.callbacks.checkpoint import (
    LAST,
    AtomicCheckpointIO,
    ModelCheckpoint,
    RunIdentity,
    best_checkpoint,
    logger_ids,
)
from research.callbacks.summary import ModelSummary
from research.checkpoint_file import load_checkpoint
from research.config_file import config_files, read_config_file
from research.errors import UserError
from research.loggers import LOG_ROOT, ContinuedCSVLogger, WandbLogger, wandb_mode
from research.quiet import silence_known_noise
from research.tasks.base import clear_weight_sources

CHECKPOINT_ROOT = Path("checkpoints")
# Write None values into a saved config (jsonargparse 4.49 renamed skip_none to skip_unset and warns at the old name).
_RENAMED = tuple(map(int, jsonargparse.__version__.split(".")[:2])) >= (4, 49)
KEEP_NONE = {"skip_unset" if _RENAMED else "skip_none": False}


def default_loggers(experiment: str, resume: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The wandb and CSV loggers as config entries; ``resume`` (what :class:`RunIdentity` stored) continues them."""
    resume = resume or {}
    wandb_resume = {"id": resume["wandb"], "resume": "allow"} if "wandb" in resume else {}
    wandb = {"project": "research", "name": experiment.replace("/", "-"), "save_dir": str(LOG_ROOT),
             "mode": wandb_mode(), **wandb_resume}
    csv_args = {"save_dir": str(LOG_ROOT / "csv"), "name": experiment, "version": resume.get("csv"),
                "resume_step": resume.get("step")}
    return [spec(WandbLogger, wandb), spec(ContinuedCSVLogger, csv_args)]


def spec(cls: type, init_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """A class and its arguments as a config entry (what ``--print_config`` prints and a config file holds)."""
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(init_args or {})}


def entry_class(entry: dict[str, Any]) -> type:
    """The class a :func:`spec` entry names."""
    module, _, name = entry["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)


def build(entry: dict[str, Any]) -> Any:
    """Instantiate a :func:`spec` entry."""
    return entry_class(entry)(**entry["init_args"])


def drop_weight_sources(model: Any) -> None:
    """Set to None, in a task's config entry, the files its weights would start from.

    :func:`research.tasks.base.clear_weight_sources`, as ``Task.on_save_checkpoint`` does to a checkpoint.
    """
    if model is not None and model.get("class_path") and model.get("init_args") is not None:
        clear_weight_sources(entry_class(model), model["init_args"])


def default_callbacks(experiment: str, monitor: str | None, mode: str, logging: bool) -> list[dict[str, Any]]:
    """Our callbacks as config entries: checkpoints, progress bar, model summary, RNG states, run ids, NaN stop, lr.

    The NaN stop is :class:`research.callbacks.FiniteLoss`: a NaN or inf loss ends the run at once.
    """
    checkpoint = {"dirpath": str(CHECKPOINT_ROOT / experiment), "filename": "best-{epoch}-{step}",
                  "monitor": monitor, "mode": mode, "save_last": True}
    defaults = [spec(ModelCheckpoint, checkpoint), spec(RichProgressBar), spec(ModelSummary), spec(RNGState),
                spec(RunIdentity), spec(FiniteLoss)]
    if logging:
        defaults.append(spec(LearningRateMonitor, {"logging_interval": "step"}))
    return defaults


def covered(entry: dict[str, Any], given: list[Callback]) -> bool:
    """Whether a callback the config already set does the default's job (any progress bar, any checkpointing)."""
    cls = entry_class(entry)
    kind = next((k for k in (ProgressBar, LightningModelCheckpoint, LightningModelSummary) if issubclass(cls, k)), cls)
    return any(isinstance(c, kind) for c in given)


class SaveRunConfig(SaveConfigCallback):
    """Write a fit's resolved config to ``config.yaml`` beside its checkpoints (not one shared logs/ file).

    Only ``fit`` writes it (a later ``test`` of the same experiment must not replace the config of the
    run that made the checkpoints), at the start of fit: after ModelCheckpoint has looked at its folder.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        pass

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.already_saved:
            return
        folder = run_folder(trainer)
        if trainer.is_global_zero:
            folder.mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, str(folder / self.config_filename), **KEEP_NONE, overwrite=True,
                             multifile=self.multifile)
            self.save_config(trainer, pl_module, "fit")
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)


def run_folder(trainer: L.Trainer) -> Path:
    """Where a run's checkpoints go: its ModelCheckpoint's folder, else the Trainer's root folder."""
    callback = trainer.checkpoint_callback
    dirpath = getattr(callback, "dirpath", None) if callback is not None else None
    return Path(dirpath) if dirpath else Path(trainer.default_root_dir)


def check_run_length(trainer_config: dict[str, Any]) -> None:
    """Stop before training when the Trainer's limits leave nothing to train.

    Raises:
        UserError: ``max_epochs: 0`` or ``max_steps: 0`` (Lightning would train nothing and exit 0).
    """
    if trainer_config.get("fast_dev_run"):
        return
    for key, other in (("max_epochs", "-1 with max_steps N for a run bounded by steps"),
                       ("max_steps", "-1 for no step limit")):
        if trainer_config.get(key) == 0:
            raise UserError(f"--trainer.{key} 0 trains nothing; give at least 1 (or {other})")


class ResearchCLI(LightningCLI):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("save_config_callback", SaveRunConfig)
        self.ckpt_path: str | None = None  # the checkpoint the subcommand reads, "last"/"best" resolved
        self.print_config = False
        super().__init__(
            L.LightningModule,
            L.LightningDataModule,
            *args,
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            **kwargs,
        )

    def init_parser(self, **kwargs: Any):
        # A parse error raises (research.errors prints it as one line) instead of printing the usage.
        kwargs.setdefault("exit_on_error", False)
        return super().init_parser(**kwargs)

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
        parser.add_argument(
            "--monitor",
            type=str | None,
            default=None,
            help="the logged metric that picks the best checkpoint, e.g. val/robust_acc (robust model selection, "
            "Rice et al. 2020); default: the task's (val/acc for classification)",
        )
        parser.add_argument(
            "--monitor_mode",
            type=Literal["min", "max"] | None,
            default=None,
            help="whether --monitor is best when largest (max) or smallest (min); default: max for accuracies and "
            "BLEU, min for losses",
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
        files = [str(file) for file in config.get("config") or []]
        # the run's own config, not a trainer snippet after it (configs/strategies/, configs/trainer/)
        runs = [file for file in files if Path(file).is_file() and "model" in read_config_file(file)]
        if files:
            path = Path((runs or files)[-1]).with_suffix("")
            parts = path.parts
            return "/".join(parts[parts.index("configs") + 1 :]) if "configs" in parts else path.name
        return f"{type(self.model).__name__}-{type(self.datamodule).__name__}".lower()

    def checkpoint_monitor(self, callbacks: list[Callback]) -> tuple[str | None, str]:
        """The metric and mode of the best checkpoint: ``--monitor`` (``--monitor_mode``), else the task's.

        Raises:
            UserError: a monitor whose mode cannot be told from its name, or a robust accuracy
                without the RobustEvaluation callback that logs it (caught before the first step).
        """
        config = self.config[self.subcommand] if self.subcommand else self.config
        monitor, mode = config.get("monitor"), config.get("monitor_mode")
        if not monitor:
            return getattr(self.model, "checkpoint_monitor", (None, "min"))
        if mode is None:
            name = monitor.rsplit("/", 1)[-1]
            mode = "max" if "acc" in name or "bleu" in name else "min" if "loss" in name else None
            if mode is None:
                raise UserError(
                    f"--monitor {monitor}: is it best when largest or smallest? add --monitor_mode max (or min)"
                )
        if "robust_acc" in monitor and not any(type(c).__name__ == "RobustEvaluation" for c in callbacks):
            raise UserError(
                f"--monitor {monitor} is logged by the RobustEvaluation callback, which this config does not have: "
                "add research.callbacks.RobustEvaluation to trainer.callbacks, or monitor another metric"
            )
        return monitor, mode

    def checkpoint_folder(self) -> Path:
        """checkpoints/<experiment>/, or the folder of a ModelCheckpoint that the config sets."""
        given = self._get(self.config_init, "trainer", default={}).get("callbacks") or []
        for callback in given:
            if isinstance(callback, LightningModelCheckpoint) and callback.dirpath:
                return Path(callback.dirpath)
        return CHECKPOINT_ROOT / self.experiment_name()

    def resolve_ckpt_path(self) -> str | None:
        """``last`` (the newer of last.ckpt and SLURM's hpc_ckpt_<n>.ckpt) and ``best`` as files of the run's folder."""
        ckpt_path = self._get(self.config, "ckpt_path") if self.subcommand else None
        if ckpt_path == "best":
            return str(best_checkpoint(self.checkpoint_folder()))
        if ckpt_path == "last":
            folder = self.checkpoint_folder()
            # last.ckpt, or the checkpoint Lightning writes on SLURM's preemption signal (hpc_ckpt_<n>.ckpt, in the
            # same folder) when that is newer: a requeued job resumes with --ckpt_path last, as Lightning's own "last".
            found = [path for path in (folder / LAST, *folder.glob("hpc_ckpt_*.ckpt")) if path.is_file()]
            if not found:
                raise FileNotFoundError(
                    f"--ckpt_path last: there is no {folder / LAST}, so there is nothing to resume or load. Check "
                    "--experiment (the default is the config's <family>/<name>), give a checkpoint file as "
                    "--ckpt_path PATH, or drop --ckpt_path to start from scratch"
                )
            return str(max(found, key=lambda path: path.stat().st_mtime_ns))
        return ckpt_path

    #: the task's weights come from a checkpoint (``--ckpt_path``, or always, as for research.commands.load)
    weights_from_checkpoint = False

    def before_instantiate_classes(self) -> None:
        """With ``--ckpt_path`` the checkpoint holds every weight: the files a model would start from are not read.

        A fine-tuned classifier is tested, resumed or attacked from its own checkpoint even when the
        pre-trained checkpoint its config names has moved (:func:`drop_weight_sources`).
        """
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.weights_from_checkpoint or config.get("ckpt_path"):
            drop_weight_sources(config.get("model"))

    def _parse_ckpt_path(self) -> None:
        """As Lightning's (which reads the checkpoint's hyperparameters), after checking that the file is one."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and Path(ckpt_path).is_file():
            load_checkpoint(ckpt_path, what="--ckpt_path", lightning=True, mmap=True)
        super()._parse_ckpt_path()

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if "ckpt_path" in kwargs:
            kwargs["ckpt_path"] = self.ckpt_path
        return kwargs

    def parse_arguments(self, parser, args) -> None:
        """As Lightning's, except that ``--print_config`` prints the config that runs, our defaults filled in."""
        if isinstance(args, dict):
            return super().parse_arguments(parser, args)
        argv = list(sys.argv[1:] if args is None else args)
        flags = [a for a in argv if a == "--print_config" or a.startswith("--print_config=")]
        self.print_config = bool(flags)
        kept = [a for a in argv if a not in flags]
        for file in config_files(kept):
            read_config_file(file)  # an error that names the file, before jsonargparse's
        if args is None and flags:
            sys.argv = [sys.argv[0], *kept]  # parsed from the command line as before, minus the flag
        return super().parse_arguments(parser, kept if args is not None else None)

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer_config = self._get(self.config_init, "trainer", default={})
        if self.subcommand == "fit":
            check_run_length(trainer_config)
        experiment = self.experiment_name()
        self.ckpt_path = self.resolve_ckpt_path()
        resume = logger_ids(self.ckpt_path) if self.subcommand == "fit" and self.ckpt_path else {}
        loggers = default_loggers(experiment, resume) if trainer_config.get("logger") in (None, True) else None
        logging = trainer_config.get("logger") is not False
        given = list(trainer_config.get("callbacks") or [])
        monitor, mode = self.checkpoint_monitor(given)
        callbacks = [c for c in default_callbacks(experiment, monitor, mode, logging) if not covered(c, given)]
        if trainer_config.get("enable_progress_bar") is False:
            callbacks = [c for c in callbacks if not c["class_path"].endswith("ProgressBar")]
        if trainer_config.get("enable_model_summary") is False:
            callbacks = [c for c in callbacks if not c["class_path"].endswith("ModelSummary")]
        if trainer_config.get("default_root_dir") is None:  # without loggers, config.yaml goes beside the checkpoints
            kwargs["default_root_dir"] = str(CHECKPOINT_ROOT / experiment)
        if self.print_config:
            self.print_resolved_config(loggers, callbacks, kwargs.get("default_root_dir"))
        if loggers is not None:
            kwargs["logger"] = [build(entry) for entry in loggers]
        kwargs["callbacks"] = [*given, *(build(entry) for entry in callbacks)]
        for callback in kwargs["callbacks"]:
            if isinstance(callback, ModelCheckpoint):
                callback.resuming = self.subcommand == "fit" and self.ckpt_path is not None
        plugins = trainer_config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):  # checkpoints appear whole or not at all
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        return super().instantiate_trainer(**kwargs)

    def print_resolved_config(self, loggers: list[dict] | None, callbacks: list[dict], root: str | None) -> None:
        """Print the subcommand's config with the loggers and callbacks that run added, then exit."""
        from jsonargparse import Namespace

        config = self.config[self.subcommand] if self.subcommand else self.config
        parser = self._parser(self.subcommand)
        if loggers is not None:
            config["trainer.logger"] = [Namespace(class_path=e["class_path"], init_args=Namespace(**e["init_args"]))
                                        for e in loggers]
        if root is not None:
            config["trainer.default_root_dir"] = root
        given = config.get("trainer.callbacks") or []
        config["trainer.callbacks"] = [*given, *(Namespace(class_path=e["class_path"],
                                                           init_args=Namespace(**e["init_args"])) for e in callbacks)]
        sys.stdout.write(parser.dump(config, **KEEP_NONE, skip_validation=True))
        sys.exit(0)


def main(args: list[str] | None = None, run: bool = True) -> ResearchCLI:
    """Run LightningCLI's subcommand (``fit``, ``validate``, ``test``, ``predict``) given in ``args``.

    ``args`` None reads the command line (``sys.argv[1:]``), as ``python -m research fit ...`` does.
    """
    silence_known_noise()  # here, not at import: importing research.commands.fit changes no global filter
    return ResearchCLI(args=args, run=run)

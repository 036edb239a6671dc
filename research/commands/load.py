"""One way to load a trained run: its config, its checkpoint and overrides -> the task and the datamodule.

The attack and quantize commands and the reproduced tables read a run through :func:`load_run`. The
config is parsed by the same LightningCLI classes as ``python -m research fit`` (so a config that
trains, loads), and overrides are the same command-line arguments as fit's, for the task
(``--model.init_args.NAME VALUE``) and the data (``--data.init_args.NAME VALUE``) alike. The task's
weights and hyperparameters come from the checkpoint, as Lightning's ``load_from_checkpoint`` reads
them; an override of a task argument replaces the checkpoint's value.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

from research.checkpoint_file import load_checkpoint
from research.commands.fit import ResearchCLI
from research.config_file import config_files, read_config_file


@dataclass(frozen=True)
class TrainedRun:
    """A trained run, loaded.

    Attributes:
        task: the checkpoint's task (a LightningModule) in eval mode, on the device asked for.
        datamodule: the config's datamodule, overrides applied; not yet set up.

    """

    task: L.LightningModule
    datamodule: L.LightningDataModule


class _TaskAndData(ResearchCLI):
    """The config's task and datamodule, built as ``python -m research fit`` builds them, without a Trainer."""

    weights_from_checkpoint = True  # load_run loads them: the files the config's model starts from are not read

    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        # a run's own config.yaml (what fit saves beside its checkpoints) also records Trainer.fit's own arguments
        parser.add_argument("--ckpt_path", type=str | None, default=None, help="ignored: load_run is given one")
        parser.add_argument("--weights_only", type=bool | None, default=None, help="ignored: load_run reads weights")

    def parse_arguments(self, parser, args) -> None:
        # ``args`` are given on purpose (not sys.argv): LightningCLI's warning about getting both would be noise.
        for file in config_files(list(args)):
            read_config_file(file)  # an error that names the file, before jsonargparse's
        self.config = parser.parse_args(args)

    def instantiate_trainer(self, **kwargs: Any) -> None:
        return None  # no Trainer: no loggers, checkpoint folders or device set-up


def add_run_arguments(parser: argparse.ArgumentParser, *, seed: str) -> None:
    """The arguments of every command over a trained run: ``--config``, ``--ckpt_path``, ``--seed`` (help: ``seed``).

    Arguments a command does not know are fit's overrides, passed on to :func:`load_run`.
    """
    parser.add_argument("--config", required=True, help="the YAML the checkpoint was trained with")
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by python -m research fit")
    parser.add_argument("--seed", type=int, default=0, help=seed)
    parser.epilog = ("Arguments the command does not know go to the config, as for python -m research fit: "
                     "--data.init_args.NAME VALUE, --model.init_args.NAME VALUE.")


def _task_arguments(overrides: Sequence[str]) -> set[str] | None:
    """The task's constructor arguments that ``overrides`` set (``--model.init_args.optim.lr`` -> ``optim``).

    None when an override replaces the whole task (``--model CLASS`` or ``--model '{...}'``).
    """
    names: set[str] = set()
    for arg in overrides:
        parts = arg.removeprefix("--").split("=", 1)[0].split(".")
        if not arg.startswith("--") or parts[0] != "model":
            continue
        rest = parts[2:] if parts[1:2] == ["init_args"] else parts[1:]
        if not rest:
            return None
        names.add(rest[0])
    return names


def _same_model(saved: Any, described: Any, datamodule: Any) -> bool:
    """Whether a checkpoint's model spec is the one a config describes.

    A checkpoint also records the sizes its data gave (``vocab_size``, ``num_classes``, ...: a
    config may leave them to the datamodule, which must then know the same values) and keeps no
    ``pretrained`` file (``Task.on_save_checkpoint``): neither is a difference. Anything that is not
    a dict (a module, a bare name) is compared as it is.
    """
    if saved is None or described is None:
        return True
    if not (isinstance(saved, dict) and isinstance(described, dict)):
        return saved == described
    from_data = {k for k, v in saved.items() if k not in described and getattr(datamodule, k, None) == v}
    ignored = {"pretrained", *from_data}
    return ({k: v for k, v in saved.items() if k not in ignored}
            == {k: v for k, v in described.items() if k not in ignored})


def load_run(
    config: str | Path, ckpt_path: str | Path, overrides: Sequence[str] = (), *, device: str | torch.device = "cpu"
) -> TrainedRun:
    """The task in ``ckpt_path`` and the datamodule of ``config``, with command-line ``overrides`` applied to both.

    Args:
        config: the YAML the checkpoint was trained with.
        ckpt_path: a checkpoint written by ``python -m research fit``.
        overrides: fit's arguments, e.g. ``["--data.init_args.root", "DIR", "--model.init_args.optim.lr", "0.1"]``.
        device: where the task's weights go.

    Raises:
        FileNotFoundError: no file at ``ckpt_path`` (the message names the command that writes it).
        UserError: the file is not a checkpoint, or the config is not a readable config file.
        ValueError: the checkpoint holds another model than the config describes.

    """
    # A clear error for a missing file (naming the command that writes it) or a broken one.
    saved = load_checkpoint(ckpt_path, what="checkpoint", lightning=True, mmap=True).get("hyper_parameters") or {}
    cli = _TaskAndData(args=["--config", str(config), *overrides], run=False)
    described = cli.model.hparams
    if not _same_model(saved.get("model"), described.get("model"), cli.datamodule):
        raise ValueError(
            f"the checkpoint holds the model {saved['model']}, but the config describes {described['model']}; "
            "pass the config the checkpoint was trained with"
        )
    names = _task_arguments(overrides)
    given = {k: v for k, v in described.items() if (names is None and not k.startswith("_")) or k in (names or ())}
    task = type(cli.model).load_from_checkpoint(ckpt_path, map_location=device, weights_only=True, **given)
    return TrainedRun(task=task.eval(), datamodule=cli.datamodule)

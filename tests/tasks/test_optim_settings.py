"""The optimizer settings group as a config and the command line give it (LightningCLI over jsonargparse)."""

import sys
from unittest.mock import patch

import lightning as L
import pytest
import yaml
from lightning.pytorch.cli import LightningCLI

from research.tasks import ImageClassification, MAEPretraining, Translation
from research.tasks.optim import OptimizerSettings

MODEL = {"name": "madry_mnist_cnn", "num_classes": 4, "in_chans": 1, "img_size": 8}


def parsed_task(tmp_path, init_args: dict, *args: str, task: type = ImageClassification) -> L.LightningModule:
    """The task LightningCLI builds from a YAML ``model:`` section and command-line ``args``."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"model": {"class_path": f"research.tasks.{task.__name__}",
                                                "init_args": init_args}}))
    with patch.object(sys, "argv", ["research.fit"]):  # args stand for the command line
        cli = LightningCLI(L.LightningModule, None, subclass_mode_model=True, run=False, save_config_callback=None,
                           args=["--config", str(config), *args],
                           trainer_defaults={"logger": False, "enable_checkpointing": False})
    return cli.model


def test_a_config_sets_some_settings_over_the_tasks_defaults(tmp_path):
    task = parsed_task(tmp_path, {"model": MODEL, "optim": {"name": "sgd", "lr": 0.1, "schedule": "cyclic"}})
    assert task.optim == OptimizerSettings(name="sgd", lr=0.1, weight_decay=0.05, schedule="cyclic")
    mae = parsed_task(tmp_path, {"model": {"name": "mae_vit_tiny_patch4_28"}, "optim": {"warmup_epochs": 5}},
                      task=MAEPretraining)
    assert mae.optim == MAEPretraining.default_optim.updated({"warmup_epochs": 5})  # betas, lr per 256 kept
    assert mae.hparams.optim["betas"] == (0.9, 0.95)  # saved whole


def test_the_command_line_sets_one_setting(tmp_path):
    task = parsed_task(tmp_path, {"model": MODEL, "optim": {"lr": 0.1}}, "--model.init_args.optim.lr", "0.01",
                       "--model.init_args.optim.schedule", "constant")
    assert (task.optim.lr, task.optim.schedule, task.optim.weight_decay) == (0.01, "constant", 0.05)


@pytest.mark.parametrize("arg, value", [("optim.schedule", "step"), ("optim.name", "adam"),
                                         ("val_decoding", "beem")])
def test_the_command_line_rejects_a_value_outside_a_literal(tmp_path, capsys, arg, value):
    spec = {"name": "transformer_tiny", "vocab_size": 40, "pad_id": 0}
    with pytest.raises(SystemExit):
        parsed_task(tmp_path, {"model": spec}, f"--model.init_args.{arg}", value, task=Translation)
    assert value in capsys.readouterr().err


def test_python_callers_meet_the_same_checks():
    with pytest.raises(ValueError, match="unknown schedule 'step'; choose one of"):
        OptimizerSettings(schedule="step")
    with pytest.raises(ValueError, match="unknown optimizer settings \\['lrr'\\]"):
        ImageClassification(MODEL, optim={"lrr": 0.1})
    with pytest.raises(ValueError, match="warmup_epochs or in warmup_steps, not both"):
        OptimizerSettings(warmup_epochs=1, warmup_steps=10)

"""One entry point for every command, one way to load a trained run, the same flags everywhere (issue 16, item 3)."""

import importlib
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from test_attack_cli import CONFIG

from research.commands import COMMANDS, dispatch
from research.commands.fit import main as fit
from research.commands.load import load_run
from research.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SHARED = ("--config", "--ckpt_path", "--seed")  # every command over a trained run
RUN_COMMANDS = ("attack", "quantize")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A config and the last checkpoint of a one-epoch run on synthetic images."""
    folder = tmp_path_factory.mktemp("commands")
    config = folder / "tiny.yaml"
    config.write_text(CONFIG)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        with mock.patch.object(sys, "argv", ["research"]):  # pytest's own arguments are not the CLI's
            fit(["fit", "--config", str(config), "--trainer.max_epochs", "1", "--test_after_fit", "false",
                 "--experiment", "tiny"])
    finally:
        os.chdir(cwd)
    return str(config), str(folder / "checkpoints" / "tiny" / "last.ckpt")


def options(command: str) -> set[str]:
    parser = importlib.import_module(f"research.commands.{command}").build_parser()
    return {option for action in parser._actions for option in action.option_strings}


@pytest.mark.parametrize("command", RUN_COMMANDS)
def test_the_commands_over_a_run_share_their_flags_in_one_spelling(command):
    given = options(command)
    assert set(SHARED) <= given
    # underscores, as LightningCLI's own (--ckpt_path, --trainer.max_epochs): never --calibration-batches
    assert [o for o in given if o.startswith("--") and "-" in o[2:]] == []
    assert "--checkpoint" not in given


def test_attack_draws_num_samples_and_quantize_calibrates_on_batches():
    assert "--num_samples" in options("attack")
    assert "--calibration_batches" in options("quantize")


def test_load_run_applies_overrides_to_the_task_and_the_data_alike(trained):
    config, ckpt = trained
    plain = load_run(config, ckpt)
    assert not plain.task.training and plain.task.hparams.label_smoothing == 0.0
    run = load_run(config, ckpt, ["--data.init_args.batch_size", "5", "--model.init_args.label_smoothing", "0.1"])
    assert run.datamodule.batch_size == 5 and run.task.hparams.label_smoothing == 0.1
    # the weights are the checkpoint's either way
    for (name, a), b in zip(plain.task.state_dict().items(), run.task.state_dict().values(), strict=True):
        assert a.equal(b), name


def test_one_entry_point_lists_and_runs_the_commands(capsys):
    assert dispatch(["--help"]) == 0
    printed = capsys.readouterr().out
    assert all(f"  {name} " in printed for name in COMMANDS)
    with pytest.raises(UserError, match="unknown command 'atack'; did you mean 'attack'"):
        dispatch(["atack", "--config", "x.yaml"])
    with pytest.raises(UserError, match="no command given; choose one of fit, validate, test, predict, attack"):
        dispatch([])
    assert dispatch(["reproduce", "list"]) == 0


def test_python_m_research_and_the_console_script_are_the_same_entry():
    section = (ROOT / "pyproject.toml").read_text().split("[project.scripts]\n", 1)[1].split("\n[", 1)[0]
    assert [line for line in section.splitlines() if line and not line.startswith("#")] == [
        'research = "research.commands:main"']
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "research", "attak"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and done.stderr.splitlines()[-1].startswith(
        "error: unknown command 'attak'; did you mean 'attack'?")

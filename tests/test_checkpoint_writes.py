"""No fault loses a checkpoint: a save appears whole or not at all; an unwritable folder stops before training."""

import os
import sys
from pathlib import Path

import pytest
import torch

from research.callbacks.checkpoint import AtomicCheckpointIO, read_checkpoint
from research.commands.fit import main
from research.errors import run_command


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["research"])


def _fail_half_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save that writes half of the file, then fails as a full disk does."""
    real = torch.save

    def half(obj, file, *args, **kwargs):
        import io

        buffer = io.BytesIO()
        real(obj, buffer, *args, **kwargs)
        file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half)


def test_a_failed_save_leaves_the_previous_checkpoint_whole_and_no_temporary_file(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(1000)}, "step": 1}, tmp_path / "last.ckpt")
    with pytest.MonkeyPatch.context() as patch, pytest.raises(OSError, match="No space left"):
        _fail_half_way(patch)
        io.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "step": 2}, tmp_path / "last.ckpt")
    kept = read_checkpoint(tmp_path / "last.ckpt")
    assert kept["step"] == 1 and torch.equal(kept["state_dict"]["w"], torch.ones(1000))
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt"]


RUN = ["fit", "--model", "research.tasks.ImageClassification", "--model.model",
       '{"name": "five_layer_cnn", "num_classes": 4, "in_chans": 1, "img_size": 16, "hidden_dim": 16}',
       "--data", "research.data.SyntheticDataModule", "--data.num_samples", "16", "--data.num_classes", "4",
       "--data.img_size", "16", "--data.in_chans", "1", "--data.batch_size", "8", "--trainer.logger", "false",
       "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
       "--test_after_fit", "false", "--experiment", "tiny"]


def test_a_run_writes_checkpoints_atomically():
    cli = main([*RUN, "--trainer.max_epochs", "1"])
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    before = read_checkpoint("checkpoints/tiny/last.ckpt")
    with pytest.MonkeyPatch.context() as patch, pytest.raises(OSError, match="No space left"):
        _fail_half_way(patch)
        main([*RUN, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    after = read_checkpoint("checkpoints/tiny/last.ckpt")
    assert after["global_step"] == before["global_step"] == 1
    assert not [p for p in os.listdir("checkpoints/tiny") if p.endswith(".tmp")]


def test_an_unwritable_checkpoint_folder_stops_before_the_first_step(capsys):
    Path("checkpoints").write_text("a file where the folder should be")
    with pytest.raises(SystemExit):
        run_command(lambda: main([*RUN, "--trainer.max_epochs", "1"]))
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: cannot write checkpoints to ") and "checkpoints/tiny (" in last

"""A first run, and its resume, print no warning a user cannot act on (issue 15, item 4)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOISE = [
    "litlogger",  # Lightning's advertisement
    "The anonymous setting has no effect",  # wandb, from Lightning passing anonymous=None
    "git root logs does not exist",  # wandb, before logs/ exists
    "LeafSpec",  # Lightning's use of a torch API that torch deprecated
    "Checkpoint directory",  # "... exists and is not empty" on a resume, which expects checkpoints there
    "Total FLOPs: 0",  # a summary without an example input counts nothing
    "skip_none parameter was deprecated",  # jsonargparse, from our own config.yaml writer
    "Trainer already configured with model summary callbacks",  # Lightning, on our own summary
    "LightningCLI's args parameter",  # Lightning, when a command runs a fit with its own sys.argv still set
]


def test_a_first_run_and_its_resume_print_no_noise(tmp_path):
    # A user's shell: none of the test session's wandb settings (conftest's WANDB_SILENT would hide wandb's
    # warnings; a WANDB_SERVICE left by an earlier test would make both runs share one wandb service).
    env = {key: value for key, value in os.environ.items() if "WANDB" not in key}
    env |= {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    config = str(ROOT / "configs/resnet/mnist_resnet20.yaml")
    command = [sys.executable, "-m", "research", "fit", "--config", config,
               "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
               "--trainer.limit_test_batches", "1"]
    for extra in ([], ["--ckpt_path", "last", "--trainer.max_epochs", "2", "--test_after_fit", "false"]):
        done = subprocess.run(command + extra, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        text = done.stdout + done.stderr
        assert done.returncode == 0, text[-3000:]
        assert [noise for noise in NOISE if noise in text] == [], text
    assert "Trainable params" in text  # the summary is still there, without its FLOPs


def test_attack_and_quantize_print_no_warning(tmp_path):
    """The commands that read a run: their stderr holds progress lines only, no warning of any kind."""
    env = {key: value for key, value in os.environ.items() if "WANDB" not in key}
    env |= {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    config = str(ROOT / "configs/cnn/mnist_five_layer_cnn.yaml")
    ckpt = "checkpoints/cnn/mnist_five_layer_cnn/last.ckpt"
    commands = [
        ["fit", "--config", config, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
         "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1", "--trainer.logger", "false"],
        ["attack", "--config", config, "--ckpt_path", ckpt, "--num_samples", "8", "--steps", "2"],
        ["quantize", "--config", config, "--ckpt_path", ckpt, "--repeats", "1", "--calibration_batches", "1"],
    ]
    for command in commands:
        done = subprocess.run([sys.executable, "-m", "research", *command], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        if command[0] != "fit":  # fit's own output is the test above's
            assert [line for line in done.stderr.splitlines() if "warn" in line.lower()] == [], done.stderr
            assert [noise for noise in NOISE if noise in done.stdout + done.stderr] == []


def test_reproduce_prints_no_warning_from_its_runs(tmp_path):
    """python -m research reproduce trains through the fit command with its own arguments still in sys.argv."""
    env = {key: value for key, value in os.environ.items() if "WANDB" not in key}
    env |= {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    done = subprocess.run([sys.executable, "-m", "research", "reproduce", "goodfellow", "--quick", "--out", "out"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-3000:]
    assert [noise for noise in NOISE if noise in text] == [], text

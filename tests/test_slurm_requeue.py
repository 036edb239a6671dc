"""SLURM's requeue on preemption, under fake SLURM environment variables and a fake ``scontrol``.

What docs/slurm/train.sbatch relies on: with ``SLURM_NTASKS`` set (srun's environment) Lightning picks
its ``SLURMEnvironment`` with ``auto_requeue=True``. On SIGUSR1 (``#SBATCH --signal=SIGUSR1@90``) its
handler (lightning/pytorch/trainer/connectors/signal_connector.py) saves ``hpc_ckpt_<n>.ckpt`` in the
Trainer's ``default_root_dir`` (our checkpoints/<experiment>/) and calls ``scontrol requeue $SLURM_JOB_ID``;
SLURM then ends the job with SIGTERM and starts it again with the same command, and Lightning resumes
from the newest ``hpc_ckpt_<n>.ckpt`` it finds there. Here ``scontrol`` is a script on ``PATH`` that
records its arguments and sends SIGTERM back, as SLURM would.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BATCHES = 2  # training batches an epoch: 38 of the 48 synthetic images train, by 16, the incomplete batch dropped
RUN = [
    sys.executable, "-m", "research", "fit", "--config", str(ROOT / "configs/resnet/mnist_resnet20.yaml"),
    "--data", "research.data.SyntheticDataModule", "--data.num_samples", "48", "--data.num_classes", "4",
    "--data.img_size", "16", "--data.batch_size", "16", "--data.in_chans", "1",
    "--model.model", '{"name": "resnet20", "num_classes": 4, "in_chans": 1}',
    "--trainer.max_epochs", "3", "--trainer.limit_val_batches", "1", "--trainer.logger", "false",
    "--trainer.accelerator", "cpu", "--trainer.devices", "1",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", "--test_after_fit", "false",
]
SCONTROL = """#!/bin/sh
echo "$@" >> "$SCONTROL_LOG"
kill -TERM $PPID  # SLURM ends the requeued job; Lightning's handler lets the step finish and stops
"""


@pytest.fixture
def slurm(tmp_path) -> dict[str, str]:
    """The environment of one srun task of job 4242 on one node, with the fake scontrol first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(SCONTROL)
    (bin_dir / "scontrol").chmod(0o755)
    return {
        **os.environ,
        "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost", "MASTER_ADDR": "127.0.0.1",
        "PATH": os.pathsep.join([str(bin_dir), os.environ["PATH"]]), "SCONTROL_LOG": str(tmp_path / "scontrol.log"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
    }


def fit(args: list[str], env: dict[str, str], cwd: Path) -> str:
    """Run the command to its end; its output."""
    done = subprocess.run([*RUN, *args], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    return done.stdout


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.slow  # three runs of the command, two at a time: 50 to 90 s on the shared 2-core machine
def test_sigusr1_saves_requeues_and_the_requeued_run_resumes_exactly(slurm, tmp_path):
    # the uninterrupted run of the same length, meanwhile
    uninterrupted = subprocess.Popen([*RUN, "--experiment", "straight"], env=slurm, cwd=tmp_path,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # the preempted job: SIGUSR1 at the end of the first epoch's last batch (our loaders resume only at a
    # batch boundary of a whole epoch; see docs/guide.md)
    marker = tmp_path / "at_step"
    wait = ["--trainer.callbacks+", "cluster_callbacks.WaitForSignal", "--trainer.callbacks.step", str(BATCHES),
            "--trainer.callbacks.marker", str(marker)]
    job = subprocess.Popen([*RUN, "--experiment", "requeued", *wait], env=slurm, cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 90
    while not marker.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), job.communicate()[0][-3000:]
    job.send_signal(signal.SIGUSR1)
    output, _ = job.communicate(timeout=60)
    assert job.returncode == 0, output[-3000:]  # stopped by SIGTERM after the step, not killed

    folder = tmp_path / "checkpoints/requeued"
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    assert [p.name for p in folder.glob("hpc_ckpt_*.ckpt")] == ["hpc_ckpt_1.ckpt"]
    assert torch.load(folder / "hpc_ckpt_1.ckpt", weights_only=True)["global_step"] == BATCHES
    # the epoch's validation ran before the stop, so last.ckpt holds the same step here (not in general: see
    # docs/guide.md, "Preemption and requeue")
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == BATCHES

    # SLURM starts the same command again: Lightning finds hpc_ckpt_1.ckpt and resumes from it
    output = fit(["--experiment", "requeued"], slurm, tmp_path)
    assert uninterrupted.wait(timeout=60) == 0, uninterrupted.communicate()[0][-3000:]
    # resumed, not started from scratch (which would end with the same weights, too)
    assert "Restoring states from the checkpoint path at checkpoints/requeued/hpc_ckpt_1.ckpt" in output
    resumed, straight = weights(folder / "last.ckpt"), weights(tmp_path / "checkpoints/straight/last.ckpt")
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 3 * BATCHES
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name

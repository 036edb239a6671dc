"""SLURM's requeue on preemption: docs/slurm/train.sbatch under fake SLURM variables, srun and scontrol.

With ``SLURM_NTASKS`` set (srun's environment) Lightning picks its ``SLURMEnvironment`` with
``auto_requeue=True``. On SIGUSR1 (``#SBATCH --signal=SIGUSR1@90``) its handler
(lightning/pytorch/trainer/connectors/signal_connector.py) saves ``hpc_ckpt_<n>.ckpt`` in the Trainer's
``default_root_dir`` (our checkpoints/<experiment>/) and calls ``scontrol requeue $SLURM_JOB_ID``; SLURM
ends the job with SIGTERM and starts the script again, which resumes from the newest hpc checkpoint.
A quick in-process test signals a run and resumes from its hpc checkpoint; a slow one runs the script
itself, where ``srun`` runs its command as the one task and ``scontrol`` records its arguments and sends
SIGTERM back, as SLURM would.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cluster_callbacks import free_port, tiny_run

from research.commands.fit import main

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "docs/slurm/train.sbatch"
CONFIG = "configs/resnet/mnist_resnet20.yaml"
BATCHES = 2  # training batches an epoch: 38 of the 48 synthetic images train, by 16, the incomplete batch dropped
TINY = tiny_run(num_samples=48, max_epochs=3)
SRUN = '#!/bin/sh\nexec "$@"  # one task, already in its environment\n'
SCONTROL = """#!/bin/sh
echo "$@" >> "$SCONTROL_LOG"
kill -TERM $PPID  # SLURM ends the requeued job; Lightning's handler lets the step finish and stops
"""


@pytest.fixture
def slurm(tmp_path) -> dict[str, str]:
    """The environment of job 4242's one task on one node, fake srun and scontrol first on PATH; configs/ linked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    return {
        **os.environ,
        "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost", "SLURM_CPUS_PER_TASK": "1", "MASTER_ADDR": "127.0.0.1",
        "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]]),
        "SCONTROL_LOG": str(tmp_path / "scontrol.log"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
        "WANDB_MODE": "disabled",
    }


def start(command: list[str], env: dict[str, str], cwd: Path, **extra_env: str) -> subprocess.Popen:
    """Start a run; each its own MASTER_PORT (SLURM's job would take its port from the job id: one at a time)."""
    return subprocess.Popen(command, env={**env, "MASTER_PORT": str(free_port()), **extra_env}, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, timeout: float = 120) -> str:
    """Wait for the process to end well; its output."""
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def checkpoint(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def test_sigusr1_saves_an_hpc_checkpoint_that_resumes_exactly(slurm, tmp_path, monkeypatch):
    """In-process and quick: the run that gets the signal goes on to its end, the uninterrupted run."""
    (tmp_path / "bin/scontrol").write_text('#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\n')  # records, stops nothing
    for name in ("SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_NNODES",
                 "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_NODELIST", "PATH", "SCONTROL_LOG"):
        monkeypatch.setenv(name, slurm[name])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["research"])
    signalled = main(["fit", "--config", CONFIG, *TINY, "--trainer.devices", "1", "--experiment", "run",
                      "--trainer.callbacks+", "cluster_callbacks.SignalAt", "--trainer.callbacks.step", str(BATCHES)])
    hpc = tmp_path / "checkpoints/run/hpc_ckpt_1.ckpt"
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    assert checkpoint(hpc)["global_step"] == BATCHES
    assert checkpoint(tmp_path / "checkpoints/run/last.ckpt")["global_step"] == 3 * BATCHES
    resumed = main(["fit", "--config", CONFIG, *TINY, "--trainer.devices", "1", "--experiment", "run",
                    "--ckpt_path", str(hpc)])
    assert resumed.trainer.ckpt_path == str(hpc)  # resumed, not started from scratch (the same weights, too)
    assert resumed.trainer.global_step == signalled.trainer.global_step == 3 * BATCHES
    for name, value in signalled.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_ckpt_path_last_is_the_preemption_checkpoint_when_it_is_newer(slurm, tmp_path, monkeypatch):
    """A job ended after SIGUSR1 leaves hpc_ckpt_1.ckpt newer than last.ckpt: --ckpt_path last resumes from it.

    The signal lands at an epoch's last batch: our loaders do not resume inside an epoch (Lightning warns).
    """
    (tmp_path / "bin/scontrol").write_text('#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\n')
    for name in ("SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_NNODES",
                 "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_NODELIST", "PATH", "SCONTROL_LOG"):
        monkeypatch.setenv(name, slurm[name])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["research"])
    run = ["fit", "--config", CONFIG, *TINY, "--trainer.devices", "1", "--experiment", "run"]
    signalled = main([*run, "--trainer.callbacks+", "cluster_callbacks.SignalAt",
                      "--trainer.callbacks.step", str(BATCHES)])
    folder = tmp_path / "checkpoints/run"
    os.utime(folder / "last.ckpt", ns=(1, 1))  # as if SLURM had ended the job at the signal: last.ckpt is older
    resumed = main([*run, "--ckpt_path", "last"])
    assert Path(resumed.trainer.ckpt_path).resolve() == folder / "hpc_ckpt_1.ckpt"
    assert checkpoint(folder / "hpc_ckpt_1.ckpt")["global_step"] == BATCHES
    assert resumed.trainer.global_step == signalled.trainer.global_step == 3 * BATCHES
    for name, value in signalled.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


@pytest.mark.slow  # five runs of the command, two at a time: about 130 s on the shared 2-core machine
def test_sigusr1_saves_requeues_and_the_requeued_job_resumes_exactly(slurm, tmp_path):
    sbatch = ["bash", str(SBATCH), CONFIG, *TINY]
    uninterrupted = start(sbatch, slurm, tmp_path, EXPERIMENT="straight")  # the same length, meanwhile

    # the preempted job: SIGUSR1 at the end of the first epoch's last batch (our loaders resume exactly only
    # from a whole epoch's batches; see docs/guide.md)
    marker = tmp_path / "pid"
    wait = ["--trainer.callbacks+", "cluster_callbacks.WaitForSignal", "--trainer.callbacks.step", str(BATCHES),
            "--trainer.callbacks.marker", str(marker)]
    job = start([*sbatch, *wait], slurm, tmp_path, EXPERIMENT="requeued")
    deadline = time.monotonic() + 90
    while not marker.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), job.communicate()[0][-3000:]
    os.kill(int(marker.read_text()), signal.SIGUSR1)  # SLURM signals the tasks, not the batch script
    finish(job, timeout=60)  # stopped by SIGTERM after the step, not killed

    folder = tmp_path / "checkpoints/requeued"
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    assert [p.name for p in folder.glob("hpc_ckpt_*.ckpt")] == ["hpc_ckpt_1.ckpt"]
    assert checkpoint(folder / "hpc_ckpt_1.ckpt")["global_step"] == BATCHES
    shutil.copytree(folder, tmp_path / "checkpoints/by_lightning")

    # SLURM runs the script again; it gives the hpc checkpoint as --ckpt_path. Beside it, the same fit
    # without --ckpt_path: Lightning finds the hpc checkpoint in default_root_dir itself.
    requeued = start(sbatch, slurm, tmp_path, EXPERIMENT="requeued")
    by_lightning = start([sys.executable, "-m", "research", "fit", "--config", CONFIG, "--config",
                          "configs/strategies/multinode.yaml", "--trainer.num_nodes", "1", "--trainer.devices", "1",
                          *TINY, "--experiment", "by_lightning"], slurm, tmp_path)  # the script's command, by hand
    outputs = {"requeued": finish(requeued), "by_lightning": finish(by_lightning)}
    finish(uninterrupted)
    straight = checkpoint(tmp_path / "checkpoints/straight/last.ckpt")["state_dict"]
    assert "resuming from checkpoints/requeued/hpc_ckpt_1.ckpt" in outputs["requeued"]
    for name, output in outputs.items():
        # resumed, not started from scratch (which would end with the same weights, too)
        assert f"Restoring states from the checkpoint path at checkpoints/{name}/hpc_ckpt_1.ckpt" in output
        resumed = checkpoint(tmp_path / f"checkpoints/{name}/last.ckpt")
        assert resumed["global_step"] == 3 * BATCHES
        for key, value in straight.items():
            assert torch.equal(value, resumed["state_dict"][key]), (name, key)

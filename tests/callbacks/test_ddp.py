"""The attack callbacks under Trainer(strategy="ddp", accelerator="cpu", devices=2): two gloo processes."""

import os
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).with_name("ddp_adversarial_run.py")
ROOT = Path(__file__).resolve().parents[2]


def test_pgd_training_under_ddp(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(SCRIPT.parent), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",  # two processes on a small machine: no thread oversubscription
        "WANDB_MODE": "disabled",
    }
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)], env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=120,  # a hang (one rank waiting in a collective forever) fails here
    )
    assert done.returncode == 0, done.stderr[-3000:]  # e.g. DDP's unused-parameter or reducer errors
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][name]), name  # the ranks end identical
    assert len(ranks[0]["attacked"]) == len(ranks[1]["attacked"]) == 3
    for step in range(3):
        # each rank attacks its own shard: other clean images, other adversarial ones
        assert not torch.equal(ranks[0]["clean"][step], ranks[1]["clean"][step])
        assert not torch.equal(ranks[0]["attacked"][step], ranks[1]["attacked"][step])
        for rank in ranks:
            delta = rank["attacked"][step] - rank["clean"][step]
            assert 0 < delta.abs().max() <= 0.1 + 1e-6
    assert ranks[0]["robust_acc_pgd"] == ranks[1]["robust_acc_pgd"]  # counts summed over ranks
    assert list((tmp_path / "adversarial_examples").glob("val_epoch=*.png"))

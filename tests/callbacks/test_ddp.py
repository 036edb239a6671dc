"""The attack callbacks under Trainer(strategy="ddp", accelerator="cpu", devices=2): two gloo processes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("ddp_adversarial_run.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> Path:
    """PGD, then TRADES adversarial training, in one pair of gloo processes (their start-up is most of the time)."""
    out = tmp_path_factory.mktemp("ddp")
    env = {
        **os.environ,
        # the repository, the script's helpers, and tests/ for the conftest helpers they import
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(SCRIPT.parent), str(SCRIPT.parent.parent),
                                       os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",  # two processes on a small machine: no thread oversubscription
        "WANDB_MODE": "disabled",
    }
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), "pgd", "trades"], env=env, cwd=out, capture_output=True,
        text=True, timeout=180,  # a hang (one rank waiting in a collective forever) fails here
    )
    assert done.returncode == 0, done.stderr[-3000:]  # e.g. DDP's unused-parameter or reducer errors
    return out


def load_ranks(out: Path, attack: str) -> list[dict]:
    return [torch.load(out / attack / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_pgd_training_under_ddp(ddp_runs):
    ranks = load_ranks(ddp_runs, "pgd")
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
    assert list((ddp_runs / "pgd" / "adversarial_examples").glob("val_epoch=*.png"))


def test_trades_training_under_ddp(ddp_runs):
    """The wrapped training_step (task loss + beta * KL, one graph) under DDP: the ranks stay in step."""
    ranks = load_ranks(ddp_runs, "trades")
    for name, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][name]), name
    for step in range(3):
        assert not torch.equal(ranks[0]["clean"][step], ranks[1]["clean"][step])  # each rank its own shard
        for rank in ranks:
            assert torch.equal(rank["attacked"][step], rank["clean"][step])  # TRADES trains on the clean batch
    for rank in ranks:
        metrics = rank["metrics"]
        assert metrics["train/trades_kl"] > 0  # the adversarial view was made and used
        assert metrics["train/trades_loss"] == pytest.approx(metrics["train/loss"] + 6.0 * metrics["train/trades_kl"],
                                                             rel=1e-5)
        assert not rank["replaced_after_fit"]
    assert ranks[0]["metrics"]["train/trades_kl"] != ranks[1]["metrics"]["train/trades_kl"]  # per-rank values

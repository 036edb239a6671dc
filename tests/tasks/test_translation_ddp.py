"""Translation's test BLEU under Trainer(strategy="ddp", accelerator="cpu", devices=2): two gloo processes."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("ddp_translation_run.py")
ROOT = Path(__file__).resolve().parents[2]


def run(corpus: Path, out: Path, devices: int) -> list[dict]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",  # two processes on a small machine: no thread oversubscription
        "WANDB_MODE": "disabled",
    }
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(corpus), str(out), str(devices)], env=env, cwd=out, capture_output=True,
        text=True, timeout=180,  # a hang (one rank waiting in BLEU's sync forever) fails here
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank{r}-of-{devices}.json").read_text()) for r in range(devices)]


@pytest.fixture
def echo_corpus(tmp_path):
    """300 sentences paired with themselves."""
    rng = random.Random(0)
    words = [f"{a}{b}{c}" for a in "bcdfgkp" for b in "aeiou" for c in "lmnrst"]
    lines = [" ".join([f"n{i}", *rng.choices(words, k=rng.randint(0, 11))]) for i in range(300)]
    path = tmp_path / "pairs.tsv"
    path.write_text("".join(f"{line}\t{line}\n" for line in lines), encoding="utf-8")
    return path


def test_bleu_and_loss_over_two_processes_equal_one_process(echo_corpus, tmp_path):
    (single,) = run(echo_corpus, tmp_path, devices=1)
    assert 0 < single["bleu"] < 100  # the echo blanks some tokens
    assert single["decoded"] == list(range(single["test_size"]))  # every test sentence, once
    ranks = run(echo_corpus, tmp_path, devices=2)
    shares = [set(rank["decoded"]) for rank in ranks]
    assert shares[0] and shares[1] and not shares[0] & shares[1]  # each process decodes its own sentences
    assert sorted(shares[0] | shares[1]) == single["decoded"]  # and together all of them
    for rank in ranks:  # the corpus BLEU of all sentences on every process, not that of its share
        assert rank["bleu"] == pytest.approx(single["bleu"], abs=1e-4)
        assert rank["loss"] == pytest.approx(single["loss"], rel=1e-5)

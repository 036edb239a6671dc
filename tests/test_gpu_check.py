"""benchmarks/gpu_check.sh --tiny: the GPU check at tiny sizes on the CPU, so that it cannot rot without a GPU.

The whole script (every row: ours vs timm eager and compiled for the four models, PGD-7, MAE, DDP over gloo, each
with a positive figure) takes about 50 s of CPU time, minutes of wall time on 2 busy cores: it is marked slow. The
default run builds and times the rows that use other benchmarks' code (a model pair, PGD-7, MAE) in-process, so
that a rename there breaks a test at once.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_tiny_gpu_check_prints_every_row():
    env = os.environ | {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh"), "--tiny"], capture_output=True, text=True,
                         env=env, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ") and not line.startswith("| measurement")]
    labels = [row.split(" | ")[0][2:] for row in rows]
    expected = [f"{model} train, {mode}" for model in ("ResNet-50", "ViT-S/16", "ViT-B/16", "Swin-T")
                for mode in ("eager", "compiled")]
    assert labels[:8] == expected, run.stdout
    assert labels[8].startswith("PGD-7") and labels[9].startswith("MAE ViT-L") and labels[10].startswith("DDP")
    assert "over gloo" in labels[10]
    for row in rows:
        figures = [float(f) for f in re.findall(r"\| ([0-9.]+)", row)]
        assert figures and all(f > 0 for f in figures), row


def test_rows_from_the_shared_benchmark_code_come_out(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_check

    sizes = gpu_check.TINY
    models = gpu_check.pair("vit_small_patch16_224", sizes, torch.device("cpu"))  # asserts equal logits
    assert set(models) == {"ours", "timm"}
    for row in (gpu_check.pgd_row(sizes, torch.device("cpu")), gpu_check.mae_row(sizes, torch.device("cpu"))):
        figures = [float(f) for f in re.findall(r"\| ([0-9.]+)", row)]
        assert len(figures) >= 3 and all(f > 0 for f in figures), row


def test_the_check_refuses_to_run_without_a_gpu_unless_tiny():
    env = os.environ | {"CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([sys.executable, "gpu_check.py"], capture_output=True, text=True, env=env, timeout=120,
                         cwd=ROOT / "benchmarks")
    assert run.returncode == 1 and "--tiny" in run.stderr

"""Training runs behind the tables: a config from configs/ plus overrides, run through research.fit."""

from __future__ import annotations

import functools
import hashlib
import json
import statistics
from pathlib import Path

from research.reproduce.table import Measured

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# --quick: a few steps of everything, so the whole pipeline (data, model, fit, test) runs in seconds.
QUICK = ["--trainer.max_steps", "3", "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2"]


@functools.cache
def fit_and_test(config: str, overrides: tuple[str, ...] = (), *, quick: bool = False) -> dict[str, float]:
    """Train ``configs/<config>`` with shell-style ``overrides``, test the best checkpoint, return the metrics.

    Memoised within a process, so rows that share a run (a mean and a difference) train it once.
    """
    from research.fit import main  # the CLI imports every task; only runs need it

    path = CONFIGS / config
    if not path.is_file():
        raise FileNotFoundError(f"no config {path}; run research.reproduce from a checkout of the repository")
    tag = hashlib.sha1(json.dumps([config, overrides, quick]).encode()).hexdigest()[:8]
    args = ["fit", "--config", str(path), *overrides, "--experiment", f"reproduce/{path.stem}-{tag}",
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false"]
    cli = main([*args, *(QUICK if quick else [])])
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items()}


def over_seeds(config: str, overrides: tuple[str, ...], metric: str, seeds: int, *, quick: bool) -> Measured:
    """Mean and standard deviation of ``metric`` (x100 for accuracies) over ``seeds`` runs."""
    values = [
        100 * fit_and_test(config, (*overrides, "--seed_everything", str(seed)), quick=quick)[metric]
        for seed in range(1 if quick else seeds)
    ]
    return Measured(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)

"""The fast-adversarial-training tables (wong, catastrophic_overfitting): like-with-like configs, the guard, quick runs.

The quick runs are memoised per process (``research.reproduce.runs.fit_run``).
"""

import math
from types import SimpleNamespace

import pytest
import torch
import yaml

from research.reproduce import TABLES, catastrophic_overfitting, run_table, runs, to_markdown, wong
from research.reproduce.runs import Run

co = catastrophic_overfitting


@pytest.fixture(autouse=True)
def _checkpoints_in_tmp(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # runs write checkpoints/ under the working directory


def _config(name: str) -> dict:
    return yaml.safe_load((runs.CONFIGS / name).read_text())


def _split_attack(config: dict) -> tuple[dict, dict]:
    """(the config without the AdversarialTraining arguments, those arguments)."""
    callbacks = config["trainer"]["callbacks"]
    [attack] = [c for c in callbacks if c["class_path"] == "research.callbacks.AdversarialTraining"]
    rest = [c for c in callbacks if c is not attack]
    return {**config, "trainer": {**config["trainer"], "callbacks": rest}}, attack["init_args"]


def test_wong_recipes_differ_only_in_the_attack():
    (fast, fast_attack), (pgd7, pgd7_attack) = _split_attack(_config(wong.FAST)), _split_attack(_config(wong.PGD7))
    assert fast == pgd7  # data, model, optimiser, cyclic schedule, epochs, batch: like with like
    # Wong et al.'s MNIST recipe: Adam, lr_max 5e-3, peak at 2/5
    assert fast["model"]["init_args"] | {"model": None} == {
        "model": None, "optim": {"name": "adamw", "lr": 5e-3, "weight_decay": 0.0, "schedule": "cyclic",
                                 "cycle_peak": 0.4}, "mean": [0.0], "std": [1.0]}
    assert fast["data"]["init_args"]["batch_size"] == 100
    assert fast_attack["attack"] == "fgsm_rs" and fast_attack["step_size"] == pytest.approx(1.25 * fast_attack["eps"])
    assert pgd7_attack == {"attack": "pgd", "eps": 0.3, "steps": 7}
    assert "warmup_epochs" not in fast_attack and "warmup_epochs" not in pgd7_attack  # full eps from the first step


def test_catastrophic_overfitting_runs_differ_only_in_the_step_and_the_guard():
    (rs, rs_attack), (large, large_attack), (unguarded, unguarded_attack) = (
        _split_attack(_config(c)) for c in (co.RS, co.LARGE, co.LARGE_UNGUARDED))
    assert rs == large == unguarded
    assert rs_attack["guard_gap"] is None and rs_attack.get("guard_drop", 0.2) == 0.2  # Wong et al.'s drop rule alone
    assert large_attack == {**rs_attack, "step_size": 2 * rs_attack["eps"], "guard_drop": 0.2}
    assert unguarded_attack == {**large_attack, "guard_drop": 1.0}  # reads every epoch, a drop never exceeds 1


def _trainer(tmp_path, epoch: int, stop: bool, pgd: float) -> SimpleNamespace:
    metrics = {"train/guard_pgd_acc": torch.tensor(pgd), "train/guard_fgsm_acc": torch.tensor(0.9)}
    return SimpleNamespace(callback_metrics=metrics, current_epoch=epoch, should_stop=stop, is_global_zero=True,
                           checkpoint_callback=SimpleNamespace(dirpath=str(tmp_path)))


def test_guard_record_writes_each_epochs_readings_and_stop(tmp_path):
    record = co.GuardRecord()
    record.on_fit_start(_trainer(tmp_path, 0, False, 0.5), None)
    record.on_train_epoch_end(_trainer(tmp_path, 0, False, 0.5), None)
    record.on_train_epoch_end(_trainer(tmp_path, 1, True, 0.25), None)
    assert co.guard_record(str(tmp_path / "last.ckpt")) == [
        {"epoch": 0, "guard_pgd_acc": 0.5, "guard_fgsm_acc": pytest.approx(0.9), "stopped": False},
        {"epoch": 1, "guard_pgd_acc": 0.25, "guard_fgsm_acc": pytest.approx(0.9), "stopped": True},
    ]
    with pytest.raises(FileNotFoundError, match="no guard.json beside .*: train with --trainer.callbacks"):
        co.guard_record(str(tmp_path / "elsewhere" / "last.ckpt"))


def test_evaluate_takes_fired_and_readings_from_the_record(monkeypatch, tmp_path):
    record = co.GuardRecord()
    for epoch, stop, pgd in [(0, False, 0.4), (1, False, 0.3), (2, True, 0.05)]:
        record.on_train_epoch_end(_trainer(tmp_path, epoch, stop, pgd), None)
    calls = []

    def fit_run(config, overrides, *, quick):
        calls.append(overrides)
        return Run({}, "", str(tmp_path / "last.ckpt"), 1.0, 1.0)

    monkeypatch.setattr(co, "fit_run", fit_run)
    monkeypatch.setattr(co, "attack_checkpoint", lambda *a, **k: {"clean": 98.0, "fgsm": 90.0, "pgd": 2.0})
    co.evaluate.cache_clear()
    try:
        scores = co.evaluate(co.LARGE_UNGUARDED, False)
    finally:
        co.evaluate.cache_clear()
    assert calls == [co.RECORD]  # the full run adds only the recorder
    assert scores == {"clean": 98.0, "fgsm": 90.0, "pgd": 2.0, "fired": 1.0, "epochs": 3.0,
                      "lowest_guard_pgd": pytest.approx(5.0)}


def test_quick_table_measures_every_row_and_the_recorder_sees_the_guard():
    table = TABLES["catastrophic_overfitting"]
    results = run_table(table, quick=True)
    assert [r.label for r in results] == [row.label for row in table.rows]
    for result in results:
        assert result.error is None, result.extra.get("traceback")
        assert math.isfinite(result.ours)
    assert to_markdown(table, results, quick=True).startswith(f"### {table.title} (quick settings")
    for config in (co.RS, co.LARGE, co.LARGE_UNGUARDED):
        # one epoch of 3 batches: the guard checked once, and the recorder ran after its check
        [epoch] = co.guard_record(runs.fit_run(config, co.RECORD + co.QUICK, quick=True).last)
        assert epoch["epoch"] == 0 and 0 <= epoch["guard_pgd_acc"] <= 1 and 0 <= epoch["guard_fgsm_acc"] <= 1

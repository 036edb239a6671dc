"""The degradation table (He et al. 2016, Fig. 6, Table 6): like-with-like configs, the recorder, trends, a quick run.

The quick runs are memoised per process (``research.reproduce.runs.fit_run``), so they are shared with
tests/reproduce/test_runner.py when both run in one session.
"""

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
import yaml

from research.reproduce import TABLES, resnet_degradation, run_table, runs, to_markdown

rd = resnet_degradation


@pytest.fixture(autouse=True)
def _checkpoints_in_tmp(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # runs write checkpoints/ under the working directory


def _config(name: str) -> dict:
    return yaml.safe_load((runs.CONFIGS / name).read_text())


def test_the_four_runs_differ_only_in_the_models_name():
    configs = {net: _config(path) for net, path in rd.CONFIGS.items()}
    names = {net: config["model"]["init_args"]["model"].pop("name") for net, config in configs.items()}
    assert names == rd.MODELS
    first, *rest = configs.values()
    assert all(config == first for config in rest)
    # the paper's CIFAR-10 recipe (section 4.2): SGD 0.1, momentum 0.9, weight decay 1e-4, batch 128, crop and flip
    assert first["model"]["init_args"]["optim"] | {"schedule": None} == {
        "name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "schedule": None}
    assert first["data"]["init_args"]["batch_size"] == 128 and first["data"]["init_args"]["augment"] == "crop_flip"
    assert (first["trainer"]["max_epochs"], first["trainer"]["limit_train_batches"]) == (rd.EPOCHS, rd.BATCHES)
    assert first["model"]["init_args"]["model"]["widths"] == [8, 16, 32]  # half the paper's 16/32/64, as the notes say


def _trainer(tmp_path, epoch: int, accuracy: float | None) -> SimpleNamespace:
    metrics = {} if accuracy is None else {"train/acc": torch.tensor(accuracy)}
    return SimpleNamespace(callback_metrics=metrics, current_epoch=epoch, is_global_zero=True,
                           checkpoint_callback=SimpleNamespace(dirpath=str(tmp_path)))


def test_the_record_writes_each_epochs_training_error(tmp_path):
    record = rd.TrainingErrorRecord()
    record.on_fit_start(_trainer(tmp_path, 0, 0.5), None)
    record.on_train_epoch_end(_trainer(tmp_path, 0, 0.5), None)
    record.on_train_epoch_end(_trainer(tmp_path, 1, 0.875), None)
    assert rd.training_error_record(str(tmp_path / "last.ckpt")) == pytest.approx([50.0, 12.5])
    with pytest.raises(FileNotFoundError, match="no train_error.json beside .*: train with --trainer.callbacks"):
        rd.training_error_record(str(tmp_path / "elsewhere" / "last.ckpt"))
    with pytest.raises(KeyError, match="reads train/acc, which this task does not log"):
        record.on_train_epoch_end(_trainer(tmp_path, 2, None), None)


def _measured(monkeypatch, curves: dict[str, list[float]], tests: dict[str, float]) -> None:
    monkeypatch.setattr(rd, "errors", lambda net, quick: {"curve": curves[net], "test": tests[net]})


def test_trend_rows_read_the_curves_and_test_errors(monkeypatch):
    curves = {"plain-20": [30, 20], "plain-56": [40, 25], "ResNet-20": [28, 15], "ResNet-56": [27, 12]}
    _measured(monkeypatch, curves, {"plain-20": 9, "plain-56": 11, "ResNet-20": 8, "ResNet-56": 7})
    assert rd.deeper_is_worse("plain", False) == 1.0 and rd.deeper_resnet_not_worse(False) == 1.0
    assert rd.shortcuts_help_more_when_deeper(False) == 1.0  # 25 - 12 = 13 at depth 56 against 20 - 15 = 5 at 20
    assert rd.deeper_resnet_tests_better(False) == 1.0
    assert rd.training_error_at("plain-56", 2, False) == 25 and math.isnan(rd.training_error_at("plain-56", 3, False))
    curves["ResNet-56"] = [27, 21]  # now the deeper ResNet degrades too: 25 - 21 = 4 at depth 56
    assert rd.deeper_resnet_not_worse(False) == 0.0 and rd.shortcuts_help_more_when_deeper(False) == 0.0
    curves["plain-56"] = [40, 19]
    assert rd.deeper_is_worse("plain", False) == 0.0


def test_quick_table_measures_every_row():
    table = TABLES["resnet_degradation"]
    results = run_table(table, quick=True)
    assert [r.label for r in results] == [row.label for row in table.rows]
    assert all(r.error is None for r in results), [r.extra.get("traceback") for r in results if r.error][:1]
    by_label = {r.label: r.ours for r in results}
    for net in rd.CONFIGS:  # quick: 3 epochs of one batch each
        assert all(0 <= by_label[f"{net} training error (%), epoch {epoch}"] <= 100 for epoch in (1, 2, 3))
        unreached = range(4, rd.EPOCHS + 1)
        assert all(math.isnan(by_label[f"{net} training error (%), epoch {epoch}"]) for epoch in unreached)
        assert by_label[f"{net} final training error (%)"] == by_label[f"{net} training error (%), epoch 3"]
    assert all(by_label[r.label] in (0.0, 1.0) for r in results if r.paper == 1.0)
    assert to_markdown(table, results, quick=True).startswith(f"### {table.title} (quick settings")


def test_missing_fashion_mnist_is_a_failed_row_that_says_what_to_set(monkeypatch, tmp_path):
    monkeypatch.setenv(runs.DATA_ENV, str(tmp_path / "nowhere"))
    rd.errors.cache_clear()
    table = TABLES["resnet_degradation"]
    [result] = run_table(dataclasses.replace(table, rows=table.rows[:1]))
    assert result.error.startswith("FileNotFoundError: Fashion-MNIST not found under")
    assert "set RESEARCH_DATA=DIR" in result.error

"""The tables that train (madry, goodfellow, wong, vit_vs_resnet, mae_mask_ratio): each runs at --quick settings,
and missing data fails clearly.

The quick runs are memoised per process (``research.reproduce.runs.fit_run``), so these tests share
their training with tests/reproduce/test_runner.py when both run in one session.
"""

import math

import pytest

from research.reproduce import TABLES, goodfellow, mae_mask_ratio, run_table, runs, to_markdown, vit_vs_resnet

NEW = ["madry", "goodfellow", "wong", "vit_vs_resnet", "mae_mask_ratio"]


@pytest.fixture(autouse=True)
def _checkpoints_in_tmp(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # runs write checkpoints/ under the working directory


@pytest.fixture
def no_fashion_data(monkeypatch, tmp_path):
    monkeypatch.setenv(runs.DATA_ENV, str(tmp_path / "nowhere"))


@pytest.mark.parametrize("name", NEW)
def test_quick_table_measures_every_row(name):
    table = TABLES[name]
    results = run_table(table, quick=True)
    assert [r.label for r in results] == [row.label for row in table.rows]
    for result in results:
        assert result.error is None, result.extra.get("traceback")
        assert math.isfinite(result.ours)
    if table.unit.startswith("%"):  # accuracies and error rates
        assert all(0 <= r.ours <= 100 for r in results if "minus" not in r.label and "time" not in r.label)
    markdown = to_markdown(table, results, quick=True)
    assert markdown.startswith(f"### {table.title} (quick settings")
    papers = ["—" if r.paper is None else f"{r.paper:.{table.digits}f}" for r in results]  # — : ours only
    assert all(f"| {r.label} | {paper} | " in markdown for r, paper in zip(results, papers))


def test_error_rates_complement_the_accuracies_attacked():
    errors = goodfellow.error_rates(goodfellow.NATURAL, True)
    accuracy = runs.attack_checkpoint(goodfellow.NATURAL, runs.fit_run(goodfellow.NATURAL, quick=True).last,
                                      attacks=["fgsm"], eps=goodfellow.EPS, num_samples=20)
    assert errors == {key: 100 - value for key, value in accuracy.items()}
    assert accuracy["fgsm"] <= accuracy["clean"]  # robust examples are also correct clean


def test_trend_rows_read_the_measured_accuracies(monkeypatch):
    monkeypatch.setattr(vit_vs_resnet, "accuracies", lambda quick: {"resnet": 98.0, "vit": 97.5})
    assert vit_vs_resnet.resnet_ahead(False) == 1.0 and vit_vs_resnet.resnet_ahead(False, margin=1.0) == 0.0
    probes = {0.25: 70.0, 0.5: 75.0, 0.75: 74.0, 0.9: 60.0}
    monkeypatch.setattr(mae_mask_ratio, "probe_accuracy", lambda ratio, quick: probes[ratio])
    assert mae_mask_ratio.best_ratio(False) == 0.5 and mae_mask_ratio.improves(False) == 1.0
    # Figure 5: fine-tuning is flatter over the ratios than the probe (here 2 points against 15)
    finetuned = {0.25: 84.0, 0.5: 85.0, 0.75: 86.0, 0.9: 85.5}
    monkeypatch.setattr(mae_mask_ratio, "finetune_accuracy", lambda ratio, quick: finetuned[ratio])
    assert mae_mask_ratio.finetuning_flatter(False) == 1.0
    finetuned[0.9] = 60.0  # 26 points: steeper than the probe
    assert mae_mask_ratio.finetuning_flatter(False) == 0.0


def test_missing_fashion_mnist_is_a_failed_row_that_says_what_to_set(no_fashion_data):
    results = run_table(TABLES["mae_mask_ratio"], quick=False)  # fails before anything trains
    assert all(r.error and r.error.startswith("FileNotFoundError") and runs.DATA_ENV in r.error for r in results)
    assert "failed: FileNotFoundError: Fashion-MNIST not found" in to_markdown(TABLES["mae_mask_ratio"], results)


def test_fashion_mnist_root_accepts_both_layouts(monkeypatch, tmp_path, no_fashion_data):
    with pytest.raises(FileNotFoundError, match=runs.DATA_ENV):
        runs.fashion_mnist_root(quick=False)
    stand_in = runs.fashion_mnist_root(quick=True)  # quick runs need no files
    raw = stand_in / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(f"{name}.gz" for name in runs._FASHION_FILES)

    monkeypatch.setenv(runs.DATA_ENV, str(stand_in))  # torchvision's layout: used as it is
    assert runs.fashion_mnist_root(quick=False) == stand_in
    monkeypatch.setenv(runs.DATA_ENV, str(raw))  # a folder of the idx files: linked into that layout
    linked = runs.fashion_mnist_root(quick=False)
    assert linked != raw and (linked / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").resolve().is_file()


def test_config_key_changes_when_the_config_is_edited(monkeypatch, tmp_path):
    monkeypatch.setattr(runs, "CONFIGS", tmp_path)
    (tmp_path / "a.yaml").write_text("seed_everything: 0\n")
    before = runs.config_key("a.yaml")
    (tmp_path / "a.yaml").write_text("seed_everything: 1\n")
    assert before.startswith("a.yaml@") and runs.config_key("a.yaml") != before

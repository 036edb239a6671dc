"""The attention-distance table (Dosovitskiy et al. 2021, Figure 7 right): its config, trends and a quick run.

The quick run is memoised per process (``research.reproduce.runs.fit_run``), so it is shared with
tests/reproduce/test_runner.py when both run in one session.
"""

import dataclasses
import math

import pytest
import torch
import yaml

from research.reproduce import TABLES, run_table, runs, to_markdown, vit_attention_distance

vd = vit_attention_distance


@pytest.fixture(autouse=True)
def _checkpoints_in_tmp(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # runs write checkpoints/ under the working directory


def test_the_tables_constants_are_its_configs_vit():
    model = yaml.safe_load((runs.CONFIGS / vd.CONFIG).read_text())["model"]["init_args"]["model"]
    assert model["name"] == vd.MODEL and (model["depth"], model["num_heads"]) == (vd.DEPTH, vd.HEADS)
    assert model["img_size"] // model.get("patch_size", vd.PATCH) == vd.GRID[0] == vd.GRID[1]


def _measured(monkeypatch, heads: list[list[float]]) -> None:
    monkeypatch.setattr(vd, "distances", lambda quick: {"heads": torch.tensor(heads), "accuracy": 90.0})


def test_trend_rows_read_the_heads_distances(monkeypatch):
    # the paper's picture: block 1 has local and global heads, the last block only global ones
    heads = [[2.0, 4.0, 12.0, 20.0]] + [[10.0, 11.0, 12.0, 13.0]] * (vd.DEPTH - 2) + [[16.0, 17.0, 18.0, 19.0]]
    _measured(monkeypatch, heads)
    assert vd.grows_with_depth(False) == 1.0 and vd.first_layer_spreads_wider(False) == 1.0
    assert vd.head_distance(1, 3, False) == 12.0 and vd.layer_mean(vd.DEPTH, False) == 17.5
    assert vd.departure_from_uniform(False) == pytest.approx(vd.uniform_distance(False) - 2.0)
    _measured(monkeypatch, [[vd.uniform_distance(False) + 0.4 * (-1) ** h for h in range(vd.HEADS)]]
              + [[vd.uniform_distance(False) + 0.5] * vd.HEADS] * (vd.DEPTH - 1))
    # near-uniform heads (an untrained ViT): last block 0.5 px farther, first block 0.8 px wider, both noise
    assert vd.grows_with_depth(False) == 0.0 and vd.first_layer_spreads_wider(False) == 0.0
    assert vd.departure_from_uniform(False) == pytest.approx(0.5)
    heads = [heads[-1], *heads[1:-1], heads[0]]  # the other way round
    _measured(monkeypatch, heads)
    assert vd.grows_with_depth(False) == 0.0 and vd.first_layer_spreads_wider(False) == 0.0


def test_uniform_row_is_the_mean_distance_between_two_patches_of_the_grid():
    centres = [(4 * r, 4 * c) for r in range(7) for c in range(7)]
    expected = sum(math.dist(a, b) for a in centres for b in centres) / len(centres) ** 2
    assert vd.uniform_distance(False) == pytest.approx(expected)


def test_quick_table_measures_every_row():
    table = TABLES["vit_attention_distance"]
    results = run_table(table, quick=True)
    assert [r.label for r in results] == [row.label for row in table.rows]
    assert all(r.error is None for r in results), [r.extra.get("traceback") for r in results if r.error][:1]
    by_label = {r.label: r.ours for r in results}
    diagonal = math.hypot(24, 24)  # the farthest two patch centres of a 7x7 grid of 4 px patches
    heads = [by_label[vd._head_label(layer, head)] for layer in range(1, vd.DEPTH + 1) for head in range(1, 5)]
    assert all(0 < distance < diagonal for distance in heads)
    assert all(by_label[r.label] in (0.0, 1.0) for r in results if r.paper == 1.0)
    assert to_markdown(table, results, quick=True).startswith(f"### {table.title} (quick settings")


def test_missing_fashion_mnist_is_a_failed_row_that_says_what_to_set(monkeypatch, tmp_path):
    monkeypatch.setenv(runs.DATA_ENV, str(tmp_path / "nowhere"))
    vd.distances.cache_clear()
    table = TABLES["vit_attention_distance"]
    [result] = run_table(dataclasses.replace(table, rows=table.rows[:1]))
    assert result.error.startswith("FileNotFoundError: Fashion-MNIST not found under")
    assert "set RESEARCH_DATA=DIR" in result.error

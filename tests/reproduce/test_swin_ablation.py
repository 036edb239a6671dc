"""Swin's Table 4 table (research/reproduce/swin_ablation.py): quick run, trend rows, the variants' models."""

import json
import math

import pytest

from research.models import create_model
from research.reproduce import TABLES, run_table, runs, swin_ablation, to_markdown
from research.reproduce.table import Measured


@pytest.fixture(autouse=True)
def _checkpoints_in_tmp(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # runs write checkpoints/ under the working directory


def test_quick_table_measures_every_row():
    table = TABLES["swin_ablation"]
    results = run_table(table, quick=True)
    for result in results:
        assert result.error is None, result.extra.get("traceback")
        assert math.isfinite(result.ours) and 0 <= result.ours <= 100
    assert "| shifted windows beat w/o shifting (1 = yes) | 1.00 | " in to_markdown(table, results, quick=True)


@pytest.mark.parametrize("variant", list(swin_ablation.VARIANTS))
def test_each_variant_builds_the_model_it_names(variant):
    flag, spec = runs.model_override(swin_ablation.CONFIG, **swin_ablation.VARIANTS[variant][0])
    assert flag == "--model.init_args.model"
    model = create_model(**json.loads(spec))  # JSON keeps false a boolean (the command line's KEY VALUE would not)
    blocks = [block.attn for stage in model.layers for block in stage.blocks]
    assert any(b.shifted for b in blocks) == (variant != swin_ablation.UNSHIFTED)
    assert (model.absolute_pos_embed is not None) == (variant in (swin_ablation.ABS, swin_ablation.ABS_REL))
    has_bias = all(b.relative_position_bias_table is not None for b in blocks)
    assert has_bias == (variant in (swin_ablation.SHIFTED, swin_ablation.UNSHIFTED, swin_ablation.ABS_REL))


def test_trend_rows_and_the_noise_count_read_the_measured_accuracies(monkeypatch):
    measured = {swin_ablation.SHIFTED: Measured(90.0, 0.2), swin_ablation.UNSHIFTED: Measured(89.8, 0.1),
                swin_ablation.NO_POS: Measured(88.0, 0.3), swin_ablation.ABS: Measured(90.5, 0.1),
                swin_ablation.ABS_REL: Measured(90.1, 0.2)}
    monkeypatch.setattr(swin_ablation, "accuracy", lambda variant, quick: measured[variant])
    assert swin_ablation.beats(swin_ablation.SHIFTED, swin_ablation.UNSHIFTED, False) == 1.0
    assert swin_ablation.beats(swin_ablation.SHIFTED, swin_ablation.ABS, False) == 0.0
    # gaps 0.2 (2 std: 0.4), 2.0 (0.6), 0.5 (0.4), 2.5 (0.6): three are beyond
    assert swin_ablation.gaps_beyond_noise(False) == 3.0


def test_a_config_without_a_model_dict_is_refused(monkeypatch, tmp_path):
    (tmp_path / "bare.yaml").write_text("model:\n  class_path: research.tasks.ImageClassification\n")
    monkeypatch.setattr(runs, "CONFIGS", tmp_path)
    with pytest.raises(ValueError, match="bare.yaml gives its task no model dict"):
        runs.model_override("bare.yaml", ape=True)

"""MAE's Table 1c/1d table (research/reproduce/mae_design.py): quick run, trend rows, the FLOPs counts."""

import math

import pytest
import torch

from research.reproduce import TABLES, mae_design, run_table, to_markdown


@pytest.fixture(autouse=True)
def _checkpoints_in_tmp(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # runs write checkpoints/ under the working directory


def test_quick_table_measures_every_row_and_pretrains_the_variants_it_names(tmp_path):
    table = TABLES["mae_design"]
    results = run_table(table, quick=True, out=tmp_path / "results")
    for result in results:
        assert result.error is None, result.extra.get("traceback")
        assert math.isfinite(result.ours)
    markdown = to_markdown(table, results, quick=True)
    assert "| ViT-L/16 pre-training FLOPs, [M] in the encoder / MAE (encoder + decoder) | 3.30 | 3.23 |" in markdown
    # the FLOPs rows are counted on every run, never cached; the trained rows are
    assert len(list((tmp_path / "results" / "cache").iterdir())) == len(table.rows) - 4
    states = {v: torch.load(mae_design.pretrained(v, True), map_location="cpu", weights_only=False)["state_dict"]
              for v in mae_design.VARIANTS}
    # [M] in the encoder: the token has the encoder's width (128), not the decoder's (64)
    assert [states[v]["model.mask_token"].shape[-1] for v in mae_design.VARIANTS] == [64, 128, 64]
    hparams = torch.load(mae_design.pretrained(mae_design.NORM, True), map_location="cpu", weights_only=False)
    assert hparams["hyper_parameters"]["norm_pix_loss"] is True


def test_flops_ratios_are_the_token_counts_in_the_linear_layers():
    # ViT-L/16 at 224: 196 patches, 49 visible at 0.75; the encoder's linear layers see 197 vs 50 tokens and its
    # attention (a few % of it) their squares, so the ratio sits just above 197 / 50 = 3.94
    ratio = mae_design.flops_ratio(mae_design.VIT_L, False, False)
    assert 197 / 50 < ratio < 4.1
    whole = mae_design.flops_ratio(mae_design.VIT_L, True, False)
    encoder, decoder = mae_design.pretraining_flops("mae_vit_large_patch16", False)
    assert whole == pytest.approx((ratio * encoder + decoder) / (encoder + decoder), rel=0.01)  # the decoder: ~same


def test_trend_rows_read_the_measured_accuracies(monkeypatch):
    scores = {(mae_design.MAE, "probe"): 80.0, (mae_design.WITH_M, "probe"): 70.0, (mae_design.NORM, "probe"): 79.0,
              (mae_design.MAE, "fine-tune"): 88.0, (mae_design.WITH_M, "fine-tune"): 89.0,
              (mae_design.NORM, "fine-tune"): 88.5}
    monkeypatch.setattr(mae_design, "accuracy", lambda variant, evaluation, quick: scores[variant, evaluation])
    assert mae_design.beats(mae_design.MAE, mae_design.WITH_M, "probe", False) == 1.0
    assert mae_design.beats(mae_design.MAE, mae_design.WITH_M, "fine-tune", False) == 0.0
    assert mae_design.beats(mae_design.NORM, mae_design.MAE, "fine-tune", False) == 1.0

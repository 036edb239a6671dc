"""The Transformer's Table 3 variants (research/reproduce/transformer_variants.py): overrides, trends, quick runs."""

import json
import math

import pytest

from research.models import build_model
from research.reproduce import TABLES, run_table, to_markdown
from research.reproduce import transformer_variants as tv


@pytest.fixture(autouse=True)
def _checkpoints_in_tmp(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # runs write checkpoints/ and data/tokenizers/ under the working directory


def _spec(name):
    options = tv.overrides(name)
    return json.loads(options[options.index("--model.init_args.model") + 1])


def test_a_variant_changes_only_its_setting_and_keeps_d_k_at_d_model_over_h():
    base = _spec("base")
    assert base["dim"] == 128 and base["num_heads"] == 4
    for name, variant in tv.VARIANTS.items():
        assert _spec(name) == {**base, **variant.model}
    model = build_model({**_spec("h1"), "vocab_size": 50})
    attention = model.encoder[0].attn
    # d_k = d_model / h, the paper's (A): one head of 128
    assert attention.num_heads == 1 and attention.proj.in_features // attention.num_heads == 128
    assert "--model.init_args.label_smoothing" not in tv.overrides("dropout0")
    assert tv.overrides("smoothing0")[-2:] == ("--model.init_args.label_smoothing", "0.0")
    with pytest.raises(KeyError):
        tv.overrides("h2")


def test_the_paper_figures_are_table_3s():
    paper = {name: (v.paper_ppl, v.paper_bleu) for name, v in tv.VARIANTS.items()}
    assert paper["base"] == (4.92, 25.8) and paper["h1"] == (5.29, 24.9) and paper["h16"] == (5.01, 25.4)
    assert paper["h8"] == (4.91, 25.8)  # the paper's h 16 (2x its base's heads, as ours h 8 is 2x our base's)
    assert paper["layers1"] == (6.11, 23.7) and paper["dim64"] == (5.75, 24.5)
    assert paper["dropout0"] == (5.77, 24.6) and paper["smoothing0"] == (4.67, 25.3)
    # the trends the rows claim hold in the paper's own figures
    assert min(tv.HEADS, key=lambda n: paper[n][1]) == "h1" and max(tv.HEADS, key=lambda n: paper[n][0]) == "h1"
    assert all(paper[n][1] < paper["base"][1] and paper[n][0] > paper["base"][0] for n in tv.SMALLER)
    assert paper["base"][1] > paper["dropout0"][1] and paper["base"][1] > paper["smoothing0"][1]
    assert paper["smoothing0"][0] < paper["base"][0]  # label smoothing hurts perplexity


def test_trend_rows_read_the_measured_figures(monkeypatch):
    figures = {name: {"ppl": 10.0, "bleu": 20.0} for name in tv.VARIANTS}
    figures["h1"] = {"ppl": 12.0, "bleu": 18.0}
    figures["layers1"] = {"ppl": 11.0, "bleu": 19.0}
    figures["dim64"] = {"ppl": 9.0, "bleu": 21.0}  # a smaller model that does better: 1 of 2 against the trend
    figures["smoothing0"] = {"ppl": 8.0, "bleu": 19.0}
    monkeypatch.setattr(tv, "measured", lambda name, quick: figures[name])
    assert tv._worst_of(tv.HEADS, "h1", "bleu", False) == 1.0 and tv._worst_of(tv.HEADS, "h1", "ppl", False) == 1.0
    assert tv._worst_of(tv.HEADS, "h16", "bleu", False) == 0.0
    assert tv.HEADS == ("h1", "base", "h8", "h16")  # the 1, 4, 8, 16 heads
    assert tv._worse_than_base(tv.SMALLER, "bleu", False) == 0.5
    assert tv._worse_than_base(tv.SMALLER, "ppl", False) == 0.5
    assert tv._better("base", "smoothing0", "bleu", False) == 1.0
    assert tv._better("smoothing0", "base", "ppl", False) == 1.0
    assert tv._better("base", "dropout0", "bleu", False) == 0.0  # a tie is not a win
    results = run_table(tv.TABLE, quick=False)
    rows = {r.label: r for r in results}
    share = rows["(C) smaller models (N, d_model halved) below the base in BLEU (share of 2)"]
    assert share.ours == 0.5 and not share.ok  # both must hold
    assert rows["(A) h 1, d_k 128: dev BLEU (paper, h 1, d_k 512: 24.9)"].ours == 18.0


def test_quick_variants_train_and_measure_on_the_validation_split():
    figures = tv.measured("h1", True)  # one variant (each run tokenises the corpus: seconds); the rest: slow test
    assert figures["ppl"] > 1 and math.isfinite(figures["ppl"])
    assert 0 <= figures["bleu"] <= 100


@pytest.mark.slow
def test_quick_table_measures_every_row():
    results = run_table(TABLES["transformer_variants"], quick=True)
    assert all(r.error is None for r in results), [r.extra.get("traceback") for r in results if r.error]
    markdown = to_markdown(tv.TABLE, results, quick=True)
    assert markdown.startswith(f"### {tv.TABLE.title} (quick settings")

"""The text_adversarial table: the quick run measures every row; embedding-PGD accuracy has its floor and ceiling."""

import math
from types import SimpleNamespace

import pytest
import torch

from research.data.tokenizer import SpecialTokens
from research.reproduce import run_table, text_adversarial, to_markdown
from research.tasks import SequenceClassification


@pytest.fixture(autouse=True)
def _checkpoints_in_tmp(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # runs write checkpoints/ and data/tokenizers/ under the working directory


def test_quick_table_measures_every_row():
    table = text_adversarial.TABLE
    results = run_table(table, quick=True)
    assert [r.label for r in results] == [row.label for row in table.rows]
    for result in results:
        assert result.error is None, result.extra.get("traceback")
        assert math.isfinite(result.ours)
    accuracies = {r.label: r.ours for r in results if "(%)" in r.label}
    assert len(accuracies) == 9 and all(0 <= value <= 100 for value in accuracies.values())
    for name in text_adversarial.NAMES.values():  # robust examples are also correct clean
        measured = text_adversarial.measured({v: k for k, v in text_adversarial.NAMES.items()}[name], True)
        assert all(measured[radius] <= measured["clean_attacked"] for radius in text_adversarial.RADII)
    assert results[0].ours in (0.0, 1.0)
    assert to_markdown(table, results, quick=True).startswith(f"### {table.title} (quick settings")
    # one pre-training serves the three fine-tunings
    assert text_adversarial.pretraining.cache_info().misses == 1


def test_the_trend_row_reads_the_clean_accuracies(monkeypatch):
    clean = {"natural": 60.0, "freelb": 61.0}
    monkeypatch.setattr(text_adversarial, "measured", lambda name, quick: {"clean": clean[name]})
    assert text_adversarial.freelb_ahead(False) == 1.0
    clean["freelb"] = 59.0
    assert text_adversarial.freelb_ahead(False) == 0.0


def test_embedding_pgd_accuracy_lies_between_zero_and_clean():
    torch.manual_seed(0)
    task = SequenceClassification({"name": "bert_tiny_classifier", "vocab_size": 30, "num_classes": 3}).eval()
    tokens = torch.randint(5, 30, (16, 9))
    tokens[:, 0], tokens[:, -1] = 2, 3  # [CLS] ... [SEP]
    with torch.no_grad():  # labels the model gets right, so that clean accuracy is 100%
        labels = task(tokens).argmax(-1)
    batch = {"tokens": tokens, "lengths": torch.full((16,), 9), "labels": labels}
    data = SimpleNamespace(special_tokens=SpecialTokens(pad=0, unk=1, cls=2, sep=3, mask=4),
                           test_dataloader=lambda: [batch])
    tiny, huge = 1e-6, 100.0
    accuracy = text_adversarial.embedding_robust_accuracy(task, data, radii=(tiny, huge), steps=10)
    assert accuracy["clean_attacked"] == 100.0 and accuracy[tiny] == 100.0  # no room to move: the clean ceiling
    assert accuracy[huge] < 50.0  # tokens moved by 100x their norm: most predictions flip

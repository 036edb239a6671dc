"""Robust accuracy against eps, with binomial intervals: the PNG, the wandb record, the interval itself."""

import sys
import types

import numpy as np
import pytest
from PIL import Image

from research.attacks.evaluation import wilson_interval
from research.attacks.plot import log_to_wandb, plot_robust_accuracy


def row(attack, eps, correct, total=200, **kw):
    low, high = wilson_interval(correct, total)
    base = {"attack": attack, "norm": None if attack == "none" else "linf", "eps": eps, "steps": 40,
            "step_size": 0.01, "restarts": 1, "correct": correct, "total": total, "accuracy": correct / total,
            "ci_low": low, "ci_high": high}
    return {**base, **kw}


ROWS = [row("none", 0.0, 190), row("fgsm", 0.1, 150, steps=1), row("fgsm", 0.3, 60, steps=1),
        row("pgd", 0.1, 120), row("pgd", 0.3, 10)]


@pytest.mark.parametrize(("correct", "total"), [(0, 10), (1, 10), (5, 10), (10, 10), (81, 263), (436, 1000),
                                                (0, 1), (999, 1000)])
def test_wilson_interval_matches_scipy(correct, total):
    stats = pytest.importorskip("scipy.stats")
    expected = stats.binomtest(correct, total).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(correct, total) == pytest.approx((expected.low, expected.high), abs=1e-9)


def test_wilson_interval_textbook_values_and_errors():
    # 0 of 10: [0, z^2 / (n + z^2)] = [0, 27.8%]; the normal approximation would give the empty [0, 0].
    assert wilson_interval(0, 10) == pytest.approx((0.0, 1.959964**2 / (10 + 1.959964**2)), abs=1e-6)
    assert wilson_interval(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    # 10 of 10 mirrors it; 50% is symmetric about 1/2.
    assert wilson_interval(10, 10) == pytest.approx((1 - 0.27753, 1.0), abs=1e-5)
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(1 - high) and low == pytest.approx(0.4038, abs=1e-4)
    # A 99% interval is wider than a 95% one.
    assert wilson_interval(30, 100, confidence=0.99)[0] < wilson_interval(30, 100)[0]
    with pytest.raises(ValueError, match="need 0 <= correct <= total and total >= 1"):
        wilson_interval(3, 2)
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\)"):
        wilson_interval(1, 2, confidence=95)


def test_the_png_is_a_picture_of_the_curves(tmp_path):
    path = plot_robust_accuracy(ROWS, tmp_path / "figures" / "robust.png", title="200 digits, a test checkpoint")
    assert path == tmp_path / "figures" / "robust.png" and path.stat().st_size > 10_000
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 500 and image.height > 300
        pixels = np.asarray(image.convert("RGB"))
    # Not a blank canvas: the two attacks' default colours (blue, orange) are drawn.
    blue, orange = np.array([31, 119, 180]), np.array([255, 127, 14])
    for colour in (blue, orange):
        assert (np.abs(pixels.astype(int) - colour).sum(-1) < 30).sum() > 100


def test_wandb_gets_the_tables_the_picture_and_the_summary(monkeypatch, tmp_path):
    """A stand-in for the wandb module records what would be logged (no service, no files)."""
    logged, runs = {}, []

    class Run:
        def __init__(self, **init):
            self.init, self.summary, self.finished = init, {}, False
            self.dir, self.url = str(tmp_path / "run" / "files"), None
            runs.append(self)

        def log(self, values):
            logged.update(values)

        def finish(self):
            self.finished = True

    fake = types.SimpleNamespace(init=lambda **kw: Run(**kw), Table=lambda columns, data: ("table", columns, data),
                                 Image=lambda path: ("image", path))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    checks = [{"check": "more steps do not raise accuracy", "setting": "PGD-10 / 40 / 100 at linf eps 0.3",
               "accuracies": [0.05, 0.05, 0.05], "p_value": 1.0, "passed": True, "warning": None}]
    report = {"config": "c.yaml", "ckpt_path": "last.ckpt", "split": "test", "seed": 0, "rows": ROWS,
              "sanity": checks}
    where = log_to_wandb(report, image=None, name="attack-tiny", title="t")
    (run,) = runs
    assert run.init["mode"] == "offline" and run.init["job_type"] == "attack" and run.init["config"]["split"] == "test"
    assert run.finished and where == f"offline run in {tmp_path / 'run'} (wandb sync uploads it)"
    kind, columns, data = logged["robust_accuracy"]
    assert kind == "table" and len(data) == len(ROWS) and "ci_low" in columns
    assert logged["sanity_panel"][2][0][:2] == ["more steps do not raise accuracy", "PGD-10 / 40 / 100 at linf eps 0.3"]
    assert logged["robust_accuracy_plot"][0] == "image"  # drawn to a temporary file, as no --plot was given
    assert run.summary["accuracy/clean"] == 0.95 and run.summary["accuracy/pgd_linf_eps0.3"] == 0.05

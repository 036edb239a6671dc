"""The Madry and Goodfellow tables report AutoAttack as the robust figure and FGSM/PGD as bounds.

Nothing trains here: the runs and attacks are stand-ins that record what the tables ask for. The
quick tables themselves (which do train and attack) run in tests/reproduce/test_tables.py.
"""

import pytest

from research.reproduce import goodfellow, madry
from research.reproduce.runs import Run
from research.reproduce.table import run_table, to_markdown


@pytest.fixture
def recorded(monkeypatch):
    """Stand-ins for training and attacking: each attack call is recorded, and answers 90 - 10 * its position."""
    calls = []

    def attack_checkpoint(config, checkpoint, overrides=(), *, attacks, eps, steps=40, step_size=None, restarts=1,
                          num_samples=1000, seed=0):
        calls.append({"config": config, "attacks": list(attacks), "eps": eps, "steps": steps, "restarts": restarts,
                      "num_samples": num_samples, "seed": seed})
        return {"clean": 95.0, **{name: 90.0 - 10 * i for i, name in enumerate(attacks)}}

    def fit_run(config, overrides=(), *, quick=False):
        return Run(metrics={}, best="", last=f"{config}.ckpt", seconds=0.0, cpu_seconds=0.0)

    for module in (madry, goodfellow):
        monkeypatch.setattr(module, "attack_checkpoint", attack_checkpoint)
        monkeypatch.setattr(module, "fit_run", fit_run)
    for cached in (madry.evaluate, goodfellow.error_rates, goodfellow.autoattack_errors):
        cached.cache_clear()
    yield calls
    for cached in (madry.evaluate, goodfellow.error_rates, goodfellow.autoattack_errors):
        cached.cache_clear()  # the stand-ins' numbers must not leak into other tests


def _labels(table):
    return [row.label for row in table.rows]


def test_madry_headline_is_autoattack_and_every_fgsm_or_pgd_row_is_an_upper_bound():
    rows = {row.label: row for row in madry.TABLE.rows}
    headline = rows["PGD training, AutoAttack (robust accuracy)"]
    assert headline.paper == 88.5 and "fra31/auto-attack" in headline.source and "89.62" in headline.source
    assert "natural training, AutoAttack" in rows
    attacked = [label for label in rows if ("FGSM" in label or "PGD-" in label) and "minus" not in label]
    assert len(attacked) == 5 and all("(upper bound" in label for label in attacked)
    # the headline comes before the bounds of its model
    labels = _labels(madry.TABLE)
    assert labels.index("PGD training, AutoAttack (robust accuracy)") < labels.index(
        "PGD training, PGD-40 (upper bound)")
    for words in ("worst case per digit", "every restart", "upper bound", "correctly clean"):
        assert words in madry.TABLE.notes


def test_madry_attacks_every_row_on_the_same_digits_and_runs_autoattack_on_both_models(recorded):
    scores = madry.evaluate(madry.ROBUST, False)
    natural = madry.evaluate(madry.NATURAL, False)
    assert {(c["num_samples"], c["seed"], c["eps"]) for c in recorded} == {(madry.SAMPLES, 0, madry.EPS)}
    assert [c["attacks"] for c in recorded if c["config"] == madry.NATURAL] == [["fgsm", "autoattack"]]
    robust = [(c["attacks"], c["steps"], c["restarts"]) for c in recorded if c["config"] == madry.ROBUST]
    assert robust == [(["fgsm", "autoattack"], 40, 1), (["pgd"], 40, 1), (["pgd"], 100, 1),
                      (["pgd"], 100, madry.RESTARTS)]
    assert natural == {"clean": 95.0, "fgsm": 90.0, "autoattack": 80.0}
    assert scores["autoattack"] == 80.0 and scores["pgd40"] == 90.0
    # the gap row: the PGD-40 bound minus AutoAttack on the same digits
    gap = next(row for row in madry.TABLE.rows if "minus AutoAttack" in row.label)
    assert gap.paper is None and gap.measure(False) == pytest.approx(10.0)


def test_madry_quick_runs_autoattack_itself_on_the_quick_digits(recorded):
    madry.evaluate(madry.ROBUST, True)
    assert all(c["num_samples"] == 20 for c in recorded)
    assert ["fgsm", "autoattack"] in [c["attacks"] for c in recorded]  # not a weaker stand-in


def test_goodfellow_keeps_fgsm_as_the_claim_and_adds_autoattack_as_context():
    rows = {row.label: row for row in goodfellow.TABLE.rows}
    fgsm = [label for label in rows if "FGSM error (" in label]
    assert [rows[label].paper for label in fgsm] == [89.4, 17.9]
    assert all("lower bound on robust error" in label for label in fgsm)
    standard = next(row for row in goodfellow.TABLE.rows if "AutoAttack error (standard evaluation" in row.label)
    assert standard.paper is None and "no paper figure" in standard.source  # printed, never judged
    trend = rows[goodfellow.TREND_LABEL]
    assert (trend.paper, trend.tolerance) == (1.0, 0.5)
    for words in ("worst case per digit", "lower bound", "upper bound on robust accuracy"):
        assert words in goodfellow.TABLE.notes


def test_goodfellow_compares_autoattack_and_fgsm_digit_for_digit(recorded):
    errors = goodfellow.autoattack_errors(goodfellow.ADVERSARIAL, False)
    assert [(c["attacks"], c["num_samples"], c["eps"]) for c in recorded] == [
        (["fgsm", "autoattack"], goodfellow.AUTOATTACK_SAMPLES, goodfellow.EPS)]  # one call: the same digits
    assert errors == {"clean": 5.0, "fgsm": 10.0, "autoattack": 20.0}
    assert goodfellow.autoattack_at_least_fgsm(goodfellow.ADVERSARIAL, False) == 1.0


def test_goodfellow_trend_row_fails_when_autoattack_finds_fewer_errors_than_fgsm(monkeypatch, tmp_path):
    monkeypatch.setattr(goodfellow, "autoattack_errors",
                        lambda config, quick: {"clean": 5.0, "fgsm": 30.0, "autoattack": 20.0})
    table = goodfellow.TABLE
    trend = next(row for row in table.rows if row.label == goodfellow.TREND_LABEL)
    [result] = run_table(type(table)(name="t", title="t", unit=table.unit, rows=[trend], cache=False))
    assert result.ours == 0.0 and not result.ok
    assert f"| {goodfellow.TREND_LABEL} | 1.00 | 0.00 | -1.00 | no (±0.5) |" in to_markdown(table, [result])

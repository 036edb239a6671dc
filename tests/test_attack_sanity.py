"""The sanity panel of ``python -m research attack``: the signs of gradient masking (issue 14, item 3).

A normal model trained in the test (an MLP on 2,000 embedded MNIST digits, under a second) passes
every check; the same model behind a quantisation of its input (round to 1/255: the gradient is
zero almost everywhere) fails the large-eps check. Each check is also made to fail on its own with
attacks whose outcome the test decides, so none of them can pass by construction.
"""

import pytest
import torch
from mnist_digits import digits, fit_digits
from torch import nn

from research.attacks import registry
from research.attacks.sanity import rise_p_value, sanity_markdown, sanity_panel

CHECKS = ("more steps do not raise accuracy", "more restarts do not raise accuracy",
          "accuracy reaches 0% at L-inf eps 0.5", "iterative at least as strong as one step")


@pytest.fixture(scope="module")
def mlp():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return fit_digits(nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10)),
                      epochs=3, count=2000)


@pytest.fixture(scope="module")
def test_digits():
    x, y = digits("test", 100)
    return [(x[:50], y[:50]), (x[50:], y[50:])]


class Quantised(nn.Module):
    """The model on inputs rounded to 1/255: the same predictions, a zero gradient almost everywhere."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 255) / 255)


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("linf", 0.3), ("l2", 1.5)])
def test_a_normally_trained_model_passes(mlp, test_digits, norm, eps):
    torch.manual_seed(0)
    checks = sanity_panel(mlp, test_digits, eps=eps, norm=norm)
    assert [c["check"] for c in checks] == list(CHECKS)
    assert all(c["passed"] and c["warning"] is None for c in checks), sanity_markdown(checks)
    assert checks[0]["total"] == 100
    steps, restarts, large, one_step = checks
    assert large["accuracies"][-1] == 0  # PGD-40 at L-inf 0.5 fools every digit
    if eps == 0.1:  # mid-range: the comparisons say something
        assert 0.2 < steps["accuracies"][0] < 0.6
        assert one_step["accuracies"][0] >= one_step["accuracies"][1]
    assert "WARN" not in sanity_markdown(checks)


def test_masked_gradients_are_flagged(mlp, test_digits):
    masked = Quantised(mlp)
    with torch.no_grad():
        x = torch.cat([x for x, _ in test_digits])
        assert torch.equal(masked(x).argmax(-1), mlp(x).argmax(-1))  # the same classifier on the data
    torch.manual_seed(0)
    checks = sanity_panel(masked, test_digits, eps=0.3)
    failed = {c["check"]: c for c in checks if not c["passed"]}
    large = failed["accuracy reaches 0% at L-inf eps 0.5"]
    assert large["accuracies"][-1] > 0.5  # the unmasked model is at 0% there
    printed = sanity_markdown(checks)
    assert "| accuracy reaches 0% at L-inf eps 0.5 | PGD-40 at linf eps 0.3 / 0.5 |" in printed
    assert "| WARN |" in printed
    warning = next(line for line in printed.splitlines() if line.startswith("WARNING (accuracy reaches 0%"))
    for advice in ("gradient masking", "quantised", "restarts", "AutoAttack", "Square"):
        assert advice in warning


class Brightness(nn.Module):
    """Class 0 for bright images, class 1 for dark ones."""

    def forward(self, x):
        score = x.mean((1, 2, 3)) - 0.5
        return torch.stack([score, -score], -1)


def fake_attacks(monkeypatch, pgd_fools, fgsm_fools=lambda: False):
    """Replace the attacks behind the registry's entries by ones that fool the model when told to."""

    def pgd(model, x, y, *, eps, step_size, steps, norm, restarts):
        return 1 - x if pgd_fools(eps=eps, steps=steps, restarts=restarts) else x

    monkeypatch.setattr(registry, "pgd", pgd)
    monkeypatch.setattr(registry, "fgsm", lambda model, x, y, *, eps: 1 - x if fgsm_fools() else x)


FAILURES = {
    # PGD-10 fools everything, PGD-40 and PGD-100 nothing: accuracy rises with the steps.
    "more steps do not raise accuracy": dict(pgd_fools=lambda eps, steps, restarts: steps == 10 or eps == 0.5),
    # One restart fools everything, five nothing.
    "more restarts do not raise accuracy": dict(pgd_fools=lambda eps, steps, restarts: restarts == 1),
    # Every attack fools everything, except at eps 0.5.
    "accuracy reaches 0% at L-inf eps 0.5": dict(pgd_fools=lambda eps, steps, restarts: eps != 0.5),
    # FGSM fools everything, PGD nothing except at eps 0.5.
    "iterative at least as strong as one step": dict(pgd_fools=lambda eps, steps, restarts: eps == 0.5,
                                                     fgsm_fools=lambda: True),
}


@pytest.mark.parametrize("check", CHECKS)
def test_each_check_fails_on_its_own(monkeypatch, check):
    fake_attacks(monkeypatch, **FAILURES[check])
    x, y = torch.full((12, 1, 2, 2), 0.7), torch.zeros(12, dtype=torch.long)  # all bright, all correct
    checks = sanity_panel(Brightness(), [(x, y)], eps=0.3)
    assert [c["check"] for c in checks if not c["passed"]] == [check]
    warning = next(c["warning"] for c in checks if not c["passed"])
    assert "gradient masking" in warning and "Square" in warning
    if check != "accuracy reaches 0% at L-inf eps 0.5":
        assert "12 examples" in warning and "0 the other way" in warning and "p = 0.00024" in warning


def test_a_rise_within_the_noise_of_random_starts_passes(monkeypatch):
    """PGD-100 leaves 2 of 100 examples correct that PGD-10 fooled: p = 0.25, not a warning."""
    fake_attacks(monkeypatch, pgd_fools=lambda eps, steps, restarts: True)
    x, y = torch.full((100, 1, 2, 2), 0.7), torch.zeros(100, dtype=torch.long)
    real = registry.pgd

    def pgd(model, x, y, *, steps, **kw):
        fooled = real(model, x, y, steps=steps, **kw)
        return torch.where(torch.arange(len(x)).view(-1, 1, 1, 1) < 2, x, fooled) if steps == 100 else fooled

    monkeypatch.setattr(registry, "pgd", pgd)
    steps = sanity_panel(Brightness(), [(x, y)], eps=0.3)[0]
    assert steps["correct"] == [0, 0, 2] and steps["passed"] and steps["p_value"] == pytest.approx(0.25)


def test_rise_p_value_is_the_exact_one_sided_sign_test():
    def p(gained, lost, same=3):
        weaker = torch.tensor([False] * gained + [True] * lost + [True] * same)
        stronger = torch.tensor([True] * gained + [False] * lost + [True] * same)
        return rise_p_value(weaker, stronger)

    assert p(0, 0) == 1.0 and p(0, 4) == 1.0
    assert p(5, 0) == pytest.approx(1 / 32)
    assert p(3, 1) == pytest.approx(5 / 16)  # P(X >= 3), X ~ Binomial(4, 1/2)
    binom = pytest.importorskip("scipy.stats").binomtest
    assert p(9, 2) == pytest.approx(binom(9, 11, 0.5, alternative="greater").pvalue)

"""The AutoAttack ensemble: worst case per example, only still-robust examples attacked, against torchattacks."""

import pytest
import torch
from test_torchattacks_agreement import accuracy, digits
from torch import nn

import research.attacks.ensemble as aa
from research.attacks import autoattack, autoattack_ensemble, pgd

torchattacks = pytest.importorskip("torchattacks")


class Recorder:
    """A component that fools a chosen set of examples (by their index in x) and records whom it saw."""

    def __init__(self, model, x, fools):
        self.model, self.x, self.fools, self.seen = model, x, set(fools), []

    def __call__(self, model, x, y, *, eps, norm, num_classes, eval_mode):
        rows = [int(torch.nonzero((self.x == xi).flatten(1).all(1))[0]) for xi in x]
        self.seen.append(rows)
        out = x.clone()
        for i, row in enumerate(rows):
            if row in self.fools:  # the nearest image of another class, moved within eps
                out[i] = (x[i] + eps * torch.sign(torch.randn_like(x[i]))).clamp(0, 1)
                while model(out[i : i + 1]).argmax(-1) == y[i]:
                    out[i] = (x[i] + eps * torch.sign(torch.randn_like(x[i]))).clamp(0, 1)
        return out


def test_each_attack_sees_only_the_examples_still_robust_and_the_worst_case_is_kept(mlp, monkeypatch):
    x, y = digits("test", 12)
    with torch.no_grad():
        clean = mlp(x).argmax(-1) == y
    robust = clean.nonzero().squeeze(1).tolist()
    first, second = Recorder(mlp, x, robust[:2]), Recorder(mlp, x, robust[2:4])
    monkeypatch.setattr(aa, "COMPONENTS", {"one": (first, 2), "two": (second, 2), "three": (Recorder(mlp, x, []), 2)})
    result = autoattack_ensemble(mlp, x, y, eps=0.9, attacks=("one", "two", "three"))
    assert first.seen == [robust] and second.seen == [robust[2:]]  # misclassified ones are never attacked
    expected = clean.clone()
    expected[robust[:4]] = False
    assert torch.equal(result.robust, expected) and torch.equal(result.clean, clean)
    assert result.robust_after["one"].sum() == len(robust) - 2 and result.robust_after["two"].sum() == len(robust) - 4
    with torch.no_grad():
        assert not (mlp(result.x_adv[robust[:4]]).argmax(-1) == y[robust[:4]]).any()  # the fooling points are kept


def test_a_model_with_three_classes_skips_apgd_t_and_says_why():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(6, 1, 4, 4), torch.randint(0, 3, (6,))
    result = autoattack_ensemble(model, x, y, eps=0.1, attacks=("apgd-ce", "apgd-t"))
    assert list(result.robust_after) == ["apgd-ce"]
    assert result.skipped == {"apgd-t": "needs at least 4 classes, the model has 3"}


def test_an_unknown_component_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown AutoAttack component\(s\) \['apgd'\]; choose from"):
        autoattack(nn.Flatten(), torch.rand(1, 1, 2, 2), torch.zeros(1, dtype=torch.long), eps=0.1, attacks=["apgd"])


def test_the_ensemble_is_at_least_as_strong_as_pgd_and_each_of_its_attacks(mlp):
    """Quick version: APGD-CE and APGD-T only (FAB-T and Square are the slow ones), 150 digits."""
    torch.manual_seed(0)
    x, y = digits("test", 150)
    eps = 0.05
    result = autoattack_ensemble(mlp, x, y, eps=eps, attacks=("apgd-ce", "apgd-t"))
    assert 0.2 < result.robust.float().mean() < 0.8  # mid-range, so the comparisons can tell
    x_pgd = pgd(mlp, x, y, eps=eps, step_size=2.5 * eps / 40, steps=40)
    with torch.no_grad():
        pgd_robust = result.clean & (mlp(x_pgd).argmax(-1) == y)
        assert torch.equal(result.robust, result.clean & (mlp(result.x_adv).argmax(-1) == y))
    assert result.robust.sum() <= pgd_robust.sum()
    assert (result.x_adv - x).abs().amax() <= eps + 1e-6 and 0 <= result.x_adv.min() and result.x_adv.max() <= 1


@pytest.mark.slow
@pytest.mark.parametrize("norm, eps", [("linf", 0.05), ("l2", 1.0)])
def test_standard_ensemble_within_one_point_of_torchattacks_autoattack(mlp, norm, eps):
    """The whole standard version against torchattacks' AutoAttack (a copy of the official code): ~4 min."""
    x, y = digits("test", 300)
    torch.manual_seed(0)
    ours = autoattack(mlp, x, y, eps=eps, norm=norm)
    theirs = torchattacks.AutoAttack(mlp, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, version="standard",
                                     n_classes=10, seed=0)(x, y)
    with torch.no_grad():
        clean = mlp(x).argmax(-1) == y
        ours_acc = (clean & (mlp(ours).argmax(-1) == y)).float().mean().item()
        theirs_acc = (clean & (mlp(theirs).argmax(-1) == y)).float().mean().item()
    assert 0.2 < ours_acc < 0.8, f"robust accuracy {ours_acc:.3f}: not the intended mid-range comparison"
    assert abs(ours_acc - theirs_acc) <= 0.01, f"ours {ours_acc:.3f}, torchattacks {theirs_acc:.3f}"
    assert accuracy(mlp, x, y) > 0.85

"""Auto-PGD (Croce and Hein 2020) against torchattacks' copy of the official code, and its properties.

The agreement tests attack a small MLP trained in the test on 4,000 embedded MNIST digits (the
helpers of test_torchattacks_agreement.py), on 500 test digits, at an eps where the robust accuracy
is mid-range, so that 1 point (5 digits) means something.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from test_torchattacks_agreement import accuracy, digits
from tiny_classifiers import assert_same_state, snapshot, tiny_cnn
from torch import nn

from research.attacks import pgd
from research.attacks.apgd import _checkpoints, _single_run, apgd, apgd_targeted, dlr_loss, targeted_dlr_loss
from research.attacks.balls import l2_norm

torchattacks = pytest.importorskip("torchattacks")

# Mid-range robust accuracy for the MLP below (clean 90.6% on the 500 digits).
EPS = {"linf": 0.05, "l2": 1.0}
TA_NORM = {"linf": "Linf", "l2": "L2"}
# APGD-T over 3 target classes in the default run (torchattacks' APGDT takes n_classes = targets + 1).
TARGETS = 3


@pytest.fixture(scope="module")
def test_digits():
    return digits("test", 500)


@pytest.fixture(scope="module")
def ours(mlp, test_digits):
    """Our attacks on the digits, computed once per (norm, attack) and shared by the tests."""
    x, y = test_digits
    cache = {}

    def get(norm: str, attack: str) -> torch.Tensor:
        if (norm, attack) not in cache:
            torch.set_num_threads(1)
            torch.manual_seed(0)  # torchattacks seeds 0 too: both draw the same random starts
            if attack == "t":
                cache[norm, attack] = apgd_targeted(mlp, x, y, eps=EPS[norm], norm=norm, target_classes=TARGETS)
            else:
                cache[norm, attack] = apgd(mlp, x, y, eps=EPS[norm], norm=norm, loss=attack)
        return cache[norm, attack]

    return get


@pytest.mark.parametrize("attack", ["ce", "dlr", "t"], ids=["APGD-CE", "APGD-DLR", "APGD-T"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_robust_accuracy_within_one_point_of_torchattacks(mlp, test_digits, ours, norm, attack):
    # Measured: L-inf CE 62.0 / 62.0, DLR 62.4 / 62.4, T 61.2 / 61.2; L2 CE 45.8 / 45.8,
    # DLR 47.0 / 47.0, T 45.4 / 45.4 (ours / torchattacks, %; clean 90.6).
    x, y = test_digits
    if attack == "t":
        theirs = torchattacks.APGDT(mlp, norm=TA_NORM[norm], eps=EPS[norm], steps=100, n_classes=TARGETS + 1)(x, y)
    else:
        theirs = torchattacks.APGD(mlp, norm=TA_NORM[norm], eps=EPS[norm], steps=100, loss=attack)(x, y)
    adv = ours(norm, attack)
    acc_ours, acc_theirs = accuracy(mlp, adv, y), accuracy(mlp, theirs, y)
    assert 0.2 <= acc_ours <= 0.8, f"robust accuracy {acc_ours:.3f}: the comparison is not the intended one"
    assert abs(acc_ours - acc_theirs) <= 0.01, f"ours {acc_ours:.3f}, torchattacks {acc_theirs:.3f}"
    if attack != "t":
        # Same random starts (both seeded 0), steps, projections and checkpoints: the digits both
        # fool are fooled by the same points, up to rounding (which L2's divisions amplify over 100
        # steps). Not for APGD-T: torchattacks' APGDT L2 step takes the first example's step size
        # for all, unlike the official code.
        with torch.no_grad():
            both = (mlp(adv).argmax(1) != y) & (mlp(theirs).argmax(1) != y)
        same = (adv - theirs).abs().flatten(1).amax(1) < 1e-3
        assert same[both].float().mean() > 0.9


@pytest.mark.parametrize("attack", ["ce", "dlr", "t"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_stays_in_the_ball_and_in_range(test_digits, ours, norm, attack):
    x, _ = test_digits
    adv = ours(norm, attack)
    assert adv.dtype == x.dtype and adv.shape == x.shape
    assert adv.min() >= 0 and adv.max() <= 1
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else l2_norm(delta)
    assert (size <= EPS[norm] * (1 + 1e-5)).all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgd_ce_100_is_at_least_as_strong_as_pgd_40(mlp, test_digits, ours, norm):
    # Measured: L-inf 62.0% vs PGD about 62.6%, L2 45.8% vs about 48.0%.
    x, y = test_digits
    torch.manual_seed(0)
    baseline = pgd(mlp, x, y, eps=EPS[norm], norm=norm, steps=40, step_size=2.5 * EPS[norm] / 40)
    assert accuracy(mlp, ours(norm, "ce"), y) <= accuracy(mlp, baseline, y)


def paper_checkpoints(steps: int) -> list[int]:
    """Section 3.2: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06); w_j = ceil(p_j N)."""
    # In hundredths, so that the recursion is exact.
    p = [0, 22]
    while p[-1] + max(p[-1] - p[-2] - 3, 6) <= 100:
        p.append(p[-1] + max(p[-1] - p[-2] - 3, 6))
    return [-(-pj * steps // 100) for pj in p[1:]]


@pytest.mark.parametrize("steps", [100, 200, 1000])
def test_checkpoints_are_the_papers_sequence(steps):
    assert _checkpoints(steps) == paper_checkpoints(steps)
    if steps == 100:
        assert _checkpoints(steps) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_checkpoints_of_other_lengths_follow_the_official_whole_step_intervals():
    # int(0.22 N) first, then int(0.03 N) shorter each, at least int(0.06 N): for N = 50, intervals
    # 11, 10, 9, 8, 7, where ceil(p_j N) would give 11, 21, 29, 35, 40, 44, 47, 50.
    assert _checkpoints(50) == [11, 21, 30, 38, 45]
    assert _checkpoints(10) == list(range(2, 11))
    assert _checkpoints(1) == [1] and _checkpoints(0) == []


class Scripted(nn.Module):
    """Logits (0, v_k) at the k-th call: the cross-entropy of class 0 is softplus(v_k), rising with v_k."""

    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.values, self.calls = values, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.values[min(self.calls, len(self.values) - 1)]
        self.calls += 1
        # 0 * x keeps the input in the graph, so the attack has a (zero) gradient to take.
        return torch.stack([torch.zeros(len(x)), torch.full((len(x),), v)], 1) + 0 * x.flatten(1).sum(1, keepdim=True)


def step_sizes_under(values: list[float], steps: int = 100) -> list[float]:
    """The step size, in units of eps, at each iteration of one APGD run whose losses follow ``values``."""
    sizes = []
    x0 = torch.full((1, 1, 2, 2), 0.5)

    def ce(logits, y):
        return F.cross_entropy(logits, y, reduction="none")

    _single_run(Scripted(values), x0, torch.zeros(1, dtype=torch.long), ce, eps=0.125, norm="linf",
                steps=steps, rho=0.75, dtype=torch.float32, step_sizes=sizes)
    # eps and its halvings are powers of 2, so the ratios are exact.
    return [(s / 0.125).item() for s in sizes]


def halvings(sizes: list[float]) -> list[int]:
    """The iterations after which the step size was halved."""
    return [i for i in range(1, len(sizes)) if sizes[i] == sizes[i - 1] / 2]


def test_step_size_halves_at_the_checkpoints_when_the_loss_stalls():
    # Condition 1: no step raises the loss, so every checkpoint halves the step size from 2 eps.
    sizes = step_sizes_under([1.0] * 101)
    assert len(sizes) == 100 and sizes[0] == 2  # section 3.1: eta = 2 eps at first
    assert halvings(sizes) == [22, 41, 57, 70, 80, 87, 93, 99]  # the size of step 23 is halved after step 22
    assert sizes[-1] == 2 / 2**8


def test_step_size_is_kept_while_the_loss_rises():
    assert set(step_sizes_under([float(k) for k in range(101)])) == {2}


@pytest.mark.parametrize(("rises", "halved"), [(16, True), (17, False)])
def test_condition_1_threshold_is_rho_times_the_interval(rises, halved):
    # The first interval has 22 steps; rho * 22 = 16.5. The first rise is counted from the start's
    # loss (values[0]); after the rises the loss stays flat.
    values = [float(min(k, rises)) for k in range(101)]
    assert (22 in halvings(step_sizes_under(values))) == halved


def test_condition_2_halves_when_the_best_loss_did_not_improve():
    # 22 rising steps (no halving at 22), then a drop and 19 small rises that stay below the best:
    # condition 1 does not fire (18 of 19 rises > 0.75 * 19), condition 2 does at checkpoint 41.
    values = [float(k) for k in range(23)] + [-100.0 + k for k in range(78)]
    assert halvings(step_sizes_under(values))[:1] == [41]


def test_dlr_losses_equal_the_papers_formulas_on_hand_made_logits():
    z = torch.tensor([[4.0, 1.0, 3.0, 0.0, 2.0],   # y = 0 on top: -(4 - 3) / (4 - 2)
                      [4.0, 1.0, 3.0, 0.0, 2.0],   # y = 2 second: -(3 - 4) / (4 - 2)
                      [0.5, 5.0, -1.0, 2.0, 1.0]])  # y = 3 second: -(2 - 5) / (5 - 1)
    y = torch.tensor([0, 2, 3])
    expected = torch.tensor([-(4 - 3) / (4 - 2), -(3 - 4) / (4 - 2), -(2 - 5) / (5 - 1)])
    torch.testing.assert_close(dlr_loss(z, y), expected)
    t = torch.tensor([2, 4, 0])
    # eq. 7: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    expected_t = torch.tensor([-(4 - 3) / (4 - (2 + 1) / 2), -(3 - 2) / (4 - (2 + 1) / 2),
                               -(2 - 0.5) / (5 - (1 + 0.5) / 2)])
    torch.testing.assert_close(targeted_dlr_loss(z, y, t), expected_t)
    # Invariant to shifting and scaling the logits, and equal to the official formulas (as torchattacks copies them).
    logits, labels, targets = torch.randn(64, 10), torch.randint(10, (64,)), torch.randint(10, (64,))
    torch.testing.assert_close(dlr_loss(3 * logits + 1, labels), dlr_loss(logits, labels), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(dlr_loss(logits, labels), torchattacks.APGD(nn.Identity()).dlr_loss(logits, labels))
    official_t = torchattacks.APGDT(nn.Identity()).dlr_loss_targeted(logits, labels, targets)
    torch.testing.assert_close(targeted_dlr_loss(logits, labels, targets), official_t)


@pytest.mark.parametrize("eval_mode", [True, False])
@pytest.mark.parametrize("targeted", [False, True])
def test_no_parameter_gradient_and_batchnorm_statistics_unchanged(eval_mode, targeted):
    model = tiny_cnn(in_chans=1, height=6, width=6, num_classes=5, dropout=0.2).train()
    model[0].weight.grad = torch.ones_like(model[0].weight)  # an existing .grad must stay as it is
    before = snapshot(model)
    x, y = torch.rand(16, 1, 6, 6), torch.randint(5, (16,))
    attack = apgd_targeted if targeted else apgd
    kwargs = {"target_classes": 2} if targeted else {"loss": "dlr"}
    adv = attack(model, x, y, eps=0.1, steps=10, restarts=2, eval_mode=eval_mode, **kwargs)
    assert_same_state(before, snapshot(model))
    assert (adv - x).abs().max() <= 0.1 + 1e-6


def test_works_under_inference_mode(mlp, test_digits):
    x, y = test_digits[0][:32], test_digits[1][:32]
    torch.manual_seed(1)
    expected = apgd_targeted(mlp, x, y, eps=0.05, steps=10, target_classes=2)
    with torch.inference_mode():
        torch.manual_seed(1)
        got = apgd_targeted(mlp, x, y, eps=0.05, steps=10, target_classes=2)
    assert torch.equal(got, expected)


class Counting(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.batches = model, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(x))
        return self.model(x)


def test_restarts_attack_only_the_examples_still_robust(mlp, test_digits):
    x, y = test_digits[0][:200], test_digits[1][:200]
    steps = 10
    torch.manual_seed(0)
    once = apgd(mlp, x, y, eps=0.05, steps=steps)
    counting = Counting(mlp)
    torch.manual_seed(0)
    twice = apgd(counting, x, y, eps=0.05, steps=steps, restarts=2)
    with torch.no_grad():
        clean_robust = int((mlp(x).argmax(1) == y).sum())
        fooled_once = mlp(once).argmax(1) != y
    # One clean forward of all, then 1 + steps forwards of the clean-correct digits, then of those
    # the first restart left robust.
    assert counting.batches == [200] + [clean_robust] * (steps + 1) + [int((~fooled_once).sum())] * (steps + 1)
    # A digit the first restart fooled comes back from it unchanged; the second can only add fooled ones.
    assert torch.equal(twice[fooled_once], once[fooled_once])
    assert accuracy(mlp, twice, y) <= accuracy(mlp, once, y)


def test_eps_zero_returns_the_images_and_float64_stays_float64(mlp, test_digits):
    x, y = test_digits[0][:16].double(), test_digits[1][:16]
    model = mlp.double()
    try:
        adv = apgd(model, x, y, eps=0.0, steps=5, loss="dlr")
    finally:
        mlp.float()
    assert adv.dtype == torch.float64 and torch.equal(adv, x)


def test_user_errors_say_what_to_pass():
    model = tiny_cnn(in_chans=1, height=4, width=4, num_classes=5, batch_norm=False)
    x, y = torch.rand(4, 1, 4, 4), torch.randint(5, (4,))
    with pytest.raises(ValueError, match="target_classes=5 but the model has 5 classes"):
        apgd_targeted(model, x, y, eps=0.1, target_classes=5)
    with pytest.raises(ValueError, match="unknown loss"):
        apgd(model, x, y, eps=0.1, loss="cw")
    with pytest.raises(ValueError, match="integer class labels"):
        apgd(model, x, y.float(), eps=0.1)
    with pytest.raises(ValueError, match="rho"):
        apgd(model, x, y, eps=0.1, rho=1.5)
    with pytest.raises(ValueError, match=r"labels y must lie in \[0, 4\]"):
        apgd(model, x, y + 5, eps=0.1)
    with pytest.raises(ValueError, match="unknown norm"):
        apgd(model, x, y, eps=0.1, norm="l1")
    two_classes = tiny_cnn(in_chans=1, height=4, width=4, num_classes=2, batch_norm=False)
    with pytest.raises(ValueError, match="num_classes >= 3"):
        apgd(two_classes, x, y % 2, eps=0.1, loss="dlr")
    assert math.isfinite(apgd(two_classes, x, y % 2, eps=0.1, steps=2).sum().item())  # CE works with 2 classes


def test_apgd_t_attacks_each_target_class_on_the_examples_still_robust(mlp, test_digits):
    x, y = test_digits[0][:200], test_digits[1][:200]
    steps, sizes = 10, []
    counting = Counting(mlp)
    torch.manual_seed(0)
    apgd_targeted(counting, x, y, eps=0.05, steps=steps, target_classes=3)
    robust = mlp(x).argmax(1) == y
    expected = [200]
    torch.manual_seed(0)
    for rank in (2, 3, 4):
        # As the official code: the target is the class of rank-th highest clean logit, picked by
        # one forward of the still-robust examples, then one APGD run of 1 + steps forwards.
        idx = robust.nonzero().squeeze(1)
        expected += [len(idx)] * (steps + 2)
        with torch.no_grad():
            target = mlp(x[idx]).topk(rank, dim=1).indices[:, rank - 1]
        _, fooled, *_ = _single_run(mlp, x[idx], y[idx], lambda z, y, t=target: targeted_dlr_loss(z, y, t),
                                 eps=0.05, norm="linf", steps=steps, rho=0.75, dtype=torch.float32)
        sizes.append(len(idx))
        robust[idx[fooled]] = False
    assert counting.batches == expected
    assert sizes[0] > sizes[1] > sizes[2]  # each target class fools some more


class Constant(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.arange(5.0).expand(len(x), 5) + 0 * x.flatten(1).sum(1, keepdim=True)


def test_a_zero_input_gradient_is_reported_to_the_caller():
    # The official code's check: the DLR gradient of a model that ignores its input is exactly zero.
    x, y = torch.rand(3, 1, 4, 4), torch.full((3,), 4)
    with pytest.warns(UserWarning, match="3 of 3 examples have an input gradient of exactly zero") as record:
        apgd(Constant(), x, y, eps=0.1, steps=3, loss="dlr")
    assert record[0].filename == __file__

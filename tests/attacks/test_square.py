"""Square attack: the same images as torchattacks' (AutoAttack's) Square on a trained MNIST model, the
query budget per example, the threat model, the model's state, the schedule and pattern, argument checks.

The MNIST model is conftest's ``seeded_mlp`` (trained once per module, in about a second); the
Square property tests draw their problems from attack_properties.py.
"""

import pytest
import torch
from attack_properties import (
    assert_in_the_ball_and_every_changed_point_fools,
    distance,
    norms_and_eps,
    problems,
    set_state,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from test_torchattacks_agreement import accuracy, digits
from tiny_classifiers import assert_same_state, snapshot, tiny_cnn
from torch import nn

from research.attacks.square import _pseudo_gaussian, p_schedule, square

torchattacks = pytest.importorskip("torchattacks")


def ours_and_theirs(model, x, y, *, norm, eps, queries, seed) -> tuple[torch.Tensor, torch.Tensor]:
    """Our Square and torchattacks' (AutoAttack's code), both from ``seed``."""
    torch.manual_seed(seed)
    ours = square(model, x, y, eps=eps, norm=norm, queries=queries)
    attack = torchattacks.Square(model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, n_queries=queries,
                                 p_init=0.8, loss="margin", seed=seed)
    return ours, attack(x, y)


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.07), ("l2", 1.3)])
def test_same_adversarial_images_as_torchattacks_from_the_same_seed(seeded_mlp, norm, eps):
    # 500 queries instead of AutoAttack's 5,000 (the slow test below runs those), the schedule of p
    # rescaled to them as AutoAttack does. Same windows, signs and patterns from the same seed, same
    # arithmetic: the same images, so the same robust accuracy (49.4% L-inf, 58.0% L2; clean 90.4%).
    x, y = digits("test", 500)
    ours, theirs = ours_and_theirs(seeded_mlp, x, y, norm=norm, eps=eps, queries=500, seed=0)
    robust, reference = accuracy(seeded_mlp, ours, y), accuracy(seeded_mlp, theirs, y)
    assert 0.3 <= robust <= 0.7, f"robust accuracy {robust:.3f}: the comparison is not the intended one"
    assert abs(robust - reference) <= 0.01, f"ours {robust:.3f}, torchattacks {reference:.3f}"
    assert torch.equal(ours, theirs)


@pytest.mark.slow
@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.08), ("l2", 1.5)])
def test_autoattack_budget_same_images_as_torchattacks(seeded_mlp, norm, eps):
    # AutoAttack's standard Square: 5,000 queries, p_init 0.8, on 1,000 digits; about 1 min per norm on one core.
    x, y = digits("test", 1000)
    ours, theirs = ours_and_theirs(seeded_mlp, x, y, norm=norm, eps=eps, queries=5000, seed=0)
    robust, reference = accuracy(seeded_mlp, ours, y), accuracy(seeded_mlp, theirs, y)
    assert 0.2 <= robust <= 0.8, f"robust accuracy {robust:.3f}: the comparison is not the intended one"
    assert abs(robust - reference) <= 0.01, f"ours {robust:.3f}, torchattacks {reference:.3f}"
    assert torch.equal(ours, theirs)


# --- the query budget ------------------------------------------------------------------------


class Recorder(nn.Module):
    """Records every forward's input rows and logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        self.calls.append((x.detach().clone(), logits.detach().clone()))
        return logits


def queries_per_example(calls, x, norm, eps) -> list[list[torch.Tensor]]:
    """The logits of each example's queries after the clean forward, in order (rows found by distance)."""
    per_example = [[] for _ in x]
    for rows, logits in calls[1:]:
        dist = torch.stack([distance(rows, xi.expand_as(rows), norm) for xi in x], 1)  # (rows, B)
        owner = dist.argmin(1)
        assert (dist.gather(1, owner[:, None]) <= eps + 1e-6).all()
        assert len(owner.unique()) == len(owner), "an example was queried twice in one forward"
        for row, i in enumerate(owner.tolist()):
            per_example[i].append((rows[row], logits[row]))
    return per_example


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.2), ("l2", 1.0)])
def test_each_still_correct_example_is_queried_once_per_iteration_until_fooled(norm, eps):
    # One query at the start, then one per iteration until the first query that fools it, and no
    # more: AutoAttack's budget (1 + n_queries per restart) and its stop once fooled.
    torch.manual_seed(0)
    model = tiny_cnn(in_chans=2, height=6, width=6, num_classes=3, seed=3).eval()
    x = torch.rand(24, 2, 6, 6)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:3] = (y[:3] + 1) % 3  # misclassified from the start: never queried again
    recorder, queries = Recorder(model), 40
    x_adv = square(recorder, x, y, eps=eps, norm=norm, queries=queries)
    assert torch.equal(recorder.calls[0][0], x)  # one forward of the batch finds the correct ones
    fooled_at = []
    for i, rows in enumerate(queries_per_example(recorder.calls, x, norm, eps)):
        if i < 3:
            assert rows == [] and torch.equal(x_adv[i], x[i])
            continue
        fooling = [j for j, (_, logits) in enumerate(rows) if logits.argmax() != y[i]]
        if fooling:
            fooled_at.append(fooling[0])
            assert len(rows) == fooling[0] + 1
            assert torch.equal(x_adv[i], rows[fooling[0]][0])  # the query that fooled it
        else:
            assert len(rows) == 1 + queries and torch.equal(x_adv[i], x[i])
    # The check covers examples fooled during the search and never (and, for L-inf, at the start).
    assert any(j > 0 for j in fooled_at) and len(fooled_at) < 21, fooled_at
    assert norm == "l2" or 0 in fooled_at


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_forward_rows_per_restart_when_nothing_can_be_fooled(norm):
    model = tiny_cnn(in_chans=1, height=5, width=7, num_classes=4, seed=1).eval()
    x = torch.rand(10, 1, 5, 7)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:4] = (y[:4] + 1) % 4
    recorder = Recorder(model)
    # eps = 0: every proposal is x itself, so the 6 correct examples use the whole budget of each restart.
    x_adv = square(recorder, x, y, eps=0.0, norm=norm, queries=7, restarts=3)
    assert torch.equal(x_adv, x)
    rows = [len(r) for r, _ in recorder.calls]
    assert rows == [10] + [6] * 3 * (1 + 7)


# --- the threat model and the model's state --------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(problem=problems(min_side=5, max_side=8), norm_eps=norms_and_eps, queries=st.integers(0, 12),
       restarts=st.integers(1, 2), seed=st.integers(0, 2**16))
def test_in_the_ball_in_range_and_every_changed_point_fools_the_model(problem, norm_eps, queries, restarts, seed):
    model, x, y = problem
    model.eval()
    norm, eps = norm_eps
    torch.manual_seed(seed)
    x_adv = square(model, x, y, eps=eps, norm=norm, queries=queries, restarts=restarts)
    assert_in_the_ball_and_every_changed_point_fools(model, x, y, x_adv, norm=norm, eps=eps, tolerance=1e-6)


@settings(max_examples=25, deadline=None)
@given(problem=problems(batch_norm=True, min_side=5, max_side=8), norm_eps=norms_and_eps, eval_mode=st.booleans(),
       modes=st.sampled_from(["train", "eval", "mixed"]), momentum=st.sampled_from([0.1, None]),
       grads=st.sampled_from(["none", "existing"]))
def test_modes_statistics_and_parameters_unchanged(problem, norm_eps, eval_mode, modes, momentum, grads):
    model, x, y = problem
    norm, eps = norm_eps
    set_state(model, modes=modes, momentum=momentum, grads=grads)
    x_before, before = x.clone(), snapshot(model)
    square(model, x, y, eps=eps, norm=norm, queries=5, eval_mode=eval_mode)
    assert_same_state(before, snapshot(model))
    assert torch.equal(x, x_before)


def test_float64_in_float64_out_and_works_under_inference_mode():
    model = tiny_cnn(in_chans=1, height=6, width=6, num_classes=3).eval()
    x, y = torch.rand(4, 1, 6, 6), torch.tensor([0, 1, 2, 0])
    x_adv = square(model.double(), x.double(), y, eps=0.3, queries=5)
    assert x_adv.dtype == torch.float64
    with torch.inference_mode():
        x_adv = square(model.float(), x, y, eps=0.3, norm="l2", queries=5)
    assert not x_adv.is_inference() and x_adv.shape == x.shape


def test_a_stronger_budget_fools_more():
    # The search makes progress: on a random tiny CNN more queries fool more examples (not a property of
    # every seed, so over a fixed population).
    model = tiny_cnn(in_chans=1, height=8, width=8, num_classes=4, seed=5).eval()
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = model(x).argmax(1)
    fooled = {}
    for queries in (0, 100):
        torch.manual_seed(0)
        fooled[queries] = 1 - accuracy(model, square(model, x, y, eps=0.05, queries=queries), y)
    assert fooled[100] > fooled[0] + 0.2, fooled


# --- schedule, pattern, arguments --------------------------------------------------------------


@pytest.mark.parametrize("queries", [5000, 10000, 300, 7])
def test_p_schedule_is_autoattacks(queries):
    reference = torchattacks.Square(nn.Linear(1, 1), n_queries=queries, p_init=0.8)
    assert [p_schedule(0.8, i, queries) for i in range(queries)] == [reference.p_selection(i) for i in range(queries)]
    # The paper's breakpoints for 10,000 queries: p_init up to iteration 10, then halved nine times.
    assert p_schedule(0.8, 10, 10000) == 0.8 and p_schedule(0.8, 11, 10000) == 0.4
    assert p_schedule(0.8, 9999, 10000) == 0.8 / 512


@pytest.mark.parametrize("s", [1, 2, 3, 5, 8, 13, 25, 28])
def test_l2_window_pattern_is_autoattacks_eta(s):
    reference = torchattacks.Square(nn.Linear(1, 1), norm="L2")
    reference.device = "cpu"
    torch.manual_seed(0)
    theirs = reference.eta(s)  # transposed at random
    ours = _pseudo_gaussian(s)
    assert torch.equal(ours, theirs) or torch.equal(ours.T, theirs)  # same float32 arithmetic
    assert abs(ours.norm() - 1) < 1e-6 and ours[: s // 2].sum() >= 0 >= ours[s // 2 :].sum()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"norm": "l1"}, "unknown norm"),
        ({"eps": -0.1}, "eps must be"),
        ({"queries": -1}, "queries must be"),
        ({"queries": 2.5}, "queries must be"),
        ({"p_init": 0.0}, "p_init must be"),
        ({"p_init": 1.5}, "p_init must be"),
        ({"restarts": 0}, "restarts must be"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    model = tiny_cnn(in_chans=1, height=6, width=6, num_classes=3)
    x, y = torch.rand(2, 1, 6, 6), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=message):
        square(model, x, y, **{"eps": 0.1, **kwargs})


def test_bad_inputs_are_named():
    model = tiny_cnn(in_chans=1, height=4, width=4, num_classes=3)
    x, y = torch.rand(2, 1, 4, 4), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="at least 5x5"):
        square(model, x, y, eps=0.5, norm="l2")
    with pytest.raises(ValueError, match="integer class labels"):
        square(model, x, y.float(), eps=0.1)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        square(nn.Flatten(), x.flatten(1), y, eps=0.1)
    with pytest.raises(ValueError, match=r"images in \[0, 1\]"):
        square(model, x * 4 - 2, y, eps=0.1)

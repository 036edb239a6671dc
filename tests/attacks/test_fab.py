"""FAB-T: the same images as torchattacks' (AutoAttack's) FAB on a trained MNIST model, the projection
against brute-force solutions, the provable distance on a linear model, the targets, the threat
model, the model's state and argument checks.

The MNIST model is conftest's ``seeded_mlp`` (trained once per module, in about a second); the
FAB-T property tests draw their problems from attack_properties.py.
"""

import itertools

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
from tiny_classifiers import assert_same_state, linear_classifier, snapshot, tiny_cnn

import research.attacks.fab as fab_module
from research.attacks.fab import fab_targeted, project_onto_hyperplane_in_box

torchattacks = pytest.importorskip("torchattacks")
scipy_optimize = pytest.importorskip("scipy.optimize")


def compare_with_torchattacks(model, x, y, *, norm, eps, steps):
    ours = fab_targeted(model, x, y, eps=eps, norm=norm, steps=steps)
    # AutoAttack's FAB-T: targeted, the 9 runner-up classes, one restart, alpha_max 0.1, eta 1.05, beta 0.9.
    theirs = torchattacks.FAB(model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, steps=steps, n_restarts=1,
                              alpha_max=0.1, eta=1.05, beta=0.9, multi_targeted=True, n_classes=10)(x, y)
    robust, reference = accuracy(model, ours, y), accuracy(model, theirs, y)
    assert 0.3 <= robust <= 0.7, f"robust accuracy {robust:.3f}: the comparison is not the intended one"
    assert abs(robust - reference) <= 0.01, f"ours {robust:.3f}, torchattacks {reference:.3f}"
    # Deterministic (no random start with one restart) and the same arithmetic: the same images.
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.06), ("l2", 1.0)])
def test_same_adversarial_images_as_torchattacks(seeded_mlp, norm, eps):
    # 10 FAB steps per target instead of AutoAttack's 100 (the slow test below runs those): 47.0%
    # (L-inf) and 44.0% (L2) robust accuracy on 300 digits (clean 90.7%), for both implementations.
    x, y = digits("test", 300)
    compare_with_torchattacks(seeded_mlp, x, y, norm=norm, eps=eps, steps=10)


@pytest.mark.slow
@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.05), ("l2", 1.0)])
def test_autoattack_budget_same_adversarial_images_as_torchattacks(seeded_mlp, norm, eps):
    # AutoAttack's FAB-T as it runs it (100 steps, 9 targets) on 500 digits; about 1 min per norm on one core.
    x, y = digits("test", 500)
    compare_with_torchattacks(seeded_mlp, x, y, norm=norm, eps=eps, steps=100)


# --- the projection onto a hyperplane within the box ------------------------------------------


def random_problem(g: torch.Generator, dim: int, *, feasible: bool = True):
    """A point of the box (some coordinates on its faces), a normal with some zeros, and an offset."""
    t = torch.rand(dim, generator=g, dtype=torch.float64)
    t = torch.where(torch.rand(dim, generator=g) < 0.25, t.round(), t)
    w = torch.randn(dim, generator=g, dtype=torch.float64)
    w = torch.where(torch.rand(dim, generator=g) < 0.15, 0.0, w)
    if feasible:  # the hyperplane through a point of the box
        b = w @ torch.rand(dim, generator=g, dtype=torch.float64)
    else:  # beyond the box's reach, on a random side
        lowest, highest = w.clamp(max=0).sum(), w.clamp(min=0).sum()
        b = highest + 0.5 if torch.rand(1, generator=g) < 0.5 else lowest - 0.5
    return t, w, b


def linf_by_linear_programming(t, w, b) -> float:
    """min s  s.t.  -s <= d_i <= s,  w.d = b - w.t,  -t_i <= d_i <= 1 - t_i  (variables d, s)."""
    dim = len(t)
    eye, ones = torch.eye(dim), torch.ones(dim, 1)
    a_ub = torch.cat([torch.cat([eye, -ones], 1), torch.cat([-eye, -ones], 1)]).numpy()
    a_eq = torch.cat([w, torch.zeros(1, dtype=w.dtype)])[None].numpy()
    bounds = [(-ti, 1 - ti) for ti in t.tolist()] + [(0, None)]
    cost = [0.0] * dim + [1.0]
    res = scipy_optimize.linprog(cost, A_ub=a_ub, b_ub=[0.0] * (2 * dim), A_eq=a_eq, b_eq=[float(b - w @ t)],
                                 bounds=bounds, method="highs")
    assert res.status == 0
    return res.fun


def l2_by_enumeration(t, w, b) -> torch.Tensor:
    """Every active set: each coordinate at its lower bound, its upper bound, or free; the free ones
    move along ``w`` (the stationarity condition of min ||d||^2 s.t. w.d = r), by the one multiple
    that meets the hyperplane. The shortest feasible candidate is the projection."""
    lower, upper, target = -t, 1 - t, b - w @ t
    best, best_norm = None, float("inf")
    for state in itertools.product((0, 1, 2), repeat=len(t)):
        state = torch.tensor(state)
        d = torch.where(state == 1, lower, torch.where(state == 2, upper, torch.zeros_like(t)))
        free = state == 0
        rest = target - w @ d
        w_free = torch.where(free, w, 0.0)
        if w_free.square().sum() > 0:
            d = d + rest / w_free.square().sum() * w_free
        elif abs(rest) > 1e-12:
            continue
        if (d < lower - 1e-12).any() or (d > upper + 1e-12).any():
            continue
        if d.norm() < best_norm:
            best, best_norm = d, d.norm()
    return best


@pytest.mark.parametrize("dim", [1, 2, 3, 5, 6])
def test_linf_projection_is_the_linear_programs_optimum(dim):
    g = torch.Generator().manual_seed(dim)
    for _ in range(40):
        t, w, b = random_problem(g, dim)
        d = project_onto_hyperplane_in_box(t[None], w[None], b[None], "linf")[0]
        assert abs(w @ (t + d) - b) < 1e-9
        assert ((t + d) >= -1e-12).all() and ((t + d) <= 1 + 1e-12).all()
        assert d.abs().max() <= linf_by_linear_programming(t, w, b) + 1e-9


@pytest.mark.parametrize("dim", [1, 2, 3, 5, 6])
def test_l2_projection_is_the_brute_force_optimum(dim):
    g = torch.Generator().manual_seed(100 + dim)
    for _ in range(20):
        t, w, b = random_problem(g, dim)
        d = project_onto_hyperplane_in_box(t[None], w[None], b[None], "l2")[0]
        assert abs(w @ (t + d) - b) < 1e-9
        assert ((t + d) >= -1e-12).all() and ((t + d) <= 1 + 1e-12).all()
        torch.testing.assert_close(d, l2_by_enumeration(t, w, b), atol=1e-9, rtol=0)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_out_of_reach_hyperplane_gives_the_nearest_vertex(norm):
    g = torch.Generator().manual_seed(7)
    for _ in range(20):
        t, w, b = random_problem(g, 6, feasible=False)
        d = project_onto_hyperplane_in_box(t[None], w[None], b[None], norm)[0]
        towards = torch.sign(b - w @ t) * torch.sign(w)  # +1: up to 1, -1: down to 0, 0: w_i = 0 stays
        vertex = torch.where(towards > 0, 1.0, torch.where(towards < 0, 0.0, t))
        torch.testing.assert_close(t + d, vertex, atol=1e-12, rtol=0)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_is_autoattacks_on_image_sized_rows(norm):
    g = torch.Generator().manual_seed(0)
    t = torch.rand(64, 784, generator=g)
    t = torch.where(torch.rand(t.shape, generator=g) < 0.5, t.round(), t)  # MNIST-like: many pixels at 0 or 1
    w = torch.randn(64, 784, generator=g) * (torch.rand(64, 784, generator=g) > 0.1)
    b = (w * torch.rand(64, 784, generator=g)).sum(1) + torch.randn(64, generator=g) * 20
    reference = {"linf": torchattacks.attacks.fab.projection_linf, "l2": torchattacks.attacks.fab.projection_l2}[norm]
    assert torch.equal(project_onto_hyperplane_in_box(t, w, b, norm), reference(t, w, b))


# --- FAB-T on a linear model: the minimal distance is known --------------------------------------


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_on_a_linear_model_fab_finds_a_point_within_five_percent_of_the_minimal_distance(norm):
    # Two classes, linear logits: the closest adversarial point is the projection of x onto the
    # boundary within the box (computed by linear programming for L-inf, by enumeration for L2).
    # FAB cannot beat it, and its 5% overshoot (eta = 1.05) bounds how far above it FAB ends.
    model = linear_classifier(in_features=5, num_classes=2, seed=3).double().eval()
    x = torch.rand(40, 1, 1, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    w_gap = (model[1].weight[1 - y] - model[1].weight[y]).detach()  # f_t - f_y = w_gap.x + b_gap
    b_gap = (model[1].bias[1 - y] - model[1].bias[y]).detach()
    flat = x.flatten(1)
    minimal = torch.tensor([
        linf_by_linear_programming(flat[i], w_gap[i], -b_gap[i]) if norm == "linf"
        else l2_by_enumeration(flat[i], w_gap[i], -b_gap[i]).norm()
        for i in range(len(x))
    ], dtype=torch.float64)
    below = fab_targeted(model, x, y, eps=0.99 * minimal.min().item(), norm=norm, target_classes=1)
    assert torch.equal(below, x), "a point closer than the minimal adversarial distance"
    # With an eps that covers the box, FAB's closest point is returned.
    found = fab_targeted(model, x, y, eps=10.0, norm=norm, target_classes=1)
    with torch.no_grad():
        assert (model(found).argmax(1) != y).all()
    ratio = distance(found, x, norm) / minimal
    assert (ratio >= 1 - 1e-9).all() and (ratio <= 1.05 + 1e-9).all(), ratio


def test_targets_are_the_runner_up_classes_in_order_on_the_examples_not_yet_broken(monkeypatch):
    model = tiny_cnn(in_chans=1, height=5, width=5, num_classes=6, seed=5).eval()
    x = torch.rand(24, 1, 5, 5, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    y[:2] = (y[:2] + 1) % 6  # misclassified from the start: never attacked
    calls, run = [], fab_module._fab

    def recording_fab(model, x_clean, y_clean, target, **kwargs):
        calls.append((x_clean.clone(), target.clone()))
        return run(model, x_clean, y_clean, target, **kwargs)

    monkeypatch.setattr(fab_module, "_fab", recording_fab)
    x_adv = fab_targeted(model, x, y, eps=0.06, target_classes=4, steps=20)
    ranked = logits.argsort(1, descending=True)
    changed = set((x_adv != x).flatten(1).any(1).nonzero().flatten().tolist())
    attacked = [[int((x == row).flatten(1).all(1).nonzero()) for row in x_clean] for x_clean, _ in calls]
    assert attacked[0] == list(range(2, 24))  # the clean-correct examples, in order
    for k, (rows, (_, target)) in enumerate(zip(attacked, calls), start=1):
        assert torch.equal(target, ranked[rows, k])  # the (k + 1)-th highest clean logit
    for rows, next_rows in zip(attacked, attacked[1:]):
        assert set(next_rows) <= set(rows) and set(rows) - set(next_rows) <= changed  # dropped once broken
    unbroken = set(range(2, 24)) - changed
    assert all(unbroken <= set(rows) for rows in attacked)
    assert len(calls) == 4 if unbroken else len(calls) <= 4
    # The check covers examples broken by the first target, by a later one, and never (22, 8, 6, 6 attacked).
    assert unbroken and len(attacked[0]) > len(attacked[1]) > len(attacked[-1]), [len(rows) for rows in attacked]


# --- the threat model and the model's state --------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(problem=problems(clean_correct=True), norm_eps=norms_and_eps, steps=st.integers(0, 6),
       restarts=st.integers(1, 2), targets=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_in_the_ball_in_range_and_every_changed_point_fools_the_model(problem, norm_eps, steps, restarts, targets,
                                                                      seed):
    model, x, y = problem
    model.eval()
    norm, eps = norm_eps
    num_classes = model[-1].out_features
    torch.manual_seed(seed)
    x_adv = fab_targeted(model, x, y, eps=eps, norm=norm, steps=steps, restarts=restarts,
                         target_classes=min(targets, num_classes - 1))
    # No tolerance on eps: the acceptance check is made on the returned point.
    assert_in_the_ball_and_every_changed_point_fools(model, x, y, x_adv, norm=norm, eps=eps)


@settings(max_examples=25, deadline=None)
@given(problem=problems(batch_norm=True, clean_correct=True), norm_eps=norms_and_eps, eval_mode=st.booleans(),
       modes=st.sampled_from(["train", "eval", "mixed"]), momentum=st.sampled_from([0.1, None]),
       grads=st.sampled_from(["none", "existing"]), frozen=st.booleans())
def test_no_parameter_grads_and_modes_and_statistics_unchanged(problem, norm_eps, eval_mode, modes, momentum, grads,
                                                               frozen):
    model, x, y = problem
    norm, eps = norm_eps
    set_state(model, modes=modes, momentum=momentum, grads=grads, frozen=frozen)
    x_before, before = x.clone(), snapshot(model)
    fab_targeted(model, x, y, eps=eps, norm=norm, steps=3, target_classes=1, restarts=2, eval_mode=eval_mode)
    assert_same_state(before, snapshot(model))
    assert torch.equal(x, x_before)


def test_float64_in_float64_out_and_works_under_inference_mode():
    model = tiny_cnn(in_chans=1, height=6, width=6, num_classes=3).eval()
    x, y = torch.rand(4, 1, 6, 6), torch.tensor([0, 1, 2, 0])
    x_adv = fab_targeted(model.double(), x.double(), y, eps=0.3, steps=5, target_classes=2)
    assert x_adv.dtype == torch.float64
    with torch.inference_mode():
        x_adv = fab_targeted(model.float(), x, y, eps=0.3, norm="l2", steps=5, target_classes=2)
    assert not x_adv.is_inference() and x_adv.shape == x.shape


# --- arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"norm": "l1"}, "unknown norm"),
        ({"eps": float("nan")}, "eps must be"),
        ({"steps": -1}, "steps must be"),
        ({"restarts": 0}, "restarts must be"),
        ({"target_classes": 0}, "target_classes must be"),
        ({"target_classes": 3}, "target_classes=3 needs at least 4 classes"),
        ({"alpha_max": 1.5}, "alpha_max must be"),
        ({"eta": 0.0}, "eta must be"),
        ({"beta": -0.1}, "beta must be"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    model = tiny_cnn(in_chans=1, height=4, width=4, num_classes=3)
    x, y = torch.rand(2, 1, 4, 4), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=message):
        fab_targeted(model, x, y, **{"eps": 0.1, "target_classes": 2, **kwargs})


def test_bad_inputs_are_named():
    model = tiny_cnn(in_chans=1, height=4, width=4, num_classes=3)
    x, y = torch.rand(2, 1, 4, 4), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="integer class labels"):
        fab_targeted(model, x, y.float(), eps=0.1, target_classes=2)
    with pytest.raises(ValueError, match=r"images in \[0, 1\]"):
        fab_targeted(model, x * 4 - 2, y, eps=0.1, target_classes=2)
    with pytest.raises(ValueError, match="unknown norm"):
        project_onto_hyperplane_in_box(x.flatten(1), x.flatten(1), y.float(), "l1")

"""fgsm and pgd: closed forms, random starts, restarts, targeted attacks, loss_fn, modes, precision, errors."""

import pytest
import torch
import torch.nn.functional as F
from tiny_classifiers import assert_same_state, linear_classifier, snapshot, tiny_cnn
from torch import nn

from research.attacks import L2Ball, LinfBall, attack_mode, fgsm, pgd
from research.attacks.balls import l2_norm
from research.tasks import ImageClassification


def problem(batch=6, in_chans=2, size=5, num_classes=4, **kw):
    model = tiny_cnn(in_chans=in_chans, height=size, width=size, num_classes=num_classes, **kw).eval()
    return model, torch.rand(batch, in_chans, size, size), torch.randint(0, num_classes, (batch,))


def losses(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


# --- the update rules against closed forms ----------------------------------------------------


def test_fgsm_is_the_signed_gradient_step_of_goodfellow_et_al():
    model = linear_classifier(in_features=6, num_classes=3)
    x, y = torch.rand(5, 1, 2, 3), torch.tensor([0, 1, 2, 0, 1])
    w = model[1].weight
    # d CE / d x = W^T (softmax(Wx + b) - onehot(y)) for a linear model
    with torch.no_grad():
        grad = (model(x).softmax(-1) - F.one_hot(y, 3)) @ w
        expected = (x + 0.1 * grad.sign().view_as(x)).clamp(0, 1)
    torch.testing.assert_close(fgsm(model, x, y, eps=0.1), expected)
    torch.testing.assert_close(
        fgsm(model, x, y, eps=0.1), pgd(model, x, y, eps=0.1, step_size=0.1, steps=1, random_start=False)
    )


def test_l2_step_follows_the_normalised_gradient_and_projects_onto_the_ball():
    model = linear_classifier(in_features=8, num_classes=3)
    x, y = torch.full((4, 2, 2, 2), 0.5), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        grad = ((model(x).softmax(-1) - F.one_hot(y, 3)) @ model[1].weight).view_as(x)
    unit = grad / l2_norm(grad).view(-1, 1, 1, 1)
    # A step shorter than eps lands at x + step * unit; a longer one is pulled back onto the sphere.
    torch.testing.assert_close(pgd(model, x, y, eps=0.3, step_size=0.2, steps=1, norm="l2", random_start=False),
                               x + 0.2 * unit)
    torch.testing.assert_close(pgd(model, x, y, eps=0.3, step_size=1.0, steps=1, norm="l2", random_start=False),
                               x + 0.3 * unit)


def test_targeted_attack_descends_the_loss_to_the_target():
    model, x, _ = problem(batch=32)
    target = torch.randint(0, 4, (32,))
    x_adv = pgd(model, x, target, eps=0.3, step_size=0.05, steps=20, targeted=True)
    assert losses(model, x_adv, target).mean() < losses(model, x, target).mean() - 1
    hits = (model(x_adv).argmax(-1) == target).float().mean()
    assert hits > (model(x).argmax(-1) == target).float().mean() + 0.2  # 0.22 -> 0.47


def test_random_starts_are_uniform_in_their_balls():
    x = torch.full((20000, 1, 2, 2), 0.5)  # away from 0 and 1, so that no clamp interferes
    linf = LinfBall(0.1).random_start(x) - x
    assert linf.abs().max() <= 0.1 and abs(linf.mean()) < 2e-3
    assert abs(linf.std() - 0.1 / 3**0.5) < 2e-3  # the std of U(-eps, eps)
    # Uniform in the L2 ball of d = 4 pixels: (r / eps)^d is uniform on [0, 1], so its mean is 1/2
    # (a start on the sphere would give 1; torchattacks' uniform radius gives 1/5).
    r = l2_norm(L2Ball(0.2).random_start(x) - x) / 0.2
    assert r.max() <= 1 + 1e-6 and abs(r.pow(4).mean() - 0.5) < 0.01


class _FoolsWithLowLoss(nn.Module):
    """Mean pixel below 0.5: class 1 wins narrowly (fooled, cross-entropy 0.85); above: class 0 wins
    against five close rivals (not fooled, cross-entropy 1.71). Flat in x, so PGD stays at its start."""

    def forward(self, x):
        low = (x.flatten(1).mean(1, keepdim=True) < 0.5).float()
        fooled = torch.tensor([0.0, 0.3, -20, -20, -20, -20])
        kept = torch.tensor([0.0, -0.1, -0.1, -0.1, -0.1, -0.1])
        return low * fooled + (1 - low) * kept + 0 * x.flatten(1)[:, :1]  # differentiable, zero gradient


def test_restarts_keep_the_worst_case_per_example():
    """A restart that fools the model wins over a higher loss that does not (AutoAttack's counting)."""
    model, x = _FoolsWithLowLoss(), torch.full((64, 1, 1, 1), 0.5)
    y = torch.zeros(64, dtype=torch.long)
    kw = dict(eps=0.3, step_size=0.1, steps=1)
    torch.manual_seed(1)
    best = pgd(model, x, y, restarts=4, **kw)
    torch.manual_seed(1)  # the same four random starts, one call each
    runs = [pgd(model, x, y, **kw) for _ in range(4)]
    fooled = torch.stack([model(r).argmax(-1) != y for r in runs])
    assert 0 < fooled.all(0).sum() and fooled.any(0).sum() < 64 and (fooled.any(0) & ~fooled.all(0)).any()
    assert torch.equal(model(best).argmax(-1) != y, fooled.any(0))  # fooled iff any restart fooled it
    first = fooled.float().argmax(0)  # the kept point is the first fooling restart's
    torch.testing.assert_close(best[fooled.any(0)], torch.stack(runs)[first, torch.arange(64)][fooled.any(0)])


def test_restarts_keep_the_highest_loss_when_none_fools():
    model, x, y = problem(batch=32)
    with torch.no_grad():
        y = model(x).argmax(-1)  # correctly classified; at this eps most stay so under every restart
    kw = dict(eps=0.01, step_size=0.005, steps=2)
    torch.manual_seed(1)
    best = pgd(model, x, y, restarts=4, **kw)
    torch.manual_seed(1)
    runs = [pgd(model, x, y, **kw) for _ in range(4)]
    robust = ~torch.stack([model(r).argmax(-1) != y for r in runs]).any(0)
    loss = torch.stack([losses(model, r, y) for r in runs])[:, robust]
    assert robust.sum() >= 16 and len(set(loss.argmax(0).tolist())) > 1  # the test can tell the restarts apart
    torch.testing.assert_close(losses(model, best, y)[robust], loss.max(0).values)


def test_targeted_restarts_keep_the_lowest_loss_to_the_target():
    model, x, target = problem(batch=16)
    kw = dict(eps=0.3, step_size=0.02, steps=2, targeted=True)
    torch.manual_seed(2)
    best = pgd(model, x, target, restarts=3, **kw)
    torch.manual_seed(2)
    runs = [pgd(model, x, target, **kw) for _ in range(3)]
    loss = torch.stack([losses(model, r, target) for r in runs])
    hit = torch.stack([model(r).argmax(-1) == target for r in runs])
    first = hit.float().argmax(0)
    expected = torch.where(hit.any(0), loss.gather(0, first[None])[0], loss.min(0).values)
    torch.testing.assert_close(losses(model, best, target), expected)


def test_a_custom_per_example_loss_is_what_gets_maximised():
    model, x, y = problem(batch=8)

    def margin(logits, y):  # Carlini-Wagner's margin: best other logit minus the true one
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
        return other - true

    x_adv = pgd(model, x, y, eps=0.2, step_size=0.05, steps=10, loss_fn=margin, random_start=False)
    with torch.no_grad():
        assert (margin(model(x_adv), y) > margin(model(x), y)).all()


# --- what the attack leaves alone -------------------------------------------------------------


@pytest.mark.parametrize("eval_mode", [True, False])
def test_attack_mode_chooses_the_mode_the_forwards_see_and_restores_it(eval_mode):
    model, x, y = problem()
    model.train()
    seen = []
    model[1].register_forward_hook(lambda m, i, o: seen.append(m.training))
    before = snapshot(model)
    pgd(model, x, y, eps=0.1, step_size=0.05, steps=3, eval_mode=eval_mode)
    assert seen == [not eval_mode] * 3
    assert_same_state(before, snapshot(model))  # BatchNorm statistics too, though it ran in train mode


def test_attack_mode_restores_on_error():
    model, x, y = problem()
    model.train()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"), attack_mode(model, eval_mode=False):
        model(x)  # moves the running statistics
        raise RuntimeError("boom")
    assert_same_state(before, snapshot(model))


def test_input_gradients_only_also_for_frozen_models_and_inputs_that_require_grad():
    model, x, y = problem()
    model.requires_grad_(False)
    x.requires_grad_(True)
    x_adv = pgd(model, x, y, eps=0.1, step_size=0.05, steps=2)
    assert x.grad is None and not x_adv.requires_grad
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())


def test_works_under_no_grad_and_inside_a_lightning_style_inference_mode():
    model, x, y = problem()
    with torch.no_grad():
        a = pgd(model, x, y, eps=0.1, step_size=0.05, steps=2, random_start=False)
    with torch.inference_mode():
        x_inf, y_inf = x.clone(), y.clone()  # inference tensors, as a test step hands them out
        b = pgd(model, x_inf, y_inf, eps=0.1, step_size=0.05, steps=2, random_start=False, restarts=1)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, x)


def test_perturbation_is_float32_under_autocast_and_for_half_inputs():
    model, x, y = problem()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = pgd(model, x, y, eps=0.01, step_size=0.003, steps=5)
    assert x_adv.dtype == torch.float32
    # bfloat16 has 8 bits of mantissa: rounding x + delta there would move pixels by up to 2e-3.
    assert ((x_adv - x).abs().max() - 0.01).abs() < 1e-6
    x_half = x.half()
    x_adv_half = pgd(model.half(), x_half, y, eps=0.01, step_size=0.003, steps=5)
    assert x_adv_half.dtype == torch.float16
    assert (x_adv_half.float() - x_half.float()).abs().max() <= 0.01 + 1e-3  # the final rounding to half


def test_small_steps_accumulate_in_float32_for_half_inputs():
    model, x, y = problem()
    x_half = (0.5 + 0.5 * x).half()  # in [0.5, 1], where float16's spacing is 2^-11 = 4.9e-4
    x_adv = pgd(model.half(), x_half, y, eps=0.01, step_size=1e-4, steps=20, random_start=False)
    # Each step is below float16's rounding, so in float16 no pixel would ever move; in float32
    # the steps add up (to 2e-3 where the gradient's sign holds) before the final rounding.
    assert (x_adv != x_half).float().mean() > 0.5


def test_attacks_an_image_classification_task_in_pixel_units():
    task = ImageClassification({"name": "five_layer_cnn", "num_classes": 3, "img_size": 16}, mean=[0.5], std=[0.2])
    x, y = torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 2, 0])
    before = snapshot(task)
    x_adv = pgd(task, x, y, eps=8 / 255, step_size=2 / 255, steps=3)
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6
    assert_same_state(before, snapshot(task))


# --- errors -----------------------------------------------------------------------------------

GOOD = dict(eps=0.1, step_size=0.01, steps=2)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(eps=-0.1), r"eps must be a finite number >= 0 .*got -0.1"),
        (dict(eps=float("nan")), r"eps must be a finite number >= 0"),
        (dict(step_size=0.0), r"step_size must be a finite number > 0, got 0.0; a common choice is 2.5 \* eps / steps"),
        (dict(step_size=-0.01), r"step_size must be a finite number > 0, got -0.01"),
        (dict(steps=-1), r"steps must be an integer >= 0, got -1"),
        (dict(steps=2.5), r"steps must be an integer >= 0, got 2.5"),
        (dict(restarts=0), r"restarts must be an integer >= 1, got 0"),
        (dict(restarts=3, random_start=False), r"restarts=3 needs random_start=True"),
        (dict(norm="l1"), r"unknown norm 'l1'; use one of \['l2', 'linf'\]"),
        (dict(norm="Linf"), r"unknown norm 'Linf'"),
    ],
)
def test_bad_arguments_are_clear_errors(change, message):
    model, x, y = problem()
    with pytest.raises(ValueError, match=message):
        pgd(model, x, y, **{**GOOD, **change})


def test_bad_inputs_are_clear_errors():
    model, x, y = problem()
    normalised = (x - 0.5) / 0.25
    with pytest.raises(ValueError, match=r"attacks take images in \[0, 1\], got values in \[-1.9.*, 1.9.*\]\. Pass the "
                                         r"images before mean/std normalisation"):
        pgd(model, normalised, y, **GOOD)
    with pytest.raises(ValueError, match=r"attacks take images in \[0, 1\], got values in \[0, 255\]"):
        fgsm(model, x.round() * 255, y, eps=0.1)  # 0-255 pixels
    with pytest.raises(ValueError, match=r"y must hold one label per image: x has 6 images, y has shape \(5,\)"):
        pgd(model, x, y[:5], **GOOD)
    with pytest.raises(ValueError, match=r"x must be a non-empty floating-point .* got a torch.uint8 tensor"):
        pgd(model, (x * 255).to(torch.uint8), y, **GOOD)
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        fgsm(model, x, y, eps=-0.3)
    # One step past [0, 1] by float error is no mistake.
    pgd(model, x.clamp(0, 1) * (1 + 1e-7), y, **GOOD)


def test_a_loss_fn_that_averages_over_the_batch_is_a_clear_error():
    model, x, y = problem()
    with pytest.raises(ValueError, match=r"loss_fn must return one loss per example, shape \(6,\), got shape \(\); "
                                         r"use reduction='none'"):
        pgd(model, x, y, **GOOD, loss_fn=nn.CrossEntropyLoss())

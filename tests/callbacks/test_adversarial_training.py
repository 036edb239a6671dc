"""AdversarialTraining: each option changes what training_step receives, as documented."""

import pytest
import torch
from attack_setup import AttackWindow, TokenTask, brightness_data, brightness_task, synthetic, tiny_task, trainer
from lightning.pytorch.callbacks import Callback

from research.callbacks import AdversarialTraining

EPS = 0.1


def run(callback, *, task=None, data=None, window=True, **trainer_kwargs):
    task = task or tiny_task()
    probe = AttackWindow(task) if window else None
    callbacks = [probe.opening, callback, probe.closing] if probe else [callback]
    t = trainer(callbacks=callbacks, limit_val_batches=0, **{"max_steps": 2, **trainer_kwargs})
    t.fit(task, datamodule=data or synthetic())
    return t, task, probe


def changed_rows(probe, step):
    (clean, y0), (attacked, y1) = probe.clean[step], probe.attacked[step]
    assert torch.equal(y0, y1)
    return (clean != attacked).flatten(1).any(1)


@pytest.mark.parametrize("fraction, expected", [(1.0, 8), (0.5, 4), (0.3, 2)])
def test_fraction_replaces_exactly_the_first_round_f_times_b_images(fraction, expected):
    _, _, probe = run(AdversarialTraining(eps=EPS, steps=3, fraction=fraction))
    for step in range(2):
        rows = changed_rows(probe, step)
        assert rows[:expected].all() and not rows[expected:].any()
        delta = probe.attacked[step][0] - probe.clean[step][0]
        assert delta.abs().max() <= EPS + 1e-6
        assert probe.attacked[step][0].min() >= 0 and probe.attacked[step][0].max() <= 1


def test_the_attack_raises_the_loss():
    task = tiny_task()
    _, _, probe = run(AdversarialTraining(eps=EPS, steps=5), task=task, max_steps=1)
    (clean, y), (attacked, _) = probe.clean[0], probe.attacked[0]
    task.eval()
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy
        assert loss(task(attacked), y) > loss(task(clean), y)


def test_eps_warmup_is_linear_per_step():
    callback = AdversarialTraining(eps=EPS, steps=3, warmup_epochs=2)
    assert [callback.eps_at(e) for e in (0, 0.5, 1, 2, 3)] == pytest.approx([0, EPS / 4, EPS / 2, EPS, EPS])
    # 2 batches an epoch (16 images, batch 8): eps 0, eps/4, eps/2, 3eps/4, eps, eps
    _, _, probe = run(callback, data=synthetic(num_samples=20, batch_size=8), max_steps=6, max_epochs=3)
    largest = [(a[0] - c[0]).abs().max().item() for c, a in zip(probe.clean, probe.attacked)]
    assert largest == pytest.approx([0, EPS / 4, EPS / 2, 3 * EPS / 4, EPS, EPS], abs=1e-6)


@pytest.mark.parametrize("eval_mode", [True, False])
def test_attack_mode_and_batchnorm_statistics(eval_mode):
    _, _, probe = run(AdversarialTraining(eps=EPS, steps=3, attack_in_eval_mode=eval_mode))
    assert len(probe.forwards) == 2 * 3  # 3 PGD steps on each of the 2 batches
    assert {training for training, _ in probe.forwards} == {not eval_mode}
    for before, after in zip(probe.stats_before, probe.stats_after):
        for a, b in zip(before, after):
            assert torch.equal(a, b)  # the attack never moves running statistics
    assert not torch.equal(probe.stats_before[0][0], probe.stats_before[1][0])  # training does


@pytest.mark.parametrize("precision, autocast", [("bf16-mixed", True), ("32-true", False)])
def test_attack_runs_under_the_training_steps_autocast(precision, autocast):
    _, _, probe = run(AdversarialTraining(eps=EPS, steps=2), precision=precision, max_steps=1)
    assert probe.forwards and all(on == autocast for _, on in probe.forwards)


def test_fgsm_rs_is_one_step_of_1_25_eps_from_a_random_start():
    callback = AdversarialTraining(attack="fgsm_rs", eps=EPS)
    assert callback.step_size == pytest.approx(1.25 * EPS)
    _, _, probe = run(callback)
    assert len(probe.forwards) == 2  # one gradient per batch
    delta = probe.attacked[0][0] - probe.clean[0][0]
    assert delta.abs().max() <= EPS + 1e-6
    # from a random start a step of 1.25 eps ends at the ball's faces for most pixels, not all
    at_face = (delta.abs() > EPS - 1e-6).float().mean()
    assert 0.5 < at_face < 1


class Sabotage(Callback):
    """At the start of epoch ``epoch``, turn the model into its opposite (catastrophic overfitting, simulated)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                pl_module.model.scale.neg_()


@pytest.mark.parametrize("sabotage", [True, False])
def test_fgsm_rs_guard_restores_the_last_good_weights_and_stops(sabotage, caplog):
    task = brightness_task()  # lr 0: only the sabotage moves the weights
    callbacks = [AdversarialTraining(attack="fgsm_rs", eps=EPS), *([Sabotage(1)] if sabotage else [])]
    t = trainer(callbacks=callbacks, max_epochs=4, limit_val_batches=0)
    t.fit(task, datamodule=brightness_data())
    batches = 4  # 16 images, batch 4
    if sabotage:
        assert t.global_step == 2 * batches  # stopped after epoch 1 instead of 4
        assert task.model.scale.item() == pytest.approx(10.0)  # epoch 0's weights are back
        assert t.callback_metrics["train/guard_pgd_acc"] == 0.0
        assert "catastrophic overfitting" in caplog.text
    else:
        assert t.global_step == 4 * batches
        assert t.callback_metrics["train/guard_pgd_acc"] == 1.0


def test_free_replays_each_minibatch_and_carries_the_perturbation():
    replays = 3
    task = tiny_task()
    _, _, probe = run(AdversarialTraining(attack="free", eps=EPS, replays=replays), task=task, max_steps=7)
    assert probe.forwards == []  # no attack pass of its own: the training step's backward does it
    held = [probe.clean[0], probe.clean[3], probe.clean[6]]  # a new minibatch every `replays` steps
    for step, (x, y) in enumerate(probe.attacked):
        clean, labels = held[step // replays]
        assert torch.equal(y, labels)
        delta = x - clean
        assert delta.abs().max() <= EPS + 1e-6
        if step == 0:
            assert torch.equal(x, clean)  # Algorithm 1 starts from delta = 0
        else:
            assert delta.abs().max() == pytest.approx(EPS, abs=1e-6)  # moved by eps * sign(grad)
    # the perturbation is carried over to the next minibatch, not restarted
    assert not torch.equal(probe.attacked[3][0], held[1][0])


def test_free_learns_the_weights_as_usual():
    task = tiny_task(lr=0.2)
    before = [p.detach().clone() for p in task.parameters()]
    run(AdversarialTraining(attack="free", eps=EPS, replays=2), task=task, max_steps=4)
    assert all(not torch.equal(a, b) for a, b in zip(before, task.parameters()))


def test_task_without_images_is_a_clear_error():
    with pytest.raises(ValueError, match=r"AdversarialTraining expects batches of \(images, labels\).*int64 tensor"):
        trainer(callbacks=[AdversarialTraining(eps=EPS, steps=1)], max_steps=1).fit(TokenTask())


def test_normalised_images_are_a_clear_error():
    data = brightness_data()
    data.x = (data.x - 0.5) / 0.25  # normalised by mistake: values outside [0, 1]
    with pytest.raises(ValueError, match=r"images span \[-1.2, 1.2\]\. Leave normalisation to the task"):
        run(AdversarialTraining(eps=EPS, steps=1), task=brightness_task(), data=data, window=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(eps=0.0, steps=1), "eps must be > 0"),
        (dict(eps=EPS), "attack='pgd' needs steps >= 1"),
        (dict(attack="fgsm_rs", eps=EPS, steps=3), "takes no steps"),
        (dict(attack="free", eps=EPS), "needs replays >= 1"),
        (dict(eps=EPS, steps=1, replays=4), "replays is an option of attack='free' only"),
        (dict(attack="free", eps=EPS, replays=4, norm="l2"), "norm='linf' only"),
        (dict(attack="fgsm", eps=EPS), "unknown attack 'fgsm'"),
        (dict(eps=EPS, steps=1, fraction=0.0), r"fraction must lie in \(0, 1\]"),
        (dict(eps=EPS, steps=1, warmup_epochs=-1), "warmup_epochs must be >= 0"),
        (dict(attack="fgsm_rs", eps=EPS, guard_drop=2), r"guard_drop must lie in \[0, 1\]"),
    ],
)
def test_bad_options_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdversarialTraining(**kwargs)

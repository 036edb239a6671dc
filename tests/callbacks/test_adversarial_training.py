"""AdversarialTraining: each option changes what training_step receives, as documented."""

import lightning as L
import pytest
import torch
from attack_setup import (
    AttackWindow,
    Brightness,
    TensorData,
    TokenTask,
    brightness_data,
    brightness_task,
    synthetic,
    tiny_task,
    trainer,
)
from lightning.pytorch.callbacks import Callback
from torch import nn

from research.callbacks import AdversarialTraining
from research.tasks import ImageClassification

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
        assert t.callback_metrics["train/guard_fgsm_acc"] == 1.0  # robust to both: no gap


class FlatAroundData(Brightness):
    """Brightness' classifier, but constant within L-inf distance 0.01 of the grey images 0.2 and 0.8.

    Its gradient at the data is zero, so FGSM (a step along sign(0) = 0) never moves; PGD's random
    start leaves the flat zone and the gradient beyond leads across the boundary (eps > 0.3): robust
    to FGSM, not to PGD. The gradient masking of Wong et al.'s failed FGSM runs in its simplest form.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        margin = self.scale * (x.mean(dim=(1, 2, 3)) - 0.5)
        for grey in (0.2, 0.8):
            near = (x - grey).flatten(1).abs().amax(1) < 0.01
            margin = torch.where(near, self.scale * (grey - 0.5), margin)
        return torch.stack([-margin, margin], dim=1)


def flat_task(model=None) -> ImageClassification:
    return ImageClassification(
        model or FlatAroundData(), num_classes=2, mean=(0.0,), std=(1.0,),
        optim={"name": "sgd", "lr": 0.0, "weight_decay": 0.0, "schedule": "constant"},
    )


@pytest.mark.parametrize("warmup_epochs, stop_epoch", [(0, 0), (2, 1)])
def test_fgsm_rs_gap_guard_stops_a_model_robust_to_fgsm_but_not_to_pgd(warmup_epochs, stop_epoch, caplog):
    task = flat_task()
    callback = AdversarialTraining(attack="fgsm_rs", eps=0.4, warmup_epochs=warmup_epochs)
    t = trainer(callbacks=[callback], max_epochs=4, limit_val_batches=0)
    t.fit(task, datamodule=brightness_data())
    assert t.global_step == (stop_epoch + 1) * 4  # 4 batches an epoch; stopped after the first check past warm-up
    assert t.callback_metrics["train/guard_fgsm_acc"] == 1.0
    assert t.callback_metrics["train/guard_pgd_acc"] == 0.0
    assert "FGSM accuracy 1.000 but PGD accuracy 0.000" in caplog.text
    assert "cyclic learning rate" in caplog.text and "attack='pgd'" in caplog.text
    assert task.model.scale.item() == 10.0  # nothing restored, nothing to restore (lr 0)


def test_fgsm_rs_gap_guard_off():
    t = trainer(callbacks=[AdversarialTraining(attack="fgsm_rs", eps=0.4, guard_gap=None)], max_epochs=2,
                limit_val_batches=0)
    t.fit(flat_task(), datamodule=brightness_data())
    assert t.global_step == 2 * 4
    assert t.callback_metrics["train/guard_fgsm_acc"] - t.callback_metrics["train/guard_pgd_acc"] == 1.0


def noisy_brightness(n: int = 128) -> TensorData:
    """1x6x6 images of mean 0.3 (class 0) or 0.7 (class 1) with uniform pixel noise of +-0.2."""
    generator = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = (0.3 + 0.4 * y.float()).view(-1, 1, 1, 1) + (torch.rand(n, 1, 6, 6, generator=generator) - 0.5) * 0.4
    return TensorData(x.clamp(0, 1), y, batch_size=16)


def test_fgsm_rs_gap_guard_leaves_a_pgd_trained_model_alone():
    L.seed_everything(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(36, 32), nn.ReLU(), nn.Linear(32, 2))
    task = ImageClassification(mlp, num_classes=2, mean=(0.0,), std=(1.0,),
                               optim={"name": "sgd", "lr": 0.1, "weight_decay": 0.0, "schedule": "constant"})
    data = noisy_brightness()
    trainer(callbacks=[AdversarialTraining(eps=0.15, steps=5)], max_epochs=10, limit_val_batches=0).fit(
        task, datamodule=data
    )
    # the PGD-trained model under the fgsm_rs guards, weights frozen (lr 0): checked after each of 3 epochs
    t = trainer(callbacks=[AdversarialTraining(attack="fgsm_rs", eps=0.15)], max_epochs=3, limit_val_batches=0)
    t.fit(flat_task(mlp), datamodule=data)
    assert t.global_step == 3 * 8  # never stopped
    fgsm_acc, pgd_acc = t.callback_metrics["train/guard_fgsm_acc"], t.callback_metrics["train/guard_pgd_acc"]
    assert pgd_acc >= 0.5  # robust, genuinely
    assert fgsm_acc - pgd_acc <= 0.3


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
        (dict(attack="fgsm_rs", eps=EPS, guard_gap=-0.1), r"guard_gap must lie in \[0, 1\]"),
    ],
)
def test_bad_options_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdversarialTraining(**kwargs)

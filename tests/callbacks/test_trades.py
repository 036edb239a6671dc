"""TRADES and MART in AdversarialTraining: the inner maximisation, the loss by hand, beta = 0, the wrapper's lifetime.

The by-hand losses follow the reference code line by line (github.com/yaodongyu/TRADES ``trades.py``,
github.com/YisenWang/MART ``mart.py``), not our helpers.
"""

import copy

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from attack_setup import AttackWindow, synthetic, tiny_cnn, tiny_task, trainer
from lightning.pytorch.callbacks import Callback
from torch import nn

from research.attacks import mart_attack, trades_attack
from research.callbacks import AdversarialTraining
from research.tasks import ImageClassification

EPS = 0.1


def kl_per_example(model, x, x_adv):
    """KL(f(x) || f(x_adv)) of each example, as the reference's criterion_kl (reduction 'none')."""
    with torch.no_grad():
        return nn.KLDivLoss(reduction="none")(F.log_softmax(model(x_adv), 1), F.softmax(model(x), 1)).sum(1)


@pytest.fixture(scope="module")
def trained():
    """A tiny CNN trained clean for 40 steps, in eval mode, and a batch of its data."""
    L.seed_everything(0)
    task = tiny_task(lr=0.1)
    data = synthetic(num_samples=96, batch_size=16)
    trainer(max_steps=40, limit_val_batches=0).fit(task, datamodule=data)
    data.setup("fit")
    x, y = next(iter(data.val_dataloader()))
    return task.eval(), x, y


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_trades_inner_maximisation_raises_the_kl_over_its_start(trained, norm):
    task, x, y = trained
    eps = EPS if norm == "linf" else 0.5
    torch.manual_seed(1)
    start = x + 0.001 * torch.randn_like(x)  # the start the attack draws after the same seed
    torch.manual_seed(1)
    x_adv = trades_attack(task, x, eps=eps, step_size=eps / 4, steps=10, norm=norm)
    before, after = kl_per_example(task, x, start), kl_per_example(task, x, x_adv)
    assert after.mean() > 100 * before.mean()
    assert (after > before).float().mean() > 0.9
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert size.max() <= eps + 1e-5
    assert x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize("attack", [trades_attack, mart_attack])
@pytest.mark.parametrize("training", [True, False])
def test_the_attacks_make_no_parameter_gradients_and_restore_the_model(attack, training):
    model = tiny_cnn()
    model.train(training)
    stats = [b.clone() for b in model.buffers()]
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    args = (model, x) if attack is trades_attack else (model, x, y)
    attack(*args, eps=EPS, step_size=EPS / 4, steps=3)
    assert all(p.grad is None for p in model.parameters())
    assert all(m.training == training for m in model.modules())
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers()))


def test_zero_steps_return_the_small_noise_start_inside_the_ball():
    x = torch.rand(4, 1, 8, 8)
    x_adv = trades_attack(tiny_cnn(), x, eps=0.0005, step_size=0.001, steps=0)
    assert 0 < (x_adv - x).abs().max() <= 0.0005 + 1e-7


class Before(Callback):
    """Listed before AdversarialTraining: the weights, the RNG state and the batch before its attack."""

    def __init__(self):
        self.steps = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.steps.append((copy.deepcopy(pl_module), torch.get_rng_state(), batch[0].clone(), batch[1].clone()))


class ForwardsACopy(ImageClassification):
    """A task that never forwards the batch's own tensor and returns a dict: the wrapper computes f(x) itself."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x.clone()), y)
        self.log("train/loss", loss)
        return {"loss": loss}


def tiny(task_class=ImageClassification):
    return task_class(tiny_cnn(), num_classes=4,
                      optim={"name": "sgd", "lr": 0.05, "weight_decay": 0.0, "schedule": "constant"})


@pytest.mark.parametrize("task_class", [ImageClassification, ForwardsACopy])
def test_trades_loss_is_ce_plus_beta_kl_by_hand(task_class):
    beta, eps, steps = 6.0, 0.2, 3
    L.seed_everything(0)
    task, before = tiny(task_class), Before()
    callback = AdversarialTraining(attack="trades", eps=eps, steps=steps, beta=beta)
    t = trainer(callbacks=[before, callback], max_steps=1, limit_val_batches=0)
    t.fit(task, datamodule=synthetic())
    model, rng, x, y = before.steps[0]
    torch.set_rng_state(rng)
    x_adv = trades_attack(model, x, eps=eps, step_size=2.5 * eps / steps, steps=steps)
    model.train()  # the outer loss is in train mode (their model.train() before it)
    logits = model(x)
    loss_natural = F.cross_entropy(logits, y)
    loss_robust = (1.0 / len(x)) * nn.KLDivLoss(reduction="sum")(F.log_softmax(model(x_adv), dim=1),
                                                                  F.softmax(model(x), dim=1))
    logged = t.callback_metrics
    assert loss_robust > 1e-3  # large enough for the comparison to mean something
    assert logged["train/loss"].item() == pytest.approx(loss_natural.item(), rel=1e-5)
    assert logged["train/trades_kl"].item() == pytest.approx(loss_robust.item(), rel=1e-4)
    assert logged["train/trades_loss"].item() == pytest.approx((loss_natural + beta * loss_robust).item(), rel=1e-5)


def test_mart_loss_by_hand():
    beta, eps, steps = 6.0, 0.2, 3
    L.seed_everything(0)
    task, before = tiny(), Before()
    callback = AdversarialTraining(attack="mart", eps=eps, steps=steps, beta=beta)
    t = trainer(callbacks=[before, callback], max_steps=1, limit_val_batches=0)
    t.fit(task, datamodule=synthetic())
    model, rng, x_natural, y = before.steps[0]
    torch.set_rng_state(rng)
    x_adv = mart_attack(model, x_natural, y, eps=eps, step_size=2.5 * eps / steps, steps=steps)
    model.train()
    # mart.py, from "logits = model(x_natural)" on
    kl = nn.KLDivLoss(reduction="none")
    batch_size = len(x_natural)
    logits = model(x_natural)
    logits_adv = model(x_adv)
    adv_probs = F.softmax(logits_adv, dim=1)
    tmp1 = torch.argsort(adv_probs, dim=1)[:, -2:]
    new_y = torch.where(tmp1[:, -1] == y, tmp1[:, -2], tmp1[:, -1])
    loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
    nat_probs = F.softmax(logits, dim=1)
    true_probs = torch.gather(nat_probs, 1, (y.unsqueeze(1)).long()).squeeze()
    loss_robust = (1.0 / batch_size) * torch.sum(
        torch.sum(kl(torch.log(adv_probs + 1e-12), nat_probs), dim=1) * (1.0000001 - true_probs))
    loss = loss_adv + float(beta) * loss_robust
    logged = t.callback_metrics
    assert logged["train/loss"].item() == pytest.approx(F.cross_entropy(logits_adv, y).item(), rel=1e-5)
    assert logged["train/mart_kl"].item() == pytest.approx(loss_robust.item(), rel=1e-4)
    assert logged["train/mart_loss"].item() == pytest.approx(loss.item(), rel=1e-5)


def fit_weights(callbacks, steps=6):
    L.seed_everything(0)
    task = tiny_task()
    trainer(callbacks=callbacks, max_steps=steps, limit_val_batches=0).fit(task, datamodule=synthetic())
    return [p.detach().clone() for p in task.parameters()]


def test_trades_with_beta_zero_is_clean_training():
    clean = fit_weights([])
    beta_zero = fit_weights([AdversarialTraining(attack="trades", eps=EPS, steps=3, beta=0.0)])
    trades = fit_weights([AdversarialTraining(attack="trades", eps=EPS, steps=3, beta=6.0)])
    assert all(torch.equal(a, b) for a, b in zip(clean, beta_zero))  # bit for bit
    assert not all(torch.equal(a, b) for a, b in zip(clean, trades))  # the KL term does move the weights


class StepProbe(Callback):
    """Whether training_step is replaced on the instance, seen at every batch."""

    def __init__(self):
        self.replaced = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.replaced.append("training_step" in vars(pl_module))


@pytest.mark.parametrize(
    "kwargs, wraps",
    [
        (dict(attack="trades", steps=2), True),
        (dict(attack="mart", steps=2), True),
        (dict(attack="pgd", steps=2), False),
        (dict(attack="fgsm_rs"), False),
        (dict(attack="free", replays=2), False),
    ],
)
def test_only_the_loss_recipes_wrap_training_step_and_only_during_fit(kwargs, wraps):
    task, probe = tiny_task(), StepProbe()
    trainer(callbacks=[AdversarialTraining(eps=EPS, **kwargs), probe], max_steps=2, limit_val_batches=0).fit(
        task, datamodule=synthetic()
    )
    assert probe.replaced == [wraps, wraps]
    assert "training_step" not in vars(task)


class Crash(Callback):
    def on_train_batch_end(self, *args):
        raise RuntimeError("boom")


def test_the_wrapper_is_removed_after_an_exception():
    task = tiny_task()
    with pytest.raises(RuntimeError, match="boom"):
        trainer(callbacks=[AdversarialTraining(attack="trades", eps=EPS, steps=1), Crash()], max_steps=2).fit(
            task, datamodule=synthetic()
        )
    assert "training_step" not in vars(task)


@pytest.mark.parametrize("attack", ["trades", "mart"])
@pytest.mark.parametrize("precision, autocast", [("bf16-mixed", True), ("32-true", False)])
def test_batch_semantics_eval_mode_autocast_and_statistics(attack, precision, autocast):
    task = tiny_task()
    probe = AttackWindow(task)
    callbacks = [probe.opening, AdversarialTraining(attack=attack, eps=EPS, steps=3), probe.closing]
    trainer(callbacks=callbacks, max_steps=2, limit_val_batches=0, precision=precision).fit(
        task, datamodule=synthetic()
    )
    # trades: f(x) once, then 3 steps; mart: 3 steps. All in eval mode, under the step's autocast.
    assert len(probe.forwards) == 2 * (4 if attack == "trades" else 3)
    assert all(not training and on == autocast for training, on in probe.forwards)
    for before, after in zip(probe.stats_before, probe.stats_after):
        assert all(torch.equal(a, b) for a, b in zip(before, after))
    for (clean, y), (seen, y_seen) in zip(probe.clean, probe.attacked):
        assert torch.equal(y, y_seen)
        if attack == "trades":
            assert torch.equal(seen, clean)  # the task trains on the clean batch
        else:
            delta = (seen - clean).flatten(1).abs().amax(1)
            assert (delta > 0).all() and delta.max() <= EPS + 1e-6  # every image replaced by x_adv


class Grads(Callback):
    """Parameter gradients before and after the callbacks listed between two of these."""

    def __init__(self, record):
        self.record = record

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.record.append([None if p.grad is None else p.grad.clone() for p in pl_module.parameters()])


def test_the_attack_in_training_leaves_the_gradients_alone():
    task, log = tiny_task(), []
    callbacks = [Grads(log), AdversarialTraining(attack="trades", eps=EPS, steps=3), Grads(log)]
    trainer(callbacks=callbacks, max_steps=3, limit_val_batches=0).fit(task, datamodule=synthetic())
    assert any(g is not None for g in log[-1])  # the last step's gradients are still there: a real check
    for before, after in zip(log[::2], log[1::2]):
        assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(before, after))


def test_warmup_eps_zero_adds_nothing():
    L.seed_everything(0)
    task = tiny_task()
    t = trainer(callbacks=[AdversarialTraining(attack="trades", eps=EPS, steps=2, warmup_epochs=1)], max_steps=1,
                limit_val_batches=0)
    t.fit(task, datamodule=synthetic())
    assert t.callback_metrics["train/attack_eps"] == 0
    assert t.callback_metrics["train/trades_kl"] == 0
    assert t.callback_metrics["train/trades_loss"] == t.callback_metrics["train/loss"]


class Manual(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.net = tiny_cnn()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class NoLoss(ImageClassification):
    def training_step(self, batch, batch_idx):
        super().training_step(batch, batch_idx)
        return {"logits": torch.zeros(())}


class MixesInPlace(ImageClassification):
    def training_step(self, batch, batch_idx):
        batch[0].mul_(0.5).add_(batch[0].flip(0))  # as timm's Mixup does to the batch
        return super().training_step(batch, batch_idx)


def test_tasks_the_loss_recipes_cannot_train_are_clear_errors():
    callback = AdversarialTraining(attack="trades", eps=EPS, steps=1)
    with pytest.raises(ValueError, match="optimises manually"):
        trainer(callbacks=[callback], max_steps=1, limit_val_batches=0).fit(Manual(), datamodule=synthetic())
    with pytest.raises(ValueError, match="needs a training_step that returns its loss"):
        trainer(callbacks=[callback], max_steps=1).fit(tiny(NoLoss), datamodule=synthetic())
    with pytest.raises(ValueError, match="changes the batch's images in place"):
        trainer(callbacks=[callback], max_steps=1).fit(tiny(MixesInPlace), datamodule=synthetic())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(attack="trades", eps=EPS), "attack='trades' needs steps >= 1"),
        (dict(attack="mart", eps=EPS, steps=0), "attack='mart' needs steps >= 1"),
        (dict(attack="pgd", eps=EPS, steps=1, beta=1.0), "beta is an option of attack='trades' or 'mart' only"),
        (dict(attack="trades", eps=EPS, steps=1, beta=-1.0), "beta must be a finite number >= 0"),
        (dict(attack="trades", eps=EPS, steps=1, fraction=0.5), "attacks the whole batch"),
    ],
)
def test_bad_options_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdversarialTraining(**kwargs)


def test_defaults():
    callback = AdversarialTraining(attack="trades", eps=0.3, steps=40)
    assert callback.beta == 6.0 and callback.step_size == pytest.approx(2.5 * 0.3 / 40)
    assert callback.guard_drop is None and callback.guard_gap is None  # the guards are fgsm_rs's


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(norm="l1"), "unknown norm 'l1'"),
        (dict(eps=-0.1), "eps must be a finite number >= 0"),
        (dict(step_size=0.0), "step_size must be a finite number > 0"),
        (dict(steps=-1), "steps must be an integer >= 0"),
    ],
)
def test_bad_attack_arguments_are_clear_errors(kwargs, message):
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match=message):
        trades_attack(tiny_cnn(), x, **{"eps": EPS, "step_size": 0.01, "steps": 1, **kwargs})

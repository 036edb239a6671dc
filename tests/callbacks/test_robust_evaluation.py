"""RobustEvaluation: the logged names, numbers known in advance, the fixed subset, inference mode."""

import pytest
import torch
from attack_setup import (
    Brightness,
    TensorData,
    TokenEval,
    brightness_data,
    brightness_task,
    synthetic,
    tiny_task,
    trainer,
)
from torch import nn

from research.attacks import fgsm
from research.callbacks import RobustEvaluation
from research.tasks import ImageClassification


@pytest.mark.parametrize(
    "eps, step_size, steps, fgsm_acc, pgd_acc",
    [(0.1, 0.05, 5, 1.0, 1.0), (0.4, 0.2, 5, 0.0, 0.0), (0.4, 0.05, 1, 0.0, 1.0)],  # the last: PGD too short
)
def test_validation_and_test_log_robust_accuracy(eps, step_size, steps, fgsm_acc, pgd_acc):
    # Brightness is right on every clean image, survives eps < 0.3 and fails every image beyond.
    callback = RobustEvaluation(eps=eps, num_samples=6, pgd_steps=steps, pgd_step_size=step_size)
    t = trainer(callbacks=[callback], max_epochs=1)
    task, data = brightness_task(), brightness_data()
    t.fit(task, datamodule=data)
    metrics = t.callback_metrics
    assert metrics["val/subset_clean_acc"] == 1.0
    assert metrics["val/robust_acc_fgsm"] == fgsm_acc
    assert metrics["val/robust_acc_pgd"] == pgd_acc
    assert metrics["val/robust_acc"] == min(fgsm_acc, pgd_acc)  # worst case per example over both attacks
    t.test(task, datamodule=data)
    assert {"test/subset_clean_acc", "test/robust_acc_fgsm", "test/robust_acc_pgd"} <= set(t.callback_metrics)
    assert len(callback._subsets["val"]) == len(callback._subsets["test"]) == 6


def subset_after(epochs, data, num_samples, sanity=0):
    callback = RobustEvaluation(eps=0.1, num_samples=num_samples, pgd_steps=1)
    t = trainer(callbacks=[callback], max_epochs=epochs, limit_train_batches=1, num_sanity_val_steps=sanity)
    t.fit(tiny_task(), datamodule=data)
    return callback._subsets["val"].tensors()


def test_the_subset_is_a_seeded_sample_of_every_class_fixed_after_the_first_epoch():
    labels = torch.arange(40) // 10  # ordered by class, as the embedded MNIST digits are
    images = torch.rand(40, 1, 8, 8)
    data = TensorData(images, labels, batch_size=4)
    x, y = subset_after(1, data, 8)
    assert len(y) == 8 and len(set(y.tolist())) > 1  # the first 8 would all be class 0
    rows = [int(torch.nonzero((images == xi).flatten(1).all(1))) for xi in x]
    assert rows == sorted(set(rows)) and torch.equal(labels[rows], y)  # distinct examples, in loader order
    x3, _ = subset_after(3, data, 8, sanity=2)  # later epochs and a sanity check change nothing
    assert torch.equal(x, x3)


def test_a_short_loader_gives_all_its_examples_once():
    data = synthetic(num_samples=60, batch_size=4)  # 6 validation images, fewer than num_samples
    images, labels = subset_after(2, data, 100, sanity=1)
    val_set = data.val_set
    expected = torch.cat([x for x, _ in data.val_dataloader()])  # the split's images in loader order
    assert len(val_set) == 6 and torch.equal(images, expected) and len(labels) == 6


def test_default_inference_mode_works_and_so_does_no_grad():
    for inference_mode in (True, False):
        t = trainer(callbacks=[RobustEvaluation(eps=0.1, num_samples=4, pgd_steps=2)], inference_mode=inference_mode)
        t.validate(tiny_task(), datamodule=synthetic())
        assert "val/robust_acc_pgd" in t.callback_metrics


def test_l2_runs_pgd_only():
    t = trainer(callbacks=[RobustEvaluation(eps=0.5, norm="l2", num_samples=4, pgd_steps=2)])
    t.validate(tiny_task(), datamodule=synthetic())
    assert "val/robust_acc_pgd" in t.callback_metrics and "val/robust_acc_fgsm" not in t.callback_metrics


class CachedGain(Brightness):
    """Builds a tensor on its first forward: inside inference mode, when that is a validation step."""

    def __init__(self):
        super().__init__()
        self.gain = None

    def forward(self, x):
        if self.gain is None:
            self.gain = torch.ones_like(x[0])
        return super().forward(x * self.gain)  # saves gain for the backward to x


def test_a_tensor_made_in_inference_mode_asks_for_inference_mode_false():
    task = ImageClassification(CachedGain(), num_classes=2, mean=(0.0,), std=(1.0,))
    callback = RobustEvaluation(eps=0.1, num_samples=4, pgd_steps=1)
    with pytest.raises(ValueError, match="Set trainer.inference_mode: false"):
        trainer(callbacks=[callback]).validate(task, datamodule=brightness_data())
    task = ImageClassification(CachedGain(), num_classes=2, mean=(0.0,), std=(1.0,))
    t = trainer(callbacks=[callback], inference_mode=False)
    t.validate(task, datamodule=brightness_data())
    assert t.callback_metrics["val/robust_acc_pgd"] == 1.0


def test_task_without_images_is_a_clear_error():
    with pytest.raises(ValueError, match=r"RobustEvaluation expects batches of \(images, labels\)"):
        trainer(callbacks=[RobustEvaluation(eps=0.1)]).validate(TokenEval())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(eps=0), "eps must be > 0"),
        (dict(eps=0.1, norm="l1"), "unknown norm 'l1'"),
        (dict(eps=0.1, num_samples=0), "num_samples must be >= 1"),
        (dict(eps=0.1, pgd_step_size=-1.0), "pgd_step_size must be > 0"),
    ],
)
def test_bad_options_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RobustEvaluation(**kwargs)


class Sine(nn.Module):
    """The issue's counter-example: logits [sin(4 pi (mean(x) - 0.1875)), 0]. Wrong on a grey image of
    0.5s (sin(1.25 pi) < 0), right after an L-inf step of 0.3 either way: an attack that "fixes" it."""

    def forward(self, x):
        first = torch.sin(4 * torch.pi * (x.mean(dim=(1, 2, 3)) - 0.1875))
        return torch.stack([first, torch.zeros_like(first)], dim=1)


def test_a_wrong_clean_prediction_is_never_counted_robust():
    task = ImageClassification(Sine(), num_classes=2, mean=(0.0,), std=(1.0,))
    grey = TensorData(torch.full((1, 1, 4, 4), 0.5), torch.tensor([0]), batch_size=1)
    callback = RobustEvaluation(eps=0.3, num_samples=1, pgd_steps=1, pgd_step_size=0.3)
    t = trainer(callbacks=[callback])
    t.validate(task, datamodule=grey)
    x_adv = fgsm(task, torch.full((1, 1, 4, 4), 0.5), torch.tensor([0]), eps=0.3)
    assert task(x_adv).argmax(-1).item() == 0  # the attack lands on a correct prediction: the test can tell
    metrics = {k: v.item() for k, v in t.callback_metrics.items() if "robust" in k or "subset" in k}
    assert metrics == {"val/subset_clean_acc": 0.0, "val/robust_acc_fgsm": 0.0, "val/robust_acc_pgd": 0.0,
                       "val/robust_acc": 0.0}


@pytest.mark.parametrize("attack", ["apgd", "autoattack"])
@pytest.mark.parametrize("eps, expected", [(0.2, 1.0), (0.35, 0.0)])
def test_apgd_and_autoattack_are_logged_and_count_in_the_worst_case(attack, eps, expected):
    # Brightness survives eps < 0.3 and fails every image beyond: known in advance for any attack.
    callback = RobustEvaluation(eps=eps, num_samples=6, attack=attack, pgd_steps=2, apgd_steps=10)
    t = trainer(callbacks=[callback])
    t.validate(brightness_task(), datamodule=brightness_data())
    metrics = {k: v.item() for k, v in t.callback_metrics.items() if "robust" in k}
    assert metrics == {f"val/robust_acc_{name}": pytest.approx(expected, abs=0) for name in callback.names} | {
        "val/robust_acc": expected}
    assert callback.names == ["fgsm", "pgd", attack]


def test_robust_acc_is_the_worst_case_per_example_not_the_smallest_attack_figure():
    """Two attacks that each fool a different half: each alone reports 50%, together 0%."""
    callback = RobustEvaluation(eps=0.1, num_samples=6)
    half = torch.tensor([True, True, True, False, False, False])
    callback._survives = lambda module, name, x, y: half if name == "fgsm" else ~half
    t = trainer(callbacks=[callback])
    t.validate(brightness_task(), datamodule=brightness_data())  # right on every clean image
    metrics = {k: v.item() for k, v in t.callback_metrics.items() if "robust" in k or "subset" in k}
    assert metrics == {"val/subset_clean_acc": 1.0, "val/robust_acc_fgsm": 0.5, "val/robust_acc_pgd": 0.5,
                       "val/robust_acc": 0.0}

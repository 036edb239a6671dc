"""Pruning callback: the weights it picks, the gradual schedule, exact sparsities and bad amounts."""

import lightning as L
import pytest
from torch import nn

from research.callbacks import Pruning
from research.callbacks.pruning import sparsity
from research.data import SyntheticDataModule
from research.tasks import ImageClassification

MODEL = {"name": "five_layer_cnn", "num_classes": 4, "img_size": 16, "hidden_dim": 16}


def fit(callback: Pruning, epochs: int = 3) -> tuple[ImageClassification, L.Trainer]:
    L.seed_everything(0)
    task = ImageClassification(MODEL, optim={"lr": 3e-3, "schedule": "constant"})
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=epochs, limit_train_batches=2, limit_val_batches=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
    )
    trainer.fit(task, datamodule=SyntheticDataModule(num_samples=48, num_classes=4, img_size=16, in_chans=1,
                                                 batch_size=16))
    return task, trainer


def pruned_layers(task):
    model = task.model
    return [model.features[0], model.features[3], model.features[7], model.hidden]  # all but the classifier


@pytest.mark.parametrize("amount", [1.0, -0.1, 1.5, True, "0.5"])
def test_amount_outside_zero_one_is_rejected(amount):
    with pytest.raises(ValueError, match=r"must be in \[0, 1\), got"):
        Pruning(amount=amount)


def test_bad_schedule_or_method_is_rejected():
    with pytest.raises(ValueError, match="start_epoch <= end_epoch"):
        Pruning(start_epoch=3, end_epoch=1)
    with pytest.raises(ValueError, match="unknown pruning method"):
        Pruning(method="random")


def test_schedule_is_zhu_and_gupta_cubic():
    pruning = Pruning(amount=0.8, start_epoch=1, end_epoch=3)
    targets = [pruning.target_sparsity(e) for e in range(6)]
    expected = [0.0, 0.8 * (1 - (2 / 3) ** 3), 0.8 * (1 - (1 / 3) ** 3), 0.8, 0.8, 0.8]
    assert targets == pytest.approx(expected)
    assert Pruning(amount=0.5).target_sparsity(0) == 0.5  # one shot by default


def test_unstructured_reaches_the_target_gradually_and_leaves_the_classifier(tmp_path):
    callback = Pruning(amount=0.6, method="l1_unstructured", start_epoch=0, end_epoch=1)
    task, trainer = fit(callback)
    weights = [m.weight for m in pruned_layers(task)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.6, abs=1e-3)  # global ranking: the total is exact, layers differ
    assert not (task.model.fc.weight == 0).any()
    assert not hasattr(task.model.hidden, "weight_orig")  # masks folded in at the end
    assert trainer.callback_metrics["prune/sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert trainer.callback_metrics["prune/target"] == pytest.approx(0.6)
    assert sparsity(task.model) < 0.6  # the unpruned classifier dilutes the whole model's figure


def test_first_step_follows_the_schedule():
    callback = Pruning(amount=0.6, start_epoch=0, end_epoch=2)
    _, trainer = fit(callback, epochs=1)
    assert trainer.callback_metrics["prune/sparsity"] == pytest.approx(0.6 * (1 - (2 / 3) ** 3), abs=1e-3)


def test_structured_removes_whole_channels_in_every_layer():
    callback = Pruning(amount=0.5, method="ln_structured", start_epoch=0, end_epoch=1)
    task, trainer = fit(callback)
    for layer in pruned_layers(task):
        rows = layer.weight.detach().flatten(1)
        dead = (rows == 0).all(1)
        assert int(dead.sum()) == round(0.5 * len(rows)), layer  # whole output channels/neurons
    assert trainer.callback_metrics["prune/channel_sparsity"] == pytest.approx(0.5, abs=0.02)


def test_only_the_tasks_model_is_pruned():
    class WithTeacher(ImageClassification):
        def __init__(self):
            super().__init__(MODEL, optim={"lr": 1e-3})
            self.teacher = nn.Linear(4, 4)

    task = WithTeacher()
    callback = Pruning(amount=0.5)
    callback.setup(None, task, "fit")
    picked = {id(m) for m, _ in callback._parameters_to_prune}
    assert picked == {id(m) for m in pruned_layers(task)}


def test_a_model_with_only_a_classifier_is_a_clear_error():
    task = ImageClassification(nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 4)), num_classes=4)
    with pytest.raises(ValueError, match="no Conv or Linear layer to prune besides its classifier"):
        Pruning(amount=0.5).setup(None, task, "fit")

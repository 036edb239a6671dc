from types import SimpleNamespace

import lightning as L
import pytest
import torch
from conftest import trainer
from torch import nn

from research.data import SyntheticDataModule
from research.tasks import ImageClassification

TINY = {"name": "resnet20", "num_classes": 4, "in_chans": 3}




def synthetic(**kw) -> SyntheticDataModule:
    return SyntheticDataModule(
        **{"num_samples": 64, "num_classes": 4, "img_size": 16, "in_chans": 3, "batch_size": 16, **kw}
    )


def test_overfits_one_batch():
    L.seed_everything(0)
    dm = synthetic()
    task = ImageClassification(TINY, optim={"name": "adamw", "lr": 3e-3, "weight_decay": 0.0, "schedule": "constant"})
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    # without a Trainer the normalisation stays identity; the batch is fed by hand below
    first = nn.functional.cross_entropy(task(x), y).item()
    opt = task.configure_optimizers()
    task.train()
    for _ in range(60):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(task(x), y)
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first


def test_fit_adopts_datamodule_stats_and_logs_metrics():
    dm = synthetic()
    task = ImageClassification(TINY, optim={"lr": 1e-3})
    t = trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    t.fit(task, datamodule=dm)
    assert torch.allclose(task.mean.flatten(), torch.tensor(dm.mean))
    assert task.hparams.mean == tuple(dm.mean)
    assert {"train/loss", "train/acc", "val/acc", "val/acc_top5", "val/loss"} <= set(t.callback_metrics)


def test_normalisation_happens_inside_the_task():
    task = ImageClassification(TINY, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)).eval()
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(task(x), task.model((x - 0.5) / 0.25))


def test_mixup_cutmix_and_label_smoothing_train():
    dm = synthetic()
    task = ImageClassification(TINY, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    t = trainer(max_steps=2, limit_val_batches=0)
    t.fit(task, datamodule=dm)
    assert torch.isfinite(t.callback_metrics["train/loss"])


def test_num_classes_mismatch_stops_before_training():
    task = ImageClassification({**TINY, "num_classes": 100})
    with pytest.raises(
        ValueError, match="predicts 100 classes but SyntheticDataModule has 4; set num_classes: 4"
    ):
        trainer(max_steps=1).fit(task, datamodule=synthetic())


def test_wrong_channels_stops_before_training():
    task = ImageClassification({**TINY, "in_chans": 1})
    with pytest.raises(ValueError, match="cannot take this data's images"):
        trainer(max_steps=1).fit(task, datamodule=synthetic())


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    other = ImageClassification({"name": "resnet32", "num_classes": 4})
    t = trainer(max_steps=1, limit_val_batches=0)
    t.fit(other, datamodule=synthetic())
    t.save_checkpoint(tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="this checkpoint holds .*resnet32.*Resume with the config"):
        ImageClassification.load_from_checkpoint(tmp_path / "other.ckpt", model=TINY, weights_only=True)
    task = ImageClassification.load_from_checkpoint(tmp_path / "other.ckpt", weights_only=True)
    assert task.hparams.mean == tuple(synthetic().mean)  # normalisation travels with the checkpoint


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown model 'resnet21'; did you mean"):
        ImageClassification({"name": "resnet21", "num_classes": 4})
    with pytest.raises(ValueError, match="needs a 'name' key"):
        ImageClassification({"num_classes": 4})
    with pytest.raises(ValueError, match="unknown schedule"):
        ImageClassification(TINY, optim={"schedule": "step"})
    with pytest.raises(ValueError, match="both mean and std"):
        ImageClassification(TINY, mean=(0.5,))


def test_pretrained_weights_initialise_the_model(tmp_path):
    source = ImageClassification(TINY)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "source.ckpt")  # a checkpoint of this task
    task = ImageClassification(TINY, pretrained=str(tmp_path / "source.ckpt"))
    for k, v in source.model.state_dict().items():
        assert torch.equal(task.model.state_dict()[k], v), k
    with pytest.raises(FileNotFoundError, match=r"no pretrained checkpoint at .*nowhere.ckpt: train it first"):
        ImageClassification(TINY, pretrained=str(tmp_path / "nowhere.ckpt"))
    with pytest.raises(ValueError, match="cannot initialise .*resnet32.* from .*source.ckpt"):
        ImageClassification({**TINY, "name": "resnet32"}, pretrained=str(tmp_path / "source.ckpt"))


def test_fine_tuning_with_layer_decay_trains_the_head_fastest():
    vit = {"name": "vit_tiny_patch4_32", "img_size": 16, "depth": 2, "embed_dim": 16, "num_heads": 2, "num_classes": 4}
    task = ImageClassification(vit, optim={"lr": 0.01, "layer_decay": 0.5})
    t = trainer(max_steps=2, limit_val_batches=1)
    t.fit(task, datamodule=synthetic())
    lrs = sorted({g["initial_lr"] for g in t.optimizers[0].param_groups})
    assert lrs == pytest.approx([0.01 * 0.5**k for k in (3, 2, 1, 0)])  # embedding, 2 blocks, head
    with pytest.raises(ValueError, match="a linear probe freezes"):
        ImageClassification(vit, linear_probe=True, optim={"layer_decay": 0.75})


def test_linear_probe_trains_only_a_batchnorm_linear_head_on_a_frozen_model():
    task = ImageClassification(TINY, linear_probe=True, optim={"name": "sgd", "lr": 0.1, "weight_decay": 0.0})
    norm, head = task.probe
    assert isinstance(norm, nn.BatchNorm1d) and not norm.affine and head.in_features == task.model.num_features
    frozen = {k: v.clone() for k, v in task.model.state_dict().items()}  # BatchNorm statistics included
    assert not any(p.requires_grad for p in task.model.parameters())  # no backward through the model
    t = trainer(max_steps=3, limit_val_batches=1)
    t.fit(task, datamodule=synthetic())
    trained = {id(p) for g in t.optimizers[0].param_groups for p in g["params"]}
    assert trained == {id(p) for p in task.probe.parameters()}
    for k, v in task.model.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    assert norm.num_batches_tracked == 3  # the probe's own BatchNorm learns the feature statistics
    task.train()
    assert not any(m.training for m in task.model.modules()) and task.probe.training
    x = torch.rand(2, 3, 16, 16)
    features = task.model.forward_head(task.model.forward_features((x - task.mean) / task.std), pre_logits=True)
    torch.testing.assert_close(task.eval()(x), task.probe(features))


def test_fitting_to_the_data_runs_on_the_tasks_device_whatever_the_default_device():
    """The Trainer calls configure_model with the accelerator (here: meta) as the default device."""
    task = ImageClassification({"name": "vit_tiny_patch4_32", "img_size": 16, "depth": 1, "num_classes": 4})
    dm = synthetic()
    dm.setup("fit")
    task._trainer = SimpleNamespace(datamodule=dm)  # what configure_model reads of the Trainer
    with torch.device("meta"):
        task.configure_model()  # the datamodule's statistics and the dry forward
    assert task.mean.device.type == "cpu" and task.hparams.mean == tuple(dm.mean)

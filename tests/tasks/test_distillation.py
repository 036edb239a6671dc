"""Knowledge distillation: Hinton et al.'s loss, a frozen teacher, and clear errors for a wrong teacher."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import trainer

from research.data import SyntheticDataModule
from research.models import create_model
from research.tasks import Distillation
from research.tasks.distillation import distillation_loss

STUDENT = {"name": "five_layer_cnn", "num_classes": 4, "img_size": 16, "hidden_dim": 8}
TEACHER = {"name": "five_layer_cnn", "num_classes": 4, "img_size": 16, "hidden_dim": 32}




def synthetic() -> SyntheticDataModule:
    return SyntheticDataModule(num_samples=48, num_classes=4, img_size=16, in_chans=1, batch_size=16)


def save_teacher(path, spec=TEACHER, *, lightning_layout=True):
    """A teacher checkpoint as ImageClassification writes it ("model." keys, model spec in hparams) or a bare one."""
    teacher = create_model(spec["name"], **{k: v for k, v in spec.items() if k != "name"})
    sd = teacher.state_dict()
    ckpt = {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "hyper_parameters": {"model": spec}}
    torch.save(ckpt if lightning_layout else sd, path)
    return teacher


def test_loss_is_hintons_formula():
    torch.manual_seed(0)
    s, t, y = torch.randn(5, 4), torch.randn(5, 4), torch.randint(0, 4, (5,))
    alpha, T = 0.3, 2.5
    p_t, log_p_s = (t / T).softmax(-1), (s / T).log_softmax(-1)
    kl = (p_t * (p_t.log() - log_p_s)).sum(-1).mean()  # KL(p_teacher || p_student), per example then mean
    expected = alpha * F.cross_entropy(s, y) + (1 - alpha) * T**2 * kl
    loss, hard, soft = distillation_loss(s, t, y, alpha=alpha, temperature=T)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(soft, T**2 * kl)
    # alpha = 1 is the student alone; a student equal to its teacher has no soft loss
    torch.testing.assert_close(distillation_loss(s, t, y, alpha=1.0, temperature=T)[0], F.cross_entropy(s, y))
    assert distillation_loss(t, t, y, alpha=0.0, temperature=T)[0].abs() < 1e-6


def test_soft_term_gradient_pulls_the_student_towards_the_teacher():
    t = torch.tensor([[3.0, 0.0, -1.0]])
    s = torch.zeros(1, 3, requires_grad=True)
    distillation_loss(s, t, torch.tensor([2]), alpha=0.0, temperature=2.0)[0].backward()
    assert s.grad[0, 0] < 0 < s.grad[0, 2]  # gradient descent raises the teacher's top class


def test_teacher_loads_frozen_and_stays_in_eval_mode(tmp_path):
    teacher = save_teacher(tmp_path / "teacher.ckpt")
    task = Distillation(STUDENT, teacher=TEACHER, teacher_checkpoint=str(tmp_path / "teacher.ckpt"))
    for name, value in teacher.state_dict().items():
        torch.testing.assert_close(task.teacher.state_dict()[name], value)
    task.train()
    assert task.model.training and not task.teacher.training
    assert not any(p.requires_grad for p in task.teacher.parameters())


def test_fit_trains_the_student_only_and_checkpoints_rebuild_without_the_teacher_file(tmp_path):
    L.seed_everything(0)
    save_teacher(tmp_path / "teacher.ckpt")
    task = Distillation(
        STUDENT, teacher=TEACHER, teacher_checkpoint=str(tmp_path / "teacher.ckpt"),
        optim={"lr": 1e-2, "schedule": "constant"},
    )
    teacher_before = {k: v.clone() for k, v in task.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in task.model.state_dict().items()}
    t = trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    t.fit(task, datamodule=synthetic())
    assert {"train/loss", "train/ce", "train/kd", "val/acc"} <= set(t.callback_metrics)
    for k, v in task.teacher.state_dict().items():  # BatchNorm running stats included: eval mode held
        assert torch.equal(v, teacher_before[k]), k
    assert any(not torch.equal(v, student_before[k]) for k, v in task.model.state_dict().items())
    optimised = {id(p) for group in t.optimizers[0].param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in task.teacher.parameters()}

    t.save_checkpoint(tmp_path / "distilled.ckpt")
    (tmp_path / "teacher.ckpt").unlink()
    restored = Distillation.load_from_checkpoint(tmp_path / "distilled.ckpt", weights_only=True)
    assert restored.hparams.teacher_checkpoint is None
    for k, v in task.state_dict().items():
        assert torch.equal(restored.state_dict()[k], v), k


def test_teacher_checkpoint_for_other_classes_is_a_clear_error(tmp_path):
    other = {**TEACHER, "num_classes": 7}
    save_teacher(tmp_path / "lightning.ckpt", other)
    with pytest.raises(ValueError, match="trained for 7 classes .* have 4"):
        Distillation(STUDENT, teacher=TEACHER, teacher_checkpoint=str(tmp_path / "lightning.ckpt"))
    save_teacher(tmp_path / "bare.pt", other, lightning_layout=False)  # no record of its classes: shapes tell
    with pytest.raises(ValueError, match=r"cannot load the teacher .*fc.weight: checkpoint \(7, 32\)"):
        Distillation(STUDENT, teacher=TEACHER, teacher_checkpoint=str(tmp_path / "bare.pt"))
    with pytest.raises(ValueError, match="teacher .* predicts 7 classes but the student predicts 4"):
        Distillation(STUDENT, teacher=other)


def test_fit_without_teacher_weights_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="needs a trained teacher: set teacher_checkpoint"):
        trainer(fast_dev_run=True).fit(Distillation(STUDENT, teacher=TEACHER), datamodule=synthetic())
    with pytest.raises(FileNotFoundError, match=r"no teacher checkpoint at .*missing.ckpt: train it first with"):
        Distillation(STUDENT, teacher=TEACHER, teacher_checkpoint=str(tmp_path / "missing.ckpt"))


def test_bad_alpha_and_temperature_are_rejected():
    with pytest.raises(ValueError, match=r"alpha .* \[0, 1\], got 1.5"):
        Distillation(STUDENT, teacher=TEACHER, alpha=1.5)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        Distillation(STUDENT, teacher=TEACHER, temperature=0.0)

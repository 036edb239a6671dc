import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from research.tasks.optim import (
    build_optimizer,
    one_cycle_linear,
    one_cycle_over_run,
    param_groups,
    run_length,
    warmup_cosine,
)


def test_no_weight_decay_on_biases_norms_and_tokens():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.norm = nn.LayerNorm(4)
            self.pos_embed = nn.Parameter(torch.zeros(1, 3, 4))

    decay, no_decay = param_groups(Net(), 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 4  # fc.bias, norm.weight, norm.bias, pos_embed


def test_warmup_then_cosine_to_min():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))  # monotone decay after warm-up
    halfway = 4 + 5
    assert lrs[halfway] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_unknown_optimizer_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown optimizer 'adam'; choose 'adamw' or 'sgd'"):
        build_optimizer(nn.Linear(2, 2), "adam", lr=1e-3, weight_decay=0.0)


def _lr_by_name(model, optimizer):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}


def test_layer_decay_scales_each_vit_layer_geometrically():
    from research.models import create_model

    model = create_model("vit_tiny_patch4_32", depth=3, embed_dim=32, num_heads=2, num_classes=5)
    lr = _lr_by_name(model, build_optimizer(model, "adamw", lr=1.0, weight_decay=0.05, layer_decay=0.5))
    # embeddings are layer 0, block i is layer i + 1, the head is layer L + 1 = 4 and keeps the full lr
    assert lr["head.weight"] == (1.0, 0.05) and lr["head.bias"] == (1.0, 0.0)
    for i in range(3):
        assert lr[f"blocks.{i}.attn.qkv.weight"] == (0.5 ** (3 - i), 0.05)
        assert lr[f"blocks.{i}.norm1.weight"] == (0.5 ** (3 - i), 0.0)
    assert lr["patch_embed.proj.weight"] == (0.5**4, 0.05)
    assert lr["pos_embed"] == lr["cls_token"] == (0.5**4, 0.0)  # positions and tokens never decay


def test_layer_decay_puts_swin_patch_norm_with_the_embedding():
    from research.models import create_model

    model = create_model(
        "swin_tiny_patch4_window7_224", img_size=32, window_size=2, embed_dim=8, depths=(1, 1), num_heads=(1, 2),
        num_classes=3,
    )
    lr = _lr_by_name(model, build_optimizer(model, "sgd", lr=1.0, weight_decay=0.0, layer_decay=0.5))
    assert lr["patch_norm.weight"][0] == lr["patch_embed.proj.weight"][0] == min(v for v, _ in lr.values())
    assert lr["layers.1.downsample.reduction.weight"][0] == lr["layers.1.blocks.0.attn.qkv.weight"][0]
    assert lr["head.weight"][0] == 1.0


def test_layer_decay_keeps_its_ratios_under_the_schedule():
    from research.models import create_model

    model = create_model("vit_tiny_patch4_32", depth=2, embed_dim=32, num_heads=2, num_classes=5)
    optimizer = build_optimizer(model, "adamw", lr=1.0, weight_decay=0.0, layer_decay=0.5)
    sched = warmup_cosine(optimizer, warmup_steps=2, total_steps=10)
    for _ in range(3):
        optimizer.step()
        sched.step()
    lrs = sorted({g["lr"] for g in optimizer.param_groups})
    assert lrs == pytest.approx([lrs[-1] * 0.5**k for k in (3, 2, 1, 0)])


def test_layer_decay_without_layers_is_a_clear_error():
    with pytest.raises(ValueError, match="layer_decay needs a model that names its layers"):
        build_optimizer(nn.Linear(2, 2), "adamw", lr=1e-3, weight_decay=0.0, layer_decay=0.75)
    with pytest.raises(ValueError, match=r"layer_decay must be in \(0, 1\]"):
        build_optimizer(nn.Linear(2, 2), "adamw", lr=1e-3, weight_decay=0.0, layer_decay=1.5)


def test_a_schedule_over_an_endless_run_is_a_clear_error():
    assert run_length(SimpleNamespace(estimated_stepping_batches=120), "cosine") == 120
    with pytest.raises(ValueError, match="the linear schedule needs a run length: set trainer.max_epochs"):
        run_length(SimpleNamespace(estimated_stepping_batches=float("inf")), "linear")


def wong_cyclic_lr(epoch: int, i: int, *, epochs: int, batches: int, lr_max: float) -> float:
    """The lr of batch i of ``epoch`` in Wong et al.'s MNIST code (fast_adversarial, MNIST/train_mnist.py)."""
    lr_schedule = lambda t: np.interp([t], [0, epochs * 2 // 5, epochs], [0, lr_max, 0])[0]  # noqa: E731 (theirs)
    return lr_schedule(epoch + (i + 1) / batches)


@pytest.mark.parametrize("epochs, batches", [(10, 80), (5, 7), (3, 2)])
def test_one_cycle_is_wong_et_al_cyclic_lr_at_every_step(epochs, batches):
    param = nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.Adam([param], lr=5e-3)  # their MNIST recipe: Adam, lr_max 5e-3
    peak = epochs * 2 // 5  # their peak epoch (integer division, as in their code)
    sched = one_cycle_linear(optimizer, warmup_steps=peak * batches, total_steps=epochs * batches)
    for epoch in range(epochs):
        for i in range(batches):
            expected = wong_cyclic_lr(epoch, i, epochs=epochs, batches=batches, lr_max=5e-3)
            assert abs(optimizer.param_groups[0]["lr"] - expected) < 1e-9, (epoch, i)
            param.grad = torch.ones_like(param)
            optimizer.step()
            sched.step()
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.999)  # no momentum cycling


def test_one_cycle_keeps_group_ratios_and_ends_at_min_lr():
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.25}], lr=1.0)
    sched = one_cycle_linear(optimizer, warmup_steps=2.5, total_steps=6, min_lr_ratio=0.1)
    lrs = []
    for _ in range(6):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        sched.step()
    expected = np.interp(np.arange(1, 7), [0, 2.5, 6], [0, 1, 0.1])  # a peak between two steps is fine
    assert np.allclose([lr for lr, _ in lrs], expected, rtol=0, atol=1e-12)
    assert np.allclose([lr for _, lr in lrs], 0.25 * expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("warmup_steps, total_steps", [(0.8, 2), (1, 3), (1.2, 3)])
def test_one_cycle_of_a_run_of_a_few_steps_stays_on_the_line(warmup_steps, total_steps):
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = one_cycle_linear(optimizer, warmup_steps=warmup_steps, total_steps=total_steps)
    lrs = []
    for _ in range(total_steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        sched.step()
    expected = np.interp(np.arange(1, total_steps + 1), [0, warmup_steps, total_steps], [0, 1, 0])
    assert np.allclose(lrs, expected, rtol=0, atol=1e-8)


def test_one_cycle_without_room_for_its_peak_is_a_clear_error():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    for warmup_steps in (0, 10, 12):
        with pytest.raises(ValueError, match="0 < warmup steps < 10"):
            one_cycle_linear(optimizer, warmup_steps=warmup_steps, total_steps=10)
    with pytest.raises(ValueError, match="min_lr_ratio must lie in"):
        one_cycle_linear(optimizer, warmup_steps=4, total_steps=10, min_lr_ratio=2.0)


def test_cyclic_schedule_of_the_classification_task_steps_as_wong_et_al():
    import lightning as L

    from research.data import SyntheticDataModule
    from research.tasks import ImageClassification

    class RecordLR(L.Callback):
        def __init__(self):
            self.lrs = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.lrs.append((trainer.current_epoch, batch_idx, trainer.optimizers[0].param_groups[0]["lr"]))

    L.seed_everything(0)
    epochs, record = 5, RecordLR()
    task = ImageClassification({"name": "madry_mnist_cnn", "num_classes": 4, "in_chans": 1, "img_size": 8},
                               optim={"name": "adamw", "lr": 5e-3, "weight_decay": 0.0, "schedule": "cyclic",
                                      "cycle_peak": (epochs * 2 // 5) / epochs}, mean=[0.0], std=[1.0])
    data = SyntheticDataModule(num_samples=96, num_classes=4, img_size=8, in_chans=1, batch_size=16)
    trainer = L.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[record],
                        limit_val_batches=0)
    trainer.fit(task, datamodule=data)
    batches = trainer.num_training_batches
    assert len(record.lrs) == epochs * batches and batches > 1
    for epoch, i, lr in record.lrs:
        assert abs(lr - wong_cyclic_lr(epoch, i, epochs=epochs, batches=batches, lr_max=5e-3)) < 1e-9, (epoch, i)


def test_cyclic_schedule_options_are_checked():
    from research.tasks import ImageClassification

    model = {"name": "madry_mnist_cnn", "num_classes": 4, "in_chans": 1, "img_size": 8}
    with pytest.raises(ValueError, match="schedule 'cyclic' rises until cycle_peak .* warmup_epochs"):
        ImageClassification(model, optim={"schedule": "cyclic", "warmup_epochs": 4})
    trainer = SimpleNamespace(estimated_stepping_batches=100)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    assert one_cycle_over_run(trainer, optimizer, peak=0.4, min_lr_ratio=0.0).total_steps == 100
    with pytest.raises(ValueError, match=r"cycle_peak .* in \(0, 1\) \(Wong et al.: 0.4\), got 4"):
        one_cycle_over_run(trainer, optimizer, peak=4, min_lr_ratio=0.0)

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from research.tasks.optim import build_optimizer, param_groups, run_length, warmup_cosine


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

"""Tiny classifiers for the attack tests: milliseconds per forward, with every kind of state an attack must keep."""

import torch
from torch import nn


def tiny_cnn(*, in_chans: int, height: int, width: int, num_classes: int, hidden: int = 4, seed: int = 0,
             batch_norm: bool = True, dropout: float = 0.0) -> nn.Module:
    """conv3x3 -> [BatchNorm] -> ReLU -> [dropout] -> linear, with BatchNorm statistics away from their init."""
    g = torch.Generator().manual_seed(seed)
    layers = [nn.Conv2d(in_chans, hidden, 3, padding=1)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(hidden))
    layers += [nn.ReLU(), nn.Dropout(dropout), nn.Flatten(), nn.Linear(hidden * height * width, num_classes)]
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(hidden, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(hidden, generator=g) + 0.5)
                m.num_batches_tracked.fill_(7)
    return model


def linear_classifier(*, in_features: int, num_classes: int, seed: int = 0) -> nn.Module:
    """Logits linear in the input: cross-entropy is then convex in the input, which makes ascent provable."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_classes))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return model


def snapshot(model: nn.Module) -> dict:
    """Everything an attack must leave alone: modes, buffers, grads, requires_grad flags, weights."""
    return {
        "modes": [m.training for m in model.modules()],
        "buffers": {k: v.clone() for k, v in model.named_buffers()},
        "params": {k: p.detach().clone() for k, p in model.named_parameters()},
        "grads": {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert after["modes"] == before["modes"]
    assert after["requires_grad"] == before["requires_grad"]
    for group in ("buffers", "params"):
        for k, v in before[group].items():
            assert torch.equal(after[group][k], v), f"{group} {k} changed"
    for k, g in before["grads"].items():
        if g is None:
            assert after["grads"][k] is None, f"the attack created {k}.grad"
        else:
            assert torch.equal(after["grads"][k], g), f"the attack changed {k}.grad"

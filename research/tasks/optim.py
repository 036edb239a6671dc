"""Optimizers and learning-rate schedules shared by every task."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

OptimizerName = Literal["adamw", "sgd"]


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Split parameters so that biases, norm weights and embeddings/tokens (1-D or flagged) get no decay.

    Decaying a LayerNorm/BatchNorm gain or a bias only shrinks it towards zero without regularising
    the function (Goyal et al. 2017; timm's ``param_groups_weight_decay`` does the same).
    """
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        # Swin's relative position bias tables are position embeddings too (not decayed in the official recipe)
        skip = p.ndim <= 1 or name.endswith(("pos_embed", "cls_token", "mask_token", "relative_position_bias_table"))
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(
    module: nn.Module,
    name: OptimizerName,
    *,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
    nesterov: bool = False,
) -> torch.optim.Optimizer:
    """AdamW or SGD over ``module``'s trainable parameters, without weight decay on biases and norms."""
    groups = param_groups(module, weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    raise ValueError(f"unknown optimizer {name!r}; choose 'adamw' or 'sgd'")


def warmup_cosine(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 to the base LR over ``warmup_steps``, then cosine decay to ``min_lr_ratio``.

    The schedule is stepped once per optimizer step (Goyal et al. 2017 warm-up; Loshchilov & Hutter
    2017 cosine without restarts).
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup_steps = min(warmup_steps, total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def warmup_linear(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 to the base LR over ``warmup_steps``, then linear decay to ``min_lr_ratio``.

    BERT's schedule (Devlin et al. 2019, App. A.2: "learning rate warmup over the first 10,000
    steps, and linear decay of the learning rate"), stepped once per optimizer step; the LR reaches
    ``lr * min_lr_ratio`` at ``total_steps`` and stays there.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup_steps = min(warmup_steps, total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 1.0 - (1.0 - min_lr_ratio) * progress

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

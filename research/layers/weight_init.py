"""Weight initialisation that several models share (the name and the idea are timm's ``layers/weight_init.py``)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn


def init_linears_(model: nn.Module, init_weight: Callable[[Tensor], object]) -> None:
    """Initialise every ``nn.Linear`` of ``model`` in place: ``init_weight(weight)``, and zero biases.

    The layers are visited in ``model.modules()`` order, so a seeded run draws the same numbers.

    Args:
        model: any module; its ``nn.Linear`` submodules (itself included) are initialised.
        init_weight: an in-place initialiser of a weight, e.g. ``nn.init.xavier_uniform_`` (Transformer,
            MAE) or ``partial(nn.init.trunc_normal_, std=0.02)`` (ViT, Swin).

    """
    for module in model.modules():
        if isinstance(module, nn.Linear):
            init_weight(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

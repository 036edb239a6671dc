"""The state an attack must leave as it found it: every module's mode and every running statistic."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase


@contextmanager
def attack_mode(model: nn.Module, *, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Run an attack on ``model``, then put back each module's ``training`` flag and running statistics.

    With ``eval_mode=True`` (the default, as in Madry et al. 2018 and torchattacks) every module is
    switched to eval for the attack: BatchNorm normalises with its running statistics and dropout
    is off, so the attacked function is the one that is evaluated. With ``eval_mode=False`` every
    module keeps its own mode: BatchNorm in training mode normalises with the batch's statistics,
    as the training step that follows will. A forward in training mode also updates BatchNorm's
    ``running_mean``, ``running_var`` and ``num_batches_tracked``; these buffers are copied on
    entry and written back on exit, so an attack never moves the statistics that evaluation uses.
    (Copying rather than setting ``momentum=0`` also covers ``momentum=None``, whose cumulative
    average reads ``num_batches_tracked``.)

    The modes are recorded per module, not only the top-level flag, so a model that was partly
    in eval (a frozen backbone, say) comes back exactly so.

    Args:
        model: the attacked module.
        eval_mode: switch every module to eval for the duration; otherwise keep their modes.

    Yields:
        ``model`` itself.

    """
    modes = [(module, module.training) for module in model.modules()]
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    if eval_mode:
        model.eval()
    else:
        for module in model.modules():
            if isinstance(module, _NormBase) and module.training and module.track_running_stats:
                saved += [(buf, buf.clone()) for buf in module.buffers(recurse=False) if buf is not None]
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training  # not .train(), which would also reset the children
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)

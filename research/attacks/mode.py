"""What an attack must leave as it found it (modes, running statistics), and the setting every attack runs in."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
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


@contextmanager
def attack_context(model: nn.Module, x: Tensor, y: Tensor, *, eval_mode: bool = True,
                   grad: bool = True) -> Iterator[tuple[Tensor, Tensor]]:
    """The setting every attack runs in, with its own copies of the inputs.

    Inference mode is left (a Lightning evaluation step runs in it), so the tensors made inside are
    ordinary ones that autograd can use; gradients are on (``grad``; off for a query-only attack);
    the model is in :func:`attack_mode` with ``eval_mode``. The perturbation is kept in float32,
    where small steps do not vanish; the model is given the input's dtype (half for a half model).

    Args:
        model: the attacked module.
        x: (B, ...) the images.
        y: (B, ...) the labels, or whatever else the attack's loss takes.
        eval_mode: as :func:`attack_mode`.
        grad: enable gradients (else disable them).

    Yields:
        ``(x0, y0)``: ``x`` detached and copied in float32 (float64 for float64 input), and ``y``
        detached and copied.
    """
    with torch.inference_mode(False), torch.enable_grad() if grad else torch.no_grad(), \
            attack_mode(model, eval_mode=eval_mode):
        yield x.detach().to(torch.promote_types(x.dtype, torch.float32), copy=True), y.detach().clone()

"""Import weights saved in a reference layout (torchvision, timm, ...) into our models.

Each model family registers the layouts it understands with :func:`register_layout`: a ``detect``
test on the keys and a ``convert`` that renames/reshapes the tensors into our layout. Submodules are
named after the reference checkpoints wherever that costs nothing, so most converters only rename.

A family may also register a ``resize`` with :func:`register_resize`: it runs after every layout's
``convert`` (our own layout included) and fits each grid-shaped tensor to the model by its grid,
never by its element count (position tables for another patch grid or text length, relative
position biases for another window, patch kernels for another patch size), or refuses it with a
ValueError that says what to do. Loading is always ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class WeightLayout:
    name: str
    detect: Callable[[Mapping[str, torch.Tensor]], bool]
    convert: Callable[[nn.Module, StateDict], StateDict]


_LAYOUTS: dict[type, list[WeightLayout]] = {}
#: model class -> (resize, whether it reads ``source_grid``)
_RESIZES: dict[type, tuple[Callable[..., StateDict], bool]] = {}


def register_layout(
    model_cls: type,
    name: str,
    *,
    detect: Callable[[Mapping[str, torch.Tensor]], bool],
    convert: Callable[[nn.Module, StateDict], StateDict],
) -> None:
    """Teach :func:`import_weights` to read the layout ``name`` into models of ``model_cls``."""
    _LAYOUTS.setdefault(model_cls, []).append(WeightLayout(name, detect, convert))


def register_resize(
    model_cls: type, resize: Callable[..., StateDict], *, takes_source_grid: bool = False
) -> None:
    """Teach :func:`import_weights` to fit the grid-shaped tensors of ``model_cls`` checkpoints.

    Args:
        model_cls: the model family (subclasses inherit it).
        resize: ``resize(model, state_dict)`` in our key names, returning the state_dict with
            each grid-shaped tensor converted to the model's grid (or raising ValueError); called
            as ``resize(model, state_dict, source_grid=...)`` if ``takes_source_grid``.
        takes_source_grid: the family has an absolute position table whose patch grid
            :func:`import_weights`'s ``source_grid`` states.
    """
    _RESIZES[model_cls] = (resize, takes_source_grid)


def _unwrap(state_dict: Mapping) -> StateDict:
    """Accept a bare state_dict, a ``{"model": sd}`` / ``{"state_dict": sd}`` checkpoint, or a Lightning one."""
    for key in ("state_dict", "model", "module"):
        if key in state_dict and isinstance(state_dict[key], Mapping):
            state_dict = state_dict[key]
            break
    sd = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    # DDP ("module.") and our tasks ("model.") prefix every key; drop a prefix shared by all keys.
    for prefix in ("module.", "model."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def import_weights(
    model: nn.Module,
    state_dict: Mapping,
    *,
    layout: str | None = None,
    source_grid: tuple[int, int] | None = None,
) -> str:
    """Load ``state_dict`` into ``model``, recognising its layout; returns the layout's name.

    Grid-shaped tensors are fitted to the model by their grid (see :func:`register_resize`): e.g.
    a ViT position table saved for an 8x8 patch grid is resampled for a model with a 4x16 grid,
    although both have 64 rows.

    Args:
        model: one of our models (e.g. ``create_model("resnet50")``).
        state_dict: weights in our layout or a registered reference layout (e.g. torchvision's
            ``resnet50().state_dict()`` or timm's ``vit_small_patch16_224``). Checkpoint dicts that
            wrap the weights under ``state_dict``/``model`` are unwrapped.
        layout: force a layout by name instead of detecting it.
        source_grid: the checkpoint's patch grid (rows, cols), for a ViT/MAE position table whose
            grid its shape cannot tell: a non-square grid of another token count, or a non-square
            grid whose count is a square (a 4x16 checkpoint is otherwise read as 8x8, the grid of
            every timm, torchvision and official MAE checkpoint). See
            :func:`~research.layers.fit_pos_embed`.

    Raises:
        ValueError: no known layout matches; a grid-shaped tensor cannot be converted (e.g. a
            position table whose grid is unknown, a BERT checkpoint with fewer positions than the
            model); ``source_grid`` for a model without a position table; or the converted weights
            do not fit the model (the message lists missing/unexpected keys and shape mismatches).
    """
    sd = _unwrap(state_dict)
    layouts = [lay for cls in type(model).__mro__ for lay in _LAYOUTS.get(cls, [])]
    native = WeightLayout("research", lambda s: set(s) == set(model.state_dict()), lambda m, s: s)
    # The family's layouts come first: where ours and the reference share names (most do), the
    # family's converter also adapts shapes (e.g. ViT position embeddings for another image size).
    candidates = [*layouts, native]
    names = [lay.name for lay in candidates]
    if layout is not None:
        if layout not in names:
            raise ValueError(f"unknown layout {layout!r} for {type(model).__name__}; known: {names}")
        chosen = next(lay for lay in candidates if lay.name == layout)
    else:
        chosen = next((lay for lay in candidates if lay.detect(sd)), None)
        if chosen is None:
            raise ValueError(
                f"these weights match none of the layouts known for {type(model).__name__} ({', '.join(names)}); "
                f"first keys: {list(sd)[:5]}. Was the checkpoint saved from another model?"
            )
    converted = chosen.convert(model, dict(sd))
    resize, takes_source_grid = next(
        (_RESIZES[cls] for cls in type(model).__mro__ if cls in _RESIZES), (None, False)
    )
    if source_grid is not None and not takes_source_grid:
        raise ValueError(
            f"source_grid is the patch grid of a ViT/MAE position table; {type(model).__name__} has "
            "none to resample: drop source_grid"
        )
    if resize is not None:
        extra = {"source_grid": source_grid} if takes_source_grid else {}
        converted = resize(model, converted, **extra)
    check_fits(model, converted, f"{chosen.name} weights")
    model.load_state_dict(converted, strict=True)
    return chosen.name


def check_fits(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise one readable ValueError, instead of torch's load_state_dict traceback, if ``sd`` does not fit."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own.keys() & sd.keys()
        if sd[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = [
            f"missing {missing[:5]}" if missing else "",
            f"unexpected {unexpected[:5]}" if unexpected else "",
            f"shape mismatch {shapes[:3]}" if shapes else "",
        ]
        raise ValueError(
            f"{source} do not fit this {type(model).__name__}: "
            + "; ".join(p for p in parts if p)
            + ". Build the model with the checkpoint's architecture (num_classes, depth, ...) or use another one."
        )

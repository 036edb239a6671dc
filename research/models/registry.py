"""Model registry: a name maps to a factory function that pins a paper's hyperparameters.

``create_model("resnet18", num_classes=10)`` builds the model; ``list_models()`` lists the names.
Factories are plain functions decorated with :func:`register_model`; their keyword arguments are
the overrides a config may pass (``num_classes``, ``in_chans``, ``img_size``, ...).
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}
#: old name -> current name, for the configs saved in checkpoints under the old one (not listed)
_RENAMED = {"mlp": "mlp_regressor"}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its own name."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} registered twice ({fn.__module__} and {_MODELS[name].__module__})")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models that match a shell-style ``pattern``."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, **overrides) -> nn.Module:
    """Build the registered model ``name``; ``overrides`` go to its factory (and on to the constructor).

    Raises:
        ValueError: unknown name (the message lists close matches), or an override the model
            does not take.
    """
    name = _RENAMED.get(name, name)
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise ValueError(
            f"unknown model {name!r}; {hint}see research.models.list_models() for the {len(_MODELS)} known names"
        )
    try:
        return _MODELS[name](**overrides)
    except TypeError as err:
        if "unexpected keyword argument" in str(err):
            raise ValueError(
                f"model {name!r} does not take {err}".replace("() got an", "(): got an")
            ) from err
        texts = {k: v for k, v in overrides.items() if isinstance(v, str)}
        if texts and "'str'" in str(err):  # e.g. `num_classes: ten` in a config: "'<' not supported ... 'str'"
            given = ", ".join(f"{k}: {v}" for k, v in texts.items())
            raise ValueError(
                f"model {name!r} cannot be built with {given} (text where the model computes with a number: {err}); "
                "write counts and sizes as numbers, e.g. num_classes: 10"
            ) from err
        raise


def build_model(spec: nn.Module | dict | str) -> nn.Module:
    """A model from a config: an ``nn.Module`` as is, a registered name, or ``{"name": ..., **overrides}``."""
    if isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, str):
        return create_model(spec)
    if isinstance(spec, dict):
        if "name" not in spec:
            raise ValueError(
                f"a model given as a mapping needs a 'name' key (one of list_models()), got keys {sorted(spec)}"
            )
        overrides = {k: v for k, v in spec.items() if k != "name"}
        return create_model(spec["name"], **overrides)
    raise ValueError(
        f"model must be an nn.Module, a registered name or a {{name: ...}} mapping, got {type(spec)}"
    )

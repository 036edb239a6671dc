"""Post-training int8 quantization of a float model, with torch's eager-mode schemes (torch.ao.quantization).

The pt2e flow now lives in torchao, which this environment does not have; torch's own two schemes:

* :func:`quantize_dynamic`: Linear weights stored as int8, activations quantized on the fly per batch.
  Any model; only its Linear layers change, so conv nets gain little.
* :func:`quantize_static`: weights and activations int8, activation ranges calibrated on input batches,
  Conv+BN(+ReLU) fused first (x86/fbgemm kernels, per-channel weights). Only layers with int8 kernels
  may appear; a model with others stops with a ValueError naming them.

And what the ``python -m research quantize`` table measures: :func:`model_size_mb`, :func:`latencies`
(interleaved, so that load on a shared machine hits both models alike) and :func:`accuracy`.
"""

from __future__ import annotations

import copy
import importlib
import io
import statistics
import time
import warnings
from collections.abc import Iterable, Sequence

import torch
from torch import nn

# quantized tensors work through these layers unchanged (max, reshape, identity in eval mode)
_PASSTHROUGH = (
    nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.Flatten, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Hardtanh,
)
# Conv/Linear followed by these, inside an nn.Sequential (where order is execution order), fuse
_FUSIBLE = (
    (nn.Conv2d, nn.BatchNorm2d, nn.ReLU), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv2d, nn.ReLU),
    (nn.Conv1d, nn.BatchNorm1d, nn.ReLU), (nn.Conv1d, nn.BatchNorm1d), (nn.Conv1d, nn.ReLU),
    (nn.Linear, nn.ReLU),
)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _torch_ao():
    """torch.ao.quantization, without its deprecation notice on every call (it points to torchao)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return importlib.import_module("torch.ao.quantization")


def _named_leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if not list(m.children())]


def unsupported_static_layers(model: nn.Module) -> list[str]:
    """Layers of ``model`` without an int8 kernel in torch's static quantization, as ``"name (Type)"``."""
    supported = tuple(k for k in _torch_ao().get_default_static_quant_module_mappings() if isinstance(k, type))
    return [
        f"{name} ({type(m).__name__})"
        for name, m in _named_leaves(model)
        if not isinstance(m, supported + _PASSTHROUGH) or type(m).__name__ == "NonDynamicallyQuantizableLinear"
    ]


def quantize_dynamic(model: nn.Module) -> nn.Module:
    """An int8 copy of ``model`` whose Linear layers quantize their inputs on the fly (weights int8).

    Raises:
        ValueError: the model has no Linear layer, so nothing would be quantized.
    """
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        layers = sorted({type(m).__name__ for _, m in _named_leaves(model)})
        raise ValueError(
            f"dynamic int8 quantizes nn.Linear layers only and {type(model).__name__} has none (its layers: "
            f"{', '.join(layers)}); use --mode static for convolutions"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return _torch_ao().quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def _fuse_sequentials(model: nn.Module) -> None:
    """Fuse Conv+BN(+ReLU) and Linear+ReLU runs inside every nn.Sequential, in place (eval mode)."""
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names, children = zip(*seq.named_children(), strict=True) if len(seq) else ((), ())
        groups, i = [], 0
        while i < len(children):
            for pattern in _FUSIBLE:
                run = children[i : i + len(pattern)]
                if len(run) == len(pattern) and all(type(c) is t for c, t in zip(run, pattern, strict=True)):
                    groups.append(list(names[i : i + len(pattern)]))
                    i += len(pattern)
                    break
            else:
                i += 1
        if groups:
            _torch_ao().fuse_modules(seq, groups, inplace=True)


def quantize_static(model: nn.Module, calibration: Iterable[torch.Tensor], *, backend: str = "x86") -> nn.Module:
    """An int8 copy of ``model`` (weights and activations), its activation ranges observed on ``calibration``.

    Args:
        model: a float model mapping (B, C, H, W) inputs (already normalised) to (B, K) logits.
        calibration: input batches whose activations set the int8 ranges (a few hundred images do).
        backend: torch's quantized engine: "x86" (fbgemm + onednn) or "fbgemm" on x86 CPUs,
            "qnnpack" on ARM.

    Raises:
        ValueError: the model holds layers without int8 kernels (named in the message), or its
            forward applies an operation that has none (e.g. a residual ``x + y``).
    """
    if backend not in torch.backends.quantized.supported_engines:
        raise ValueError(
            f"quantized backend {backend!r} is not available here; this CPU supports "
            f"{torch.backends.quantized.supported_engines}"
        )
    unsupported = unsupported_static_layers(model)
    if unsupported:
        raise ValueError(
            f"static int8 quantization has no kernels for these layers of {type(model).__name__}: "
            f"{', '.join(unsupported[:10])}{' ...' if len(unsupported) > 10 else ''}. "
            "Use --mode dynamic (int8 Linear layers, the rest stays fp32)."
        )
    ao = _torch_ao()
    torch.backends.quantized.engine = backend
    float_model = copy.deepcopy(model).eval()
    _fuse_sequentials(float_model)
    # QuantStub/DeQuantStub around the model: int8 from its input to its output
    wrapped = ao.QuantWrapper(float_model).eval()
    wrapped.qconfig = ao.get_default_qconfig(backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices, observer "reduce_range" notes
        prepared = ao.prepare(wrapped)
        with torch.no_grad():
            batches = [prepared(x) for x in calibration]
        if not batches:
            raise ValueError("static quantization needs at least one calibration batch")
        quantized = ao.convert(prepared)
    failing = _failing_module(quantized, next(iter(calibration)))
    if failing is not None:
        where, err = failing
        raise ValueError(
            f"static int8 {type(model).__name__} fails in the forward of {where}: an operation there has no int8 "
            f"kernel ({str(err).split('. ')[0]}). Functional ops such as a residual `x + y` need "
            "torch.ao.nn.quantized.FloatFunctional; use --mode dynamic instead."
        ) from err
    return quantized


def _failing_module(model: nn.Module, x: torch.Tensor) -> tuple[str, Exception] | None:
    """Run the wrapped ``model(x)``; on an error, the innermost module whose forward raised it, as ``"name (Type)"``."""
    stack: list[str] = []
    hooks = []
    for name, m in model.named_modules():
        name = name.removeprefix("module.")  # QuantWrapper's name for the model
        label = f"{name if name and name != 'module' else 'the model'} ({type(m).__name__})"
        hooks.append(m.register_forward_pre_hook(lambda *_, label=label: stack.append(label)))
        hooks.append(m.register_forward_hook(lambda *_: stack.pop() and None))  # None: keep the output
    try:
        with torch.no_grad():
            model(x)
    except (RuntimeError, NotImplementedError) as err:
        return stack[-1] if stack else type(model).__name__, err
    finally:
        for hook in hooks:
            hook.remove()
    return None


def model_size_mb(model: nn.Module) -> float:
    """Serialised size of the state_dict, in MB (10^6 bytes)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes / 1e6


@torch.no_grad()
def latencies(models: Sequence[nn.Module], x: torch.Tensor, *, repeats: int = 20) -> list[float]:
    """Median seconds per forward of each model on ``x``, measured interleaved so that load hits all alike."""
    for model in models:
        model(x)  # warm-up: first-call allocations, kernel selection
    times: list[list[float]] = [[] for _ in models]
    for _ in range(repeats):
        for model, ts in zip(models, times, strict=True):
            start = time.perf_counter()
            model(x)
            ts.append(time.perf_counter() - start)
    return [statistics.median(ts) for ts in times]


@torch.no_grad()
def accuracy(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Top-1 accuracy of ``model`` over (inputs, labels) batches."""
    correct = total = 0
    for x, y in batches:
        correct += int((model(x).argmax(-1) == y).sum())
        total += len(y)
    return correct / max(total, 1)

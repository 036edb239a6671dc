r"""Post-training int8 quantization of a trained classifier, with size, CPU latency and accuracy before/after.

    python -m research.quantize --config configs/cnn/mnist_five_layer_cnn.yaml \
        --checkpoint checkpoints/cnn/mnist_five_layer_cnn/last.ckpt [--mode auto|dynamic|static]

The config supplies the task class (``model.class_path``) and the datamodule (``data:``, whose
test split is evaluated); extra ``--data.*`` arguments override it as for ``research.fit``.
Two of torch's post-training schemes (torch.ao.quantization, eager mode; the pt2e flow now
lives in torchao, which this environment does not have):

* ``dynamic``: Linear weights stored as int8, activations quantized on the fly per batch. Any
  model; only its Linear layers change, so conv nets gain little.
* ``static``: weights and activations int8, activation ranges calibrated on training batches,
  Conv+BN(+ReLU) fused first (x86/fbgemm kernels, per-channel weights). Only layers with int8
  kernels may appear; a model with others stops with a ValueError naming them.

``auto`` picks static for models with convolutions and dynamic otherwise. Latencies of fp32 and
int8 are measured in the same run, interleaved, on one batch of test images.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import io
import json
import statistics
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import lightning as L
import torch
from jsonargparse import ArgumentParser
from torch import nn

from research.checkpoint_file import load_checkpoint
from research.config_file import read_config_file
from research.errors import run_command

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


def load_task(checkpoint: Path, config: Path) -> L.LightningModule:
    """The classification task in ``checkpoint``, of the class named by the config's ``model.class_path``."""
    # A clear error for a missing file (naming the command that writes it) or a broken one.
    load_checkpoint(checkpoint, what="checkpoint", lightning=True, mmap=True)
    class_path = (read_config_file(config).get("model") or {}).get("class_path", "")
    if "." not in class_path:
        class_path = f"research.tasks.{class_path or 'ImageClassification'}"
    module, name = class_path.rsplit(".", 1)
    task_cls = getattr(importlib.import_module(module), name)
    task = task_cls.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()
    if getattr(task, "probe", None) is not None:
        raise ValueError("a linear-probe checkpoint's classifier is model + probe; quantize a fine-tuned one")
    return task


def load_datamodule(config: Path, overrides: Sequence[str] = ()) -> L.LightningDataModule:
    """The config's ``data:`` section as a datamodule, with ``--data...`` overrides."""
    import research.data  # noqa: F401  (short class names)

    section = read_config_file(config).get("data")
    if section is None:
        raise ValueError(f"{config} has no data: section; pass a config of the run that trained the checkpoint")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningDataModule, "data", required=True)
    cfg = parser.parse_args(["--data", json.dumps(section), *overrides])
    return parser.instantiate_classes(cfg).data


class _Normalized(nn.Module):
    """The task's normalisation (fp32) in front of a model, so that both versions see images in [0, 1]."""

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.model, self.mean, self.std = model, mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: (B, C, H, W) images in [0, 1] -> (B, K) logits."""
        return self.model((x - self.mean) / self.std if self.mean.numel() else x)


def run(
    checkpoint: Path,
    config: Path,
    *,
    mode: str = "auto",
    backend: str = "x86",
    calibration_batches: int = 8,
    repeats: int = 20,
    overrides: Sequence[str] = (),
) -> dict[str, dict[str, float]]:
    """Quantize the checkpoint's model and measure both versions.

    Returns:
        ``{"fp32": row, "int8 <mode>": row}``, each row with size_mb, latency_ms (median, one test
        batch of ``batch`` images), speedup (fp32 time / this time) and acc (test accuracy).
    """
    task = load_task(checkpoint, config)
    dm = load_datamodule(config, overrides)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    if task.mean.numel() == 0 and getattr(dm, "mean", None) is not None:
        task._set_normalization(dm.mean, dm.std)
    model = task.model.eval()
    if mode == "auto":
        mode = "static" if any(isinstance(m, _CONV) for m in model.modules()) else "dynamic"
    test = [(x, y) for x, y in dm.test_dataloader()]
    if mode == "dynamic":
        quantized = quantize_dynamic(model)
    elif mode == "static":
        calibration = []
        for i, (x, _) in enumerate(dm.train_dataloader()):
            if i >= calibration_batches:
                break
            calibration.append((x - task.mean) / task.std if task.mean.numel() else x)
        quantized = quantize_static(model, calibration, backend=backend)
    else:
        raise ValueError(f"unknown mode {mode!r}; choose 'auto', 'dynamic' or 'static'")
    fp32, int8 = _Normalized(model, task.mean, task.std), _Normalized(quantized, task.mean, task.std)
    t_fp32, t_int8 = latencies([fp32, int8], test[0][0], repeats=repeats)
    batch = len(test[0][0])
    return {
        "fp32": {"size_mb": model_size_mb(model), "latency_ms": 1e3 * t_fp32, "speedup": 1.0,
                 "acc": accuracy(fp32, test), "batch": batch},
        f"int8 {mode}": {"size_mb": model_size_mb(quantized), "latency_ms": 1e3 * t_int8, "speedup": t_fp32 / t_int8,
                         "acc": accuracy(int8, test), "batch": batch},
    }


def format_table(results: dict[str, dict[str, float]]) -> str:
    """Markdown table of :func:`run`'s results."""
    batch = next(iter(results.values()))["batch"]
    lines = [
        f"| model | size (MB) | CPU latency, batch {batch} (ms) | speed-up vs fp32 | test acc |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['size_mb']:.3f} | {r['latency_ms']:.2f} | {r['speedup']:.2f}x | {100 * r['acc']:.2f}% |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(prog="python -m research.quantize", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint of a trained classifier")
    parser.add_argument("--config", type=Path, required=True, help="the config it was trained with")
    parser.add_argument("--mode", choices=("auto", "dynamic", "static"), default="auto")
    parser.add_argument("--backend", default="x86", help="quantized engine: x86, fbgemm (x86 CPUs), qnnpack (ARM)")
    parser.add_argument("--calibration-batches", type=int, default=8, help="training batches for static ranges")
    parser.add_argument("--repeats", type=int, default=20, help="timed forwards per model")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args, overrides = parser.parse_known_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = run(
        args.checkpoint,
        args.config,
        mode=args.mode,
        backend=args.backend,
        calibration_batches=args.calibration_batches,
        repeats=args.repeats,
        overrides=overrides,
    )
    print(format_table(results))
    return results


if __name__ == "__main__":
    run_command(main)

r"""``python -m research quantize``: int8 post-training quantization, size, CPU latency and accuracy.

Post-training int8 quantization of a trained classifier, with its size, CPU latency and test
accuracy before and after.

    python -m research quantize --config configs/cnn/mnist_five_layer_cnn.yaml \
        --ckpt_path checkpoints/cnn/mnist_five_layer_cnn/last.ckpt [--mode auto|dynamic|static]

The run is loaded by :func:`research.commands.load.load_run` (the task from the checkpoint, the
datamodule from the config, whose test split is evaluated), so any of fit's overrides can follow
(``--data.init_args.batch_size 8``). The schemes are :mod:`research.quantization`'s: ``dynamic``
(int8 Linear layers) and ``static`` (int8 weights and activations, ranges calibrated on
``--calibration_batches`` training batches drawn with ``--seed``); ``auto`` picks static for models
with convolutions and dynamic otherwise. Both versions run inside the task's own forward, so they
see images in [0, 1] and the task's normalisation stays in fp32 in front of them. Latencies of
fp32 and int8 are measured in the same run, interleaved, on one batch of test images.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torch import nn

from research.commands.load import add_run_arguments, load_run
from research.quantization import accuracy, latencies, model_size_mb, quantize_dynamic, quantize_static

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _model_inputs(task: L.LightningModule, batches: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """What ``task`` passes to ``task.model`` for each batch of images: the normalised calibration inputs."""
    seen: list[torch.Tensor] = []
    hook = task.model.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            for x in batches:
                task(x)
    finally:
        hook.remove()
    return seen


def run(
    config: str | Path,
    ckpt_path: str | Path,
    *,
    mode: Literal["auto", "dynamic", "static"] = "auto",
    backend: str = "x86",
    calibration_batches: int = 8,
    repeats: int = 20,
    seed: int = 0,
    overrides: Sequence[str] = (),
) -> dict[str, dict[str, float]]:
    """Quantize the checkpoint's model and measure both versions.

    Returns:
        ``{"fp32": row, "int8 <mode>": row}``, each row with size_mb, latency_ms (median, one test
        batch of ``batch`` images), speedup (fp32 time / this time) and acc (test accuracy).

    Raises:
        ValueError: a linear-probe checkpoint, or a model that the scheme cannot quantize (see
            :mod:`research.quantization`).

    """
    trained = load_run(config, ckpt_path, overrides)
    task, dm = trained.task, trained.datamodule
    if getattr(task, "probe", None) is not None:
        raise ValueError("a linear-probe checkpoint's classifier is model + probe; quantize a fine-tuned one")
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    model = task.model
    if mode == "auto":
        mode = "static" if any(isinstance(m, _CONV) for m in model.modules()) else "dynamic"
    test = [(x, y) for x, y in dm.test_dataloader()]
    if mode == "dynamic":
        quantized = quantize_dynamic(model)
    else:
        torch.manual_seed(seed)  # the shuffled training batches that calibrate
        train = (x for i, (x, _) in zip(range(calibration_batches), dm.train_dataloader(), strict=False))
        quantized = quantize_static(model, _model_inputs(task, train), backend=backend)
    int8 = copy.deepcopy(task)
    int8.model = quantized  # the task's forward: its normalisation (fp32), then the int8 model
    t_fp32, t_int8 = latencies([task, int8], test[0][0], repeats=repeats)
    batch = len(test[0][0])
    return {
        "fp32": {"size_mb": model_size_mb(model), "latency_ms": 1e3 * t_fp32, "speedup": 1.0,
                 "acc": accuracy(task, test), "batch": batch},
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m research quantize", allow_abbrev=False,
                                     description="Post-training int8 quantization of a trained "
                                     "classifier, with size, CPU latency and accuracy before and after.")
    add_run_arguments(parser, seed="seeds the training batches that calibrate static ranges")
    parser.add_argument("--mode", choices=("auto", "dynamic", "static"), default="auto")
    parser.add_argument("--backend", default="x86", help="quantized engine: x86, fbgemm (x86 CPUs), qnnpack (ARM)")
    parser.add_argument("--calibration_batches", type=int, default=8, help="training batches for static ranges")
    parser.add_argument("--repeats", type=int, default=20, help="timed forwards per model")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Run the command on ``argv`` (default: the command line); returns :func:`run`'s results."""
    args, overrides = build_parser().parse_known_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = run(args.config, args.ckpt_path, mode=args.mode, backend=args.backend,
                  calibration_batches=args.calibration_batches, repeats=args.repeats, seed=args.seed,
                  overrides=overrides)
    print(format_table(results))
    return results

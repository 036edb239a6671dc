"""The GPU check: one table of what a CUDA machine makes of our models, in a few minutes (benchmarks/gpu_check.sh).

    bash benchmarks/gpu_check.sh            # a CUDA GPU: full sizes, bf16-mixed, about 8 minutes or less
    bash benchmarks/gpu_check.sh --tiny     # no GPU: tiny models, a few steps on the CPU (tests/test_gpu_check.py)

Rows (every time the median of alternating measurements after warm-up steps; a train step is forward +
cross-entropy + backward + SGD under bf16 autocast, as ``precision="bf16-mixed"`` runs it):

- train throughput (img/s) of ResNet-50, ViT-S/16, ViT-B/16 and Swin-T at 224, ours vs timm with identical
  weights (timm's random init, ``pretrained=False``, loaded into ours by ``research.models.import_weights``;
  checked to give timm's logits), eager and ``torch.compile``-d;
- a PGD-7 adversarial-training step / a clean step of ResNet-50 (``benchmarks/adversarial_cost.py``'s steps:
  7 attack steps in eval mode, input gradients only, then the training step);
- an MAE ViT-L pre-training step (encoder on the visible 25% of the patches) vs the same step with mask tokens
  through the encoder (``benchmarks/mae_speedup.py``'s steps; the paper's Table 2c);
- DDP over every visible GPU with NCCL (``torch.multiprocessing`` processes, one a GPU; gloo and two processes on
  the CPU): total img/s of ResNet-50 against (processes x one process's eager img/s);
- peak memory of each measurement (``torch.cuda.max_memory_allocated``; the profiler's allocations for the
  PGD row on a CPU, '-' elsewhere on a CPU).

``--tiny`` keeps every model's kind but shrinks it (ResNet-50 with one block a stage, two-block ViTs at 32
pixels, Swin-T with one block a stage at 64 pixels, a two-block MAE ViT-L at 32 pixels) and compiles with the
``aot_eager`` backend (no C++ build) so that the whole check runs in under a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _against_timm import seconds_per_step, train_step
from adversarial_cost import kinds, peak_bytes
from mae_speedup import make_steps
from torch.nn.parallel import DistributedDataParallel

from research.models import create_model, import_weights

MODELS = {  # ours and timm's name (the same), the row's label
    "resnet50": "ResNet-50",
    "vit_small_patch16_224": "ViT-S/16",
    "vit_base_patch16_224": "ViT-B/16",
    "swin_tiny_patch4_window7_224": "Swin-T",
}


@dataclass
class Sizes:
    """Batch sizes, step counts and model overrides of one scale of the check."""

    batch: int
    steps: int  # timed steps a measurement
    warmup: int  # untimed steps first (compilation happens here)
    repeats: int  # alternating measurements, median reported
    backend: str  # torch.compile backend
    num_classes: int = 1000
    overrides: dict[str, dict] = field(default_factory=dict)  # model name -> arguments for ours and timm alike
    img_size: dict[str, int] = field(default_factory=dict)  # model name -> input size where not 224
    mae: dict = field(default_factory=dict)
    mae_batch: int = 64
    pgd_batch: int = 64
    ddp_processes: int = 0  # 0: every visible GPU


FULL = Sizes(batch=128, steps=10, warmup=3, repeats=3, backend="inductor")
TINY = Sizes(
    batch=4, steps=2, warmup=1, repeats=1, backend="aot_eager", num_classes=10, mae_batch=4, pgd_batch=4,
    ddp_processes=2,
    overrides={
        "resnet50": {"layers": (1, 1, 1, 1)},
        "vit_small_patch16_224": {"img_size": 32, "depth": 2},
        "vit_base_patch16_224": {"img_size": 32, "depth": 2},
        "swin_tiny_patch4_window7_224": {"img_size": 64, "window_size": 2, "depths": (1, 1, 1, 1)},
    },
    img_size={"resnet50": 32, "vit_small_patch16_224": 32, "vit_base_patch16_224": 32,
              "swin_tiny_patch4_window7_224": 64},
    mae={"img_size": 32, "depth": 2, "decoder_depth": 1, "decoder_embed_dim": 64},
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def peak_memory(device: torch.device, into: list[float]):
    """Append the peak memory allocated (MiB) while the block runs; NaN on a CPU."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
    yield
    into.append(torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan"))


def alternate(steps: dict[str, Callable[[], None]], sizes: Sizes, device: torch.device,
              per_step: int) -> dict[str, float]:
    """Median seconds a step of each entry, measured in alternating order after the warm-up."""
    for step in steps.values():
        seconds_per_step(step, sizes.warmup, device)
    times = {key: [] for key in steps}
    for repeat in range(sizes.repeats):
        for key in list(steps) if repeat % 2 == 0 else list(steps)[::-1]:
            times[key].append(seconds_per_step(steps[key], per_step, device))
    return {key: statistics.median(t) for key, t in times.items()}


def pair(name: str, sizes: Sizes, device: torch.device) -> dict[str, torch.nn.Module]:
    """Ours and timm's ``name`` with the same (timm's random) weights, checked to compute the same logits."""
    kwargs = {"num_classes": sizes.num_classes, **sizes.overrides.get(name, {})}
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False, **kwargs)
    ours = create_model(name, **kwargs)
    import_weights(ours, reference.state_dict())
    img_size = sizes.img_size.get(name, 224)
    x = torch.randn(2, 3, img_size, img_size)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), reference.eval()(x), atol=1e-4, rtol=1e-4)
    return {"ours": ours.to(device).train(), "timm": reference.to(device).train()}


def throughput_rows(sizes: Sizes, device: torch.device) -> tuple[list[str], float]:
    """Rows of ours vs timm, eager and compiled; also ResNet-50's eager img/s (DDP's reference)."""
    rows, resnet = [], float("nan")
    for name, label in MODELS.items():
        models = pair(name, sizes, device)
        img_size = sizes.img_size.get(name, 224)
        x = torch.randn(sizes.batch, 3, img_size, img_size, device=device)
        y = torch.randint(0, sizes.num_classes, (sizes.batch,), device=device)
        for mode in ("eager", "compiled"):
            compiled = {
                key: torch.compile(model, backend=sizes.backend) if mode == "compiled" else model
                for key, model in models.items()
            }
            steps = {key: train_step(model, x, y, amp=True) for key, model in compiled.items()}
            memory: list[float] = []
            with peak_memory(device, memory):
                seconds = alternate(steps, sizes, device, sizes.steps)
            speed = {key: sizes.batch / s for key, s in seconds.items()}
            if name == "resnet50" and mode == "eager":
                resnet = speed["ours"]
            rows.append(f"| {label} train, {mode} | {speed['ours']:.1f} img/s | {speed['timm']:.1f} img/s | "
                        f"{speed['ours'] / speed['timm']:.3f} | {mib(memory[0])} (both) |")
        del models, compiled, steps
        empty_cache(device)
    return rows, resnet


def pgd_row(sizes: Sizes, device: torch.device) -> str:
    """PGD-7 adversarial-training step / clean step of ResNet-50 under bf16 autocast."""
    kwargs = {"num_classes": sizes.num_classes, **sizes.overrides.get("resnet50", {})}
    torch.manual_seed(0)
    model = create_model("resnet50", **kwargs).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    img_size = sizes.img_size.get("resnet50", 224)
    x = torch.rand(sizes.pgd_batch, 3, img_size, img_size, device=device)
    y = torch.randint(0, sizes.num_classes, (sizes.pgd_batch,), device=device)
    steps = {key: step for key, step in kinds(model, optimizer, x, y, [7]).items() if key in ("clean", "pgd7")}
    with torch.autocast(device.type, dtype=torch.bfloat16):
        seconds = alternate(steps, sizes, device, 1)
        peaks = {key: peak_bytes(step, optimizer, device) / 2**20 for key, step in steps.items()}
    ratio = seconds["pgd7"] / seconds["clean"]
    del model, optimizer
    empty_cache(device)
    return (f"| PGD-7 adversarial-training step / clean step (ResNet-50, batch {sizes.pgd_batch}) | "
            f"{1e3 * seconds['pgd7']:.1f} ms | {1e3 * seconds['clean']:.1f} ms | {ratio:.2f} (8 passes: <= 8) | "
            f"{peaks['pgd7']:.0f} / {peaks['clean']:.0f} |")


def mae_row(sizes: Sizes, device: torch.device) -> str:
    """MAE ViT-L step (encoder on visible patches) vs the step with mask tokens through the encoder."""
    torch.manual_seed(0)
    mae = create_model("mae_vit_large_patch16", mask_ratio=0.75, **sizes.mae).to(device)
    img_size = sizes.mae.get("img_size", 224)
    imgs = torch.randn(sizes.mae_batch, mae.in_chans, img_size, img_size, device=device)
    noise = torch.rand(sizes.mae_batch, mae.num_patches, device=device)
    steps = make_steps(mae, imgs, noise, 0.75)
    memory: list[float] = []
    with torch.autocast(device.type, dtype=torch.bfloat16), peak_memory(device, memory):
        seconds = alternate(steps, sizes, device, sizes.steps)
    speed = {key: sizes.mae_batch / s for key, s in seconds.items()}
    del mae, steps
    empty_cache(device)
    return (f"| MAE ViT-L pre-training step vs encoder w/ mask tokens (batch {sizes.mae_batch}) | "
            f"{speed['ours']:.1f} img/s | {speed['encoder w/ [M]']:.1f} img/s | "
            f"{speed['ours'] / speed['encoder w/ [M]']:.2f}x faster | {mib(memory[0])} (both) |")


def ddp_worker(rank: int, world: int, port: int, sizes: Sizes, results) -> None:
    """One DDP process: ResNet-50 train steps under bf16 autocast; rank 0 reports seconds a step and peak MiB."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        kwargs = {"num_classes": sizes.num_classes, **sizes.overrides.get("resnet50", {})}
        torch.manual_seed(0)
        model = DistributedDataParallel(create_model("resnet50", **kwargs).to(device),
                                        device_ids=[rank] if cuda else None)
        img_size = sizes.img_size.get("resnet50", 224)
        x = torch.randn(sizes.batch, 3, img_size, img_size, device=device)
        y = torch.randint(0, sizes.num_classes, (sizes.batch,), device=device)
        step = train_step(model, x, y, amp=True)
        seconds_per_step(step, sizes.warmup, device)
        memory: list[float] = []
        with peak_memory(device, memory):
            times = [seconds_per_step(step, sizes.steps, device) for _ in range(sizes.repeats)]
        if rank == 0:
            results.put((statistics.median(times), memory[0], dist.get_backend()))
    finally:
        dist.destroy_process_group()


def ddp_row(sizes: Sizes, single: float) -> str:
    """DDP over every visible GPU (two CPU processes without one) against the processes x one process's img/s."""
    world = sizes.ddp_processes or torch.cuda.device_count()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(ddp_worker, args=(world, port, sizes, results), nprocs=world, start_method="spawn")
    seconds, memory, backend = results.get()
    total = world * sizes.batch / seconds
    return (f"| DDP ResNet-50 train, {world} processes over {backend}, batch {sizes.batch} each | "
            f"{total:.1f} img/s | {world} x {single:.1f} img/s | {total / (world * single):.2f} of linear | "
            f"{mib(memory)} a process |")


def mib(value: float) -> str:
    return "-" if value != value else f"{value:.0f}"  # NaN: not measured (CPU)


def empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU, a few steps (no GPU needed)")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.tiny:
        device, sizes = torch.device("cpu"), TINY
    elif not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA GPU visible; run it on a GPU machine, or with --tiny for the CPU version")
    else:
        device, sizes = torch.device("cuda"), FULL
        torch.backends.cudnn.benchmark = True
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"gpu_check on {gpu}: torch {torch.__version__}, timm {timm.__version__}, bf16 autocast, "
          f"batch {sizes.batch}, median of {sizes.repeats} x {sizes.steps} steps, compile backend {sizes.backend}"
          f"{' (tiny models)' if args.tiny else ''}\n")
    print("| measurement | ours | reference | ratio | peak memory (MiB) |")
    print("|---|---|---|---|---|")
    rows, resnet = throughput_rows(sizes, device)
    print(*rows, sep="\n", flush=True)
    print(pgd_row(sizes, device), flush=True)
    print(mae_row(sizes, device), flush=True)
    if device.type == "cuda" or args.tiny:
        print(ddp_row(sizes, resnet), flush=True)
    print(f"\n{time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()

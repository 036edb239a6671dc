"""Train-step time of one of our models against timm's, with identical weights and inputs.

Shared by ``vit_vs_timm.py`` and ``swin_vs_timm.py``. One step is forward + cross-entropy + backward +
SGD update. After a warm-up, the two models are timed back to back, in alternating order, for
several repeats; the figure of merit is the ratio of the medians, ours / timm (<= 1.0 means at least
timm's speed). The median of the per-repeat ratios is printed too: on a shared machine it is the
steadier number, as both halves of a pair see about the same load. ``--amp`` runs under bfloat16
autocast.
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch
import torch.nn.functional as F

from research.models import create_model, import_weights


def parse_args(description: str, batch_size: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--steps", type=int, default=1, help="train steps per timed measurement")
    parser.add_argument("--repeats", type=int, default=9, help="measurements per model (median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    return parser.parse_args()


def train_step(model, x, y, amp):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def seconds_per_step(step, steps, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def compare(name: str, *, description: str, batch_size: int) -> None:
    """Time our ``name`` against timm's ``name`` and print both and their ratio."""
    args = parse_args(description, batch_size)
    device = torch.device(args.device)
    torch.manual_seed(0)
    models = {
        "timm": timm.create_model(name, pretrained=False, img_size=args.img_size),
        "ours": create_model(name, img_size=args.img_size),
    }
    import_weights(models["ours"], models["timm"].state_dict())
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    y = torch.randint(0, 1000, (args.batch_size,), device=device)
    for model in models.values():
        model.to(device).eval()
    with torch.no_grad():  # same weights must mean the same function, or the timing compares nothing
        torch.testing.assert_close(models["ours"](x), models["timm"](x), atol=1e-4, rtol=1e-4)

    steps = {key: train_step(model.train(), x, y, args.amp) for key, model in models.items()}
    for step in steps.values():
        seconds_per_step(step, args.warmup, device)
    times = {key: [] for key in steps}
    for repeat in range(args.repeats):
        order = list(steps) if repeat % 2 == 0 else list(steps)[::-1]  # alternate who goes first
        for key in order:
            times[key].append(seconds_per_step(steps[key], args.steps, device))

    median = {key: statistics.median(t) for key, t in times.items()}
    print(
        f"{name} train step, batch {args.batch_size} at {args.img_size}px on {device}"
        f"{' (bf16 autocast)' if args.amp else ''}, torch {torch.__version__}, timm {timm.__version__}"
    )
    for key in ("ours", "timm"):
        spread = ", ".join(f"{t * 1e3:.0f}" for t in times[key])
        print(f"  {key}: {median[key] * 1e3:8.1f} ms/step (median of {args.repeats}: {spread})")
    paired = statistics.median(o / t for o, t in zip(times["ours"], times["timm"]))
    print(f"  ours / timm = {median['ours'] / median['timm']:.3f} (median of paired ratios: {paired:.3f})")

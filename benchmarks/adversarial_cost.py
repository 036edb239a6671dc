"""Cost of adversarial training: a PGD-k (and FGSM-RS) training step against a clean one, same run.

    python benchmarks/adversarial_cost.py [--model madry_mnist_cnn resnet20] [--batch-size 128]
        [--steps 7 10] [--iters 5] [--repeats 5] [--threads 1] [--device cpu|cuda] [--clock wall|cpu]

A clean training step is forward + cross-entropy + backward + SGD step. A PGD-k step is k attack
steps (:func:`research.attacks.pgd`, L-inf, eps 0.3, random start, eval mode as in Madry et al.)
and then the same training step on the adversarial batch; an FGSM-RS step (Wong et al. 2020) is
one attack step from a random start with step 1.25 eps, then the training step. A TRADES-k step
(Zhang et al. 2019) is k steps of its KL inner maximisation (:func:`research.attacks.trades_attack`)
and a training pass on clean and adversarial images (two forwards, one backward) (``CE(x) + beta KL(f(x) || f(x'))``, as
``AdversarialTraining(attack="trades")`` trains); a MART-k step (Wang et al. 2020) the same with its
cross-entropy attack and loss: both are printed as a ratio to PGD-k, the recipe they replace at
the same attack budget. Time per step is
the median over ``--repeats`` rounds, each timing ``--iters`` steps of every kind in turn (so
that a change in machine load hits all kinds alike). Peak memory is the highest memory allocated
during one step above what was allocated before it (weights and optimizer state are there
before either step): torch.cuda.max_memory_allocated on a GPU, the profiler's allocation events on
a CPU.

Goals (issue 4, item 11): PGD-k step / ((k + 1) x clean step) <= 0.85, because an attack step's
backward needs the input gradient only and autograd skips the weight gradients; FGSM-RS step /
clean step <= 2.0; peak memory of a PGD step / clean step <= 1.25. To show where the saving comes
from, one attack step is also timed as the attack computes it (input gradient only) and as a
naive attack would (``loss.backward()``, weight gradients too), both against the clean step.
An attack step also pays for what a clean step never computes: the first layer's input
gradient (for a 1-channel 5x5 conv, oneDNN's is several times the layer's weight gradient on a
CPU), and memory-bound work (max pooling, ReLU masks) costs the same in both; profile with
torch.profiler to see the split for a given model and device.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from research.attacks import mart_attack, pgd, trades_attack
from research.callbacks.adversarial_training import mart_regularizer, trades_kl
from research.models import create_model

EPS = 0.3  # MNIST's L-inf radius (Madry et al. 2018)
BETA = 6.0  # TRADES' 1/lambda (Zhang et al.'s headline); MART's beta is of the same order (5-6)


def setup(name: str, batch_size: int, device: torch.device):
    torch.manual_seed(0)
    model = create_model(name, in_chans=1, num_classes=10).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch_size, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    return model, opt, x, y


def kinds(model, opt, x, y, steps: list[int]) -> dict[str, Callable[[], None]]:
    """Name -> one step of that kind."""

    def train_on(images):
        model.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), y).backward()
        opt.step()

    def pgd_step(k):
        return lambda: train_on(pgd(model, x, y, eps=EPS, step_size=2.5 * EPS / k, steps=k))

    def attack_step(weight_grads: bool):
        # One attack iteration alone, as pgd runs it (eval mode, input gradient only) or naively.
        def run():
            model.eval()
            x_adv = x.clone().requires_grad_(True)
            loss = F.cross_entropy(model(x_adv), y)
            if weight_grads:
                loss.backward()
                opt.zero_grad(set_to_none=True)
            else:
                torch.autograd.grad(loss, x_adv)
        return run

    def paired_step(k, recipe):
        # the callback's TRADES/MART training pass: the task's forward on x, one more on x_adv, one backward
        def run():
            step = 2.5 * EPS / k
            if recipe == "trades":
                x_adv = trades_attack(model, x, eps=EPS, step_size=step, steps=k)
            else:
                x_adv = mart_attack(model, x, y, eps=EPS, step_size=step, steps=k)
            model.train()
            opt.zero_grad(set_to_none=True)
            clean, adv = model(x), model(x_adv)
            if recipe == "trades":
                loss = F.cross_entropy(clean, y) + BETA * trades_kl(clean, adv)
            else:
                boost, kl = mart_regularizer(clean, adv, y)
                loss = F.cross_entropy(adv, y) + boost + BETA * kl
            loss.backward()
            opt.step()
        return run

    out = {"clean": lambda: train_on(x)}
    out.update({f"pgd{k}": pgd_step(k) for k in steps})
    out.update({f"{recipe}{k}": paired_step(k, recipe) for k in steps for recipe in ("trades", "mart")})
    out["fgsm_rs"] = lambda: train_on(pgd(model, x, y, eps=EPS, step_size=1.25 * EPS, steps=1, random_start=True))
    out["attack_step"] = attack_step(weight_grads=False)
    out["attack_step_naive"] = attack_step(weight_grads=True)
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_step(fns: dict[str, Callable[[], None]], iters: int, repeats: int, clock: Callable[[], float],
                  device) -> dict[str, float]:
    for fn in fns.values():  # warm-up: allocator, kernels, first-call overheads
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = clock()
            for _ in range(iters):
                fn()
            sync(device)
            samples[name].append((clock() - start) / iters)
    return {name: statistics.median(s) for name, s in samples.items()}


def peak_bytes(fn: Callable[[], None], opt, device: torch.device) -> int:
    """Highest memory allocated during ``fn`` above what was allocated when it started."""
    opt.zero_grad(set_to_none=True)  # every step starts without gradients
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Allocation (+) and free (-) events in time order; their running sum is the memory in use.
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    in_use = peak = 0
    for _, nbytes in events:
        in_use += nbytes
        peak = max(peak, in_use)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", nargs="+", default=["madry_mnist_cnn", "resnet20"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, nargs="+", default=[7, 10])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall",
        help="wall: time.perf_counter; cpu: the process's CPU time, which on a CPU shared with other jobs "
        "counts only this process's work (use with --threads 1)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"device {device}, {torch.get_num_threads()} CPU threads, batch {args.batch_size}, 1x28x28, "
          f"{args.clock} clock, median of {args.repeats} rounds of {args.iters} steps\n")
    print("| model | step | ms/step | ratio | goal |")
    print("|---|---|---|---|---|")
    for name in args.model:
        model, opt, x, y = setup(name, args.batch_size, device)
        fns = kinds(model, opt, x, y, args.steps)
        clock = time.perf_counter if args.clock == "wall" else time.process_time
        t = time_per_step(fns, args.iters, args.repeats, clock, device)
        clean = t["clean"]
        print(f"| {name} | clean | {1e3 * clean:.1f} | 1 | |")
        for k in args.steps:
            ratio = t[f"pgd{k}"] / ((k + 1) * clean)
            print(f"| {name} | PGD-{k} | {1e3 * t[f'pgd{k}']:.1f} | {ratio:.3f} of (k+1) x clean | <= 0.85 |")
        for k in args.steps:
            for recipe, label in (("trades", "TRADES"), ("mart", "MART")):
                ratio = t[f"{recipe}{k}"] / t[f"pgd{k}"]
                print(f"| {name} | {label}-{k} | {1e3 * t[f'{recipe}{k}']:.1f} | {ratio:.3f} x PGD-{k} | |")
        print(f"| {name} | FGSM-RS | {1e3 * t['fgsm_rs']:.1f} | {t['fgsm_rs'] / clean:.3f} x clean | <= 2.0 |")
        print(f"| {name} | one attack step (input grad only) | {1e3 * t['attack_step']:.1f} | "
              f"{t['attack_step'] / clean:.3f} x clean | |")
        print(f"| {name} | one attack step, naive (weight grads too) | {1e3 * t['attack_step_naive']:.1f} | "
              f"{t['attack_step_naive'] / clean:.3f} x clean | |")
        clean_peak = peak_bytes(fns["clean"], opt, device)
        for k in args.steps:
            p = peak_bytes(fns[f"pgd{k}"], opt, device)
            print(f"| {name} | peak memory PGD-{k} | {p / 2**20:.1f} MiB vs clean {clean_peak / 2**20:.1f} MiB | "
                  f"{p / clean_peak:.3f} x clean | <= 1.25 |")


if __name__ == "__main__":
    main()

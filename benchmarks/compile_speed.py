"""torch.compile vs eager: train-step time of ResNet-20, a ViT-Ti and a PGD-7 adversarial step, as ratios in one run.

    python benchmarks/compile_speed.py [--case resnet20 vit_tiny pgd7] [--mode default max-autotune-no-cudagraphs]
        [--iters 3] [--repeats 3] [--threads N] [--profile]

A train step is forward + cross-entropy + backward + SGD step (momentum 0.9), on one fixed batch:
ResNet-20 (He et al. 2016, CIFAR stem), batch 128 at 32 px; a ViT-Ti (dim 192, depth 12, 3 heads)
with 4-pixel patches at 32 px (64 tokens + the class token), batch ``--vit-batch``; and the PGD-7
adversarial-training step (7 L-inf attack steps, each a forward and an input gradient, then the
train step) of Madry et al.'s MNIST CNN, batch 128. The compiled model is a copy of the eager one
compiled in place (``nn.Module.compile``, as the tasks' ``compile`` option does) with each
``--mode``; compile time (the first steps) is reported apart and left out of the timing. Times are
medians over ``--repeats`` rounds, each timing ``--iters`` steps of every variant in turn, so that
a change in machine load hits all alike.

For the PGD-7 step a variant also freezes the weights during the attack (``requires_grad_(False)``).

Findings (``--profile`` prints each variant's most expensive operations; 1 thread, busy 2-core CPU):

* ResNet-20 gains (0.63 and 0.81 of eager's time in two runs): Inductor fuses the memory-bound work between
  the convolutions into generated C++ loops, BatchNorm (statistics and normalisation), ReLU and the
  residual adds, forward and backward, which eager runs as separate passes over activation maps
  that are large next to the 3x3 convolutions' work (16-64 channels).
* The ViT-Ti gains nothing (0.95 and 0.99) because there is nothing left to fuse: in eager's profile
  aten::mm/addmm (the linear layers' forward and backward) take 79% of the step and
  scaled-dot-product attention's forward and backward 8%; compiled, the same GEMM calls (oneDNN/MKL,
  no fused epilogue on a CPU) and the same flash-attention kernel for CPU take the same time, and
  only LayerNorm, GELU, the residual adds and the bias gradients (the other ~13%, ~420 ms of 3.1 s)
  are fused, into ~200 ms of generated code. ``max-autotune-no-cudagraphs`` (GEMM templates
  benchmarked against ATen per shape) changes nothing: 1.015 of eager for the ViT-Ti (0.991 by
  default in the same run), 0.815 for ResNet-20 (0.813), at a longer compile.
* The PGD-7 step is slower compiled (1.68x and 1.57x eager). Two causes, both in the profile. First,
  AOTAutograd compiles one backward graph for every input that requires a gradient, so each
  attack step's ``torch.autograd.grad(loss, x)`` also computes the weight gradients (twice the
  aten::mm calls, a full convolution backward), which eager autograd skips; freezing the weights
  during the attack removes them (1.30x eager). Second, Inductor's generated code for the 2x2
  max pooling with indices and its backward is several times slower than ATen's on a CPU. So: do
  not compile a CNN with max pooling for adversarial training on a CPU, and freeze the weights for
  the attack whenever the model is compiled (research/attacks' attack_context does not yet).
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from adversarial_cost import time_per_step
from torch import nn
from torch.profiler import ProfilerActivity, profile

from research.attacks import pgd
from research.models import create_model
from research.models.vit import VisionTransformer

EPS = 0.3  # MNIST's L-inf radius (Madry et al. 2018)
PGD_STEPS = 7


def case(name: str, vit_batch: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor, bool]:
    """(model, images, labels, adversarial) of a benchmark case."""
    torch.manual_seed(0)
    if name == "resnet20":
        model, x = create_model("resnet20", num_classes=10), torch.rand(128, 3, 32, 32)
    elif name == "vit_tiny":
        model = VisionTransformer(img_size=32, patch_size=4, num_classes=10, embed_dim=192, depth=12, num_heads=3)
        x = torch.rand(vit_batch, 3, 32, 32)
    elif name == "pgd7":
        model, x = create_model("madry_mnist_cnn", in_chans=1, num_classes=10), torch.rand(128, 1, 28, 28)
    else:
        raise ValueError(f"unknown case {name!r}; use resnet20, vit_tiny or pgd7")
    return model, x, torch.randint(0, 10, (len(x),)), name == "pgd7"


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, adversarial: bool,
               freeze: bool = False) -> Callable[[], None]:
    """One train step of ``model`` on (x, y), after PGD-7 when ``adversarial`` (weights frozen in it if ``freeze``)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        images = x
        if adversarial:
            model.requires_grad_(not freeze)
            images = pgd(model, x, y, eps=EPS, step_size=2.5 * EPS / PGD_STEPS, steps=PGD_STEPS)
            model.requires_grad_(True)
        model.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), y).backward()
        opt.step()

    return step


def top_ops(step: Callable[[], None], count: int = 12) -> str:
    """The ``count`` operations with the most self CPU time in one step, as a table."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=count, max_name_column_width=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", nargs="+", default=["resnet20", "vit_tiny", "pgd7"])
    parser.add_argument("--mode", nargs="+", default=["default"], help="torch.compile modes to compare with eager")
    parser.add_argument("--vit-batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--profile", action="store_true", help="print each variant's most expensive operations")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| case | variant | compile s | ms/step | / eager |")
    print("|---|---|---|---|---|")
    for name in args.case:
        model, x, y, adversarial = case(name, args.vit_batch)
        steps = {"eager": train_step(model, x, y, adversarial)}
        compile_s = {}
        variants = [(mode, False) for mode in args.mode] + [(mode, True) for mode in args.mode if adversarial]
        for mode, freeze in variants:
            variant = f"{mode}, weights frozen in the attack" if freeze else mode
            compiled = copy.deepcopy(model)
            compiled.compile(mode=None if mode == "default" else mode)
            steps[variant] = train_step(compiled, x, y, adversarial, freeze)
            start = time.perf_counter()
            steps[variant]()  # compiles the train-mode forward/backward (and PGD's eval-mode graphs)
            steps[variant]()  # a second call: any recompilation (e.g. the optimizer state's first use) is here
            compile_s[variant] = time.perf_counter() - start
        ms = time_per_step(steps, args.iters, args.repeats, time.perf_counter, torch.device("cpu"))
        for variant, seconds in ms.items():
            print(f"| {name} | {variant} | {compile_s.get(variant, 0):.0f} | {seconds * 1e3:.1f} | "
                  f"{seconds / ms['eager']:.3f} |", flush=True)
        if args.profile:
            for variant, step in steps.items():
                print(f"\n{name}, {variant}:\n{top_ops(step)}")
        torch._dynamo.reset()


if __name__ == "__main__":
    main()

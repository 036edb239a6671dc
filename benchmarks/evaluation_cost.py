"""Cost of a robust-accuracy evaluation: APGD-CE-100 and the AutoAttack ensemble against PGD-40, same run.

    python benchmarks/evaluation_cost.py --config configs/reproduce/mnist_wong_pgd7.yaml \
        --ckpt_path checkpoints/reproduce/mnist_wong_pgd7/last.ckpt [--num_samples 100] [--eps 0.3]

Train the default checkpoint first with ``python -m research fit --config
configs/reproduce/mnist_wong_pgd7.yaml`` (an adversarially trained model: on a model without
robustness the ensemble stops after APGD-CE, since each of its attacks runs only on the examples
still robust, and costs little). On the same ``num_samples`` test examples (the seeded draw of
``python -m research attack``), one after the other in one process: PGD-40 (step 2.5 eps / 40, random start),
APGD-CE with 100 steps and the standard AutoAttack ensemble. Printed: the robust accuracy each finds
and its process CPU time as a ratio to PGD-40's (CPU time, because the machine may be shared).
"""

from __future__ import annotations

import argparse
import time

import torch

from research.attacks import apgd, autoattack_ensemble, pgd
from research.attacks.evaluation import sample_loader
from research.commands.load import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/reproduce/mnist_wong_pgd7.yaml")
    parser.add_argument("--ckpt_path", default="checkpoints/reproduce/mnist_wong_pgd7/last.ckpt")
    parser.add_argument("--num_samples", type=int, default=100)
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = load_run(args.config, args.ckpt_path)
    model, datamodule = run.task, run.datamodule
    batches = list(sample_loader(datamodule, split="test", num_samples=args.num_samples, seed=0))
    eps = args.eps

    def robust(x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (model(x).argmax(-1) == y) & (model(x_adv).argmax(-1) == y)

    runs = {
        "PGD-40": lambda x, y: robust(x, y, pgd(model, x, y, eps=eps, step_size=2.5 * eps / 40, steps=40)),
        "APGD-CE-100": lambda x, y: robust(x, y, apgd(model, x, y, eps=eps, steps=100)),
        "AutoAttack (standard)": lambda x, y: autoattack_ensemble(model, x, y, eps=eps).robust,
    }
    total = sum(len(y) for _, y in batches)
    results = {}
    for name, run in runs.items():
        torch.manual_seed(0)
        start = time.process_time()
        count = sum(int(run(x, y).sum()) for x, y in batches)
        results[name] = (count / total, time.process_time() - start)
    base = results["PGD-40"][1]
    print(f"{total} test examples of {args.ckpt_path}, L-inf eps {eps:g}, process CPU time, {args.threads} thread(s)\n")
    print("| evaluation | robust accuracy (%) | CPU time (s) | time / PGD-40's |")
    print("|---|---:|---:|---:|")
    for name, (accuracy, seconds) in results.items():
        print(f"| {name} | {100 * accuracy:.1f} | {seconds:.1f} | {seconds / base:.1f}x |")


if __name__ == "__main__":
    main()

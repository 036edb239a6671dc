r"""``python -m research.attack``: clean and robust accuracy of a trained checkpoint, per attack and eps.

    python -m research.attack --config configs/cnn/mnist_five_layer_cnn.yaml \
        --ckpt_path checkpoints/cnn/mnist_five_layer_cnn/last.ckpt --eps 0.1 0.2 0.3 --steps 40 --step_size 0.01

The task (weights and hyperparameters, normalisation included) comes from the checkpoint; the
config names the task class and the data, read through the same LightningCLI classes as
``python -m research.fit``, so any of its overrides can follow (``--data.init_args.root DIR``).
Nothing trains and nothing is logged. ``num_samples`` examples of the split are drawn at random
with ``--seed`` (which also seeds the random starts), every attack runs on the same ones, and a
markdown table is printed (and written as JSON with ``--json``).

An example counts as robust when the model classifies it correctly both clean and under the
attack (an attacker may always submit the clean image, which lies in every ball), as AutoAttack
counts; so robust accuracy never exceeds clean accuracy.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Subset

from research.attacks import fgsm, pgd
from research.checkpoint_file import load_checkpoint
from research.config_file import config_files, read_config_file
from research.errors import UserError, run_command
from research.fit import ResearchCLI

ATTACKS = ("fgsm", "pgd")


class _TaskAndData(ResearchCLI):
    """The config's task and datamodule, built as ``research.fit`` builds them, without a Trainer."""

    def parse_arguments(self, parser, args) -> None:
        # ``args`` are what this command left over from sys.argv, on purpose: LightningCLI's
        # warning about getting both would be noise.
        for file in config_files(list(args)):
            read_config_file(file)  # an error that names the file, before jsonargparse's
        self.config = parser.parse_args(args)

    def instantiate_trainer(self, **kwargs: Any) -> None:
        return None  # no Trainer: no loggers, checkpoint folders or device set-up


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m research.attack",
        allow_abbrev=False,  # an abbreviation could swallow an option meant for the LightningCLI
        description="Clean and robust accuracy of a checkpoint under FGSM and PGD. Arguments this command does "
        "not know go to the config's LightningCLI (e.g. --data.init_args.root DIR).",
    )
    parser.add_argument("--config", required=True, help="the YAML the checkpoint was trained with")
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by python -m research.fit")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.2, 0.3], help="radii, in pixel units")
    parser.add_argument("--attack", nargs="+", choices=ATTACKS, default=list(ATTACKS), help="attacks to run")
    parser.add_argument("--norm", choices=("linf", "l2"), default="linf", help="PGD's threat model")
    parser.add_argument("--steps", type=int, default=40, help="PGD iterations")
    parser.add_argument(
        "--step_size", type=float, default=None, help="PGD step; default 2.5 * eps / steps (Madry et al.)"
    )
    parser.add_argument("--restarts", type=int, default=1, help="PGD random restarts (worst case kept)")
    parser.add_argument("--num_samples", type=int, default=1000, help="examples attacked; at most the split's size")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--batch_size", type=int, default=None, help="default: the datamodule's")
    parser.add_argument("--device", default="auto", help="'auto' (a GPU if there is one), 'cpu', 'cuda', 'cuda:1'")
    parser.add_argument("--seed", type=int, default=0, help="seeds the drawn examples and the random starts")
    parser.add_argument("--json", type=Path, default=None, help="also write the table to this JSON file")
    return parser


def load(config: str, ckpt_path: str, overrides: Sequence[str] = (), *, device: str | torch.device = "cpu"):
    """The checkpoint's task in eval mode on ``device``, and the config's datamodule.

    Raises:
        FileNotFoundError: no file at ``ckpt_path``.
        ValueError: the checkpoint holds another model than the config describes.

    """
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"no checkpoint at {Path(ckpt_path).resolve()}; pass --ckpt_path to a .ckpt file")
    load_checkpoint(ckpt_path, what="--ckpt_path", lightning=True, mmap=True)  # a clear error for a broken file
    cli = _TaskAndData(args=["--config", config, *overrides], run=False)
    task = type(cli.model).load_from_checkpoint(ckpt_path, map_location=device)
    saved, described = task.hparams.get("model"), cli.model.hparams.get("model")
    if saved is not None and described is not None and saved != described:
        raise ValueError(
            f"the checkpoint holds the model {saved}, but the config describes {described}; "
            "pass the config the checkpoint was trained with"
        )
    return task.eval(), cli.datamodule


def sample_loader(
    datamodule: L.LightningDataModule, *, split: str, num_samples: int, seed: int, batch_size: int | None = None
) -> DataLoader:
    """A loader over ``num_samples`` examples of ``split`` drawn at random with ``seed`` (all if fewer).

    Random, not the first ones: a split may be sorted by class (the embedded digits are).
    """
    datamodule.setup("test" if split == "test" else "validate")
    loader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
    dataset = loader.dataset
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    count = min(num_samples, len(dataset))
    chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count].sort().values
    return DataLoader(Subset(dataset, chosen.tolist()), batch_size=batch_size or loader.batch_size,
                      collate_fn=loader.collate_fn, num_workers=0)


def robust_accuracy(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    attacks: Sequence[str],
    eps: Sequence[float],
    norm: str = "linf",
    steps: int = 40,
    step_size: float | None = None,
    restarts: int = 1,
    device: str | torch.device = "cpu",
) -> list[dict]:
    """Clean accuracy, then accuracy under each attack at each eps, over the same examples.

    Args:
        model: maps (B, C, H, W) images in [0, 1] to logits, in eval mode.
        batches: (images, labels) batches.
        attacks: names among ``"fgsm"`` (L-inf by definition) and ``"pgd"``.
        eps: radii in ``norm``, pixel units.
        norm: PGD's threat model.
        steps: PGD iterations.
        step_size: PGD step; None for 2.5 * eps / steps.
        restarts: PGD random restarts.
        device: where the batches go.

    Returns:
        One row per setting: ``attack`` ("none" for clean), ``norm``, ``eps``, ``steps``,
        ``step_size``, ``restarts``, ``correct``, ``total``, ``accuracy``.

    """
    if "fgsm" in attacks and norm != "linf":
        raise ValueError(f"fgsm is an L-inf attack; with norm={norm!r} attack with pgd only")
    linf = norm == "linf" or "fgsm" in attacks
    if linf and any(e > 1 for e in eps):
        raise UserError(
            f"--eps {max(eps):g} is above 1: images are in [0, 1], so an L-inf radius of 1 already reaches every "
            "image and accuracy is 0 by construction; give eps in pixel units (e.g. 0.3 on MNIST, 8/255 = 0.031 on "
            "CIFAR-10)"
        )
    if "pgd" in attacks and steps < 1:
        given = f" with --step_size {step_size:g}" if step_size is not None else ""
        raise UserError(
            f"--steps {steps}{given}: PGD needs steps >= 1 (0 steps would be its random start only); "
            "use --steps 40 (Madry et al.), or --attack fgsm for a one-step attack"
        )
    rows = [{"attack": "none", "norm": None, "eps": 0.0, "steps": 0, "step_size": None, "restarts": 1}]
    for attack in attacks:
        for e in eps:
            if attack == "fgsm":
                rows.append({"attack": "fgsm", "norm": "linf", "eps": e, "steps": 1, "step_size": e, "restarts": 1})
            else:
                # Madry et al.'s rule of thumb; any positive step does for eps = 0 or steps = 0.
                size = step_size or (2.5 * e / steps if e > 0 and steps > 0 else 1.0)
                rows.append({"attack": "pgd", "norm": norm, "eps": e, "steps": steps, "step_size": size,
                             "restarts": restarts})
    correct, total = [0] * len(rows), 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            clean = model(x).argmax(-1) == y
        total += len(y)
        for i, row in enumerate(rows):
            if row["attack"] == "none":
                hit = clean
            else:
                if row["attack"] == "fgsm":
                    x_adv = fgsm(model, x, y, eps=row["eps"])
                else:
                    x_adv = pgd(model, x, y, eps=row["eps"], step_size=row["step_size"], steps=steps, norm=norm,
                                restarts=restarts)
                with torch.no_grad():
                    hit = clean & (model(x_adv).argmax(-1) == y)
            correct[i] += int(hit.sum())
    if total == 0:
        raise ValueError("the split has no examples to attack")
    return [{**row, "correct": c, "total": total, "accuracy": c / total} for row, c in zip(rows, correct)]


def markdown(rows: Sequence[dict]) -> str:
    """The rows as a markdown table, accuracies in percent."""
    lines = ["| attack | norm | eps | steps | step size | restarts | accuracy (%) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["attack"] == "none":
            lines.append(f"| clean | | 0 | | | | {100 * r['accuracy']:.2f} |")
        else:
            lines.append(f"| {r['attack']} | {r['norm']} | {r['eps']:g} | {r['steps']} | {r['step_size']:.4g} | "
                         f"{r['restarts']} | {100 * r['accuracy']:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args, overrides = build_parser().parse_known_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    task, datamodule = load(args.config, args.ckpt_path, overrides, device=device)
    loader = sample_loader(datamodule, split=args.split, num_samples=args.num_samples, seed=args.seed,
                           batch_size=args.batch_size)
    torch.manual_seed(args.seed)
    rows = robust_accuracy(task, loader, attacks=args.attack, eps=args.eps, norm=args.norm, steps=args.steps,
                           step_size=args.step_size, restarts=args.restarts, device=device)
    print(f"{rows[0]['total']} examples of the {args.split} split of {type(datamodule).__name__}, "
          f"checkpoint {args.ckpt_path}\n")
    print(markdown(rows))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"config": args.config, "ckpt_path": args.ckpt_path, "split": args.split, "seed": args.seed,
                  "rows": rows}
        args.json.write_text(json.dumps(report, indent=2))
    return rows


if __name__ == "__main__":
    run_command(main)

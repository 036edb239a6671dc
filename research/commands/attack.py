r"""``python -m research attack``: clean and robust accuracy of a trained checkpoint, per attack and eps.

    python -m research attack --config configs/cnn/mnist_five_layer_cnn.yaml \
        --ckpt_path checkpoints/cnn/mnist_five_layer_cnn/last.ckpt --eps 0.1 0.2 0.3 --steps 40 --step_size 0.01

    python -m research attack --config configs/cnn/mnist_five_layer_cnn.yaml \
        --ckpt_path checkpoints/cnn/mnist_five_layer_cnn/last.ckpt --eps 0.1 0.3 --json robust.json --plot [--wandb]

The run is loaded by :func:`research.commands.load.load_run`: the task (weights and
hyperparameters, normalisation included) from the checkpoint, the data from the config, read
through the same LightningCLI classes as ``python -m research fit``, so any of its overrides can
follow (``--data.init_args.root DIR``, ``--model.init_args.NAME VALUE``).
Nothing trains. ``num_samples`` examples of the split are drawn at random with ``--seed`` (which
also seeds the random starts), every attack runs on the same ones, and a markdown table is
printed (and written as JSON with ``--json``), each accuracy with its 95% confidence interval.

An example counts as robust when the model classifies it correctly both clean and under the
attack (an attacker may always submit the clean image, which lies in every ball), as AutoAttack
counts; so robust accuracy never exceeds clean accuracy. An attack's figure is an upper bound on
the true robust accuracy: a stronger attack can only lower it.

Attacks are looked up by name in one registry, :data:`research.attacks.registry.ATTACKS`
(``--attack NAME ...``); the counting is :func:`research.attacks.evaluation.robust_accuracy`'s.

While it runs, a progress bar on stderr shows the attack and eps, the images done and the time
left; when stderr is not a terminal (a log file, a pipe, CI), one line per finished setting instead.

The sanity panel (:mod:`research.attacks.sanity`), run after the table unless ``--no_sanity``: a
model whose gradients are masked defeats PGD without being robust. Four signs of it are checked
at the largest ``--eps``, on ``--sanity_samples`` (default 100) of the drawn examples (the first
of the same random draw), each PASS or WARN, with a warning per failure that names the likely
cause and what to try:

* more PGD steps (10, 40, 100) do not raise accuracy, nor do more restarts (1 against 5);
* accuracy reaches 0% at L-inf eps 0.5, where the ball of any [0, 1] image holds the all-grey image;
* an iterative attack (PGD-40) is at least as strong as a one-step one (FGSM; one L2 step for L2).

A rise fails only beyond the noise of the random starts (a one-sided sign test on the examples one
setting fools and the other does not, p < 0.05). On the defaults the panel adds about a fifth to
the run's time (100 examples at up to 100 steps, against 1,000 at 40).

``--plot [PATH]`` draws robust accuracy against eps per attack, with the intervals (PNG; needs
matplotlib; default path: beside ``--json``, else ``robust_accuracy.png``). ``--wandb`` logs the
table, the panel and the picture to a wandb run (offline unless you are logged in, as
``python -m research fit``; under ``logs/``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from research.attacks import registry
from research.attacks.evaluation import markdown, robust_accuracy, sample_loader
from research.attacks.sanity import sanity_markdown, sanity_panel
from research.commands.load import add_run_arguments, load_run

_DEFAULT_PLOT = Path("robust_accuracy.png")  # --plot without a path, and no --json to put it beside


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m research attack",
        allow_abbrev=False,  # an abbreviation could swallow an option meant for the LightningCLI
        description="Clean and robust accuracy of a checkpoint per attack and eps, with a sanity panel for gradient "
        "masking.",
    )
    add_run_arguments(parser, seed="seeds the drawn examples and the random starts")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.2, 0.3], help="radii, in pixel units")
    parser.add_argument("--attack", nargs="+", choices=sorted(registry.ATTACKS), default=list(registry.DEFAULT_ATTACKS),
                        help="attacks to run")
    parser.add_argument("--norm", choices=("linf", "l2"), default="linf", help="the threat model")
    parser.add_argument("--steps", type=int, default=40, help="PGD iterations")
    parser.add_argument(
        "--step_size", type=float, default=None, help="PGD step; default 2.5 * eps / steps (Madry et al.)"
    )
    parser.add_argument("--restarts", type=int, default=1, help="random restarts (an example is robust only if "
                        "none fools it)")
    parser.add_argument("--num_samples", type=int, default=1000, help="examples attacked, drawn at random; at most "
                        "the split's size")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--batch_size", type=int, default=None, help="default: the datamodule's")
    parser.add_argument("--device", default="auto", help="'auto' (a GPU if there is one), 'cpu', 'cuda', 'cuda:1'")
    parser.add_argument("--json", type=Path, default=None, help="also write the table to this JSON file")
    parser.add_argument("--plot", type=Path, nargs="?", const=_DEFAULT_PLOT, default=None, metavar="PNG",
                        help="draw robust accuracy against eps (default path: beside --json, else "
                        "robust_accuracy.png); needs matplotlib")
    parser.add_argument("--wandb", action="store_true", help="log the table, the sanity panel and the picture to "
                        "wandb (offline unless logged in)")
    parser.add_argument("--sanity_samples", type=int, default=100,
                        help="examples the sanity panel attacks (the first of the drawn ones); 0 skips it")
    parser.add_argument("--no_sanity", action="store_true", help="skip the sanity panel")
    return parser


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Run the command on ``argv`` (default: the command line); returns the table's rows."""
    args, overrides = build_parser().parse_known_args(argv)
    settings = registry.AttackSettings(steps=args.steps, step_size=args.step_size, restarts=args.restarts)
    registry.check_settings(args.attack, args.eps, args.norm, settings)  # before the model loads
    plot = _plot_path(args)
    if plot is not None:
        from research.attacks.plot import require_matplotlib

        require_matplotlib()  # now, not after the attacks have run
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    run = load_run(args.config, args.ckpt_path, overrides, device=device)
    task, datamodule = run.task, run.datamodule
    loader = sample_loader(datamodule, split=args.split, num_samples=args.num_samples, seed=args.seed,
                           batch_size=args.batch_size)
    torch.manual_seed(args.seed)
    rows = robust_accuracy(task, loader, attacks=args.attack, eps=args.eps, norm=args.norm, steps=args.steps,
                           step_size=args.step_size, restarts=args.restarts, device=device, progress=True)
    header = (f"{rows[0]['total']} examples of the {args.split} split of {type(datamodule).__name__}, "
              f"checkpoint {args.ckpt_path}")
    print(f"{header}\n")
    print(markdown(rows), flush=True)
    checks = None
    if not args.no_sanity and args.sanity_samples > 0:
        subset = sample_loader(datamodule, split=args.split, num_samples=min(args.sanity_samples, args.num_samples),
                               seed=args.seed, batch_size=args.batch_size)
        torch.manual_seed(args.seed)
        checks = sanity_panel(task, subset, eps=max(args.eps), norm=args.norm, device=device, progress=True)
        print(f"\nSanity panel (gradient masking), {checks[0]['total']} of those examples:\n")
        print(sanity_markdown(checks), flush=True)
    report = {"config": args.config, "ckpt_path": args.ckpt_path, "split": args.split, "seed": args.seed,
              "rows": rows, "sanity": checks}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    if plot is not None:
        from research.attacks.plot import plot_robust_accuracy

        plot_robust_accuracy(rows, plot, title=header)
        print(f"\nplot: {plot}")
    if args.wandb:
        from research.attacks.plot import log_to_wandb

        where = log_to_wandb(report, image=plot, name=f"attack-{Path(args.ckpt_path).parent.name}", title=header)
        print(f"logged to wandb: {where}")
    return rows


def _plot_path(args: argparse.Namespace) -> Path | None:
    """``--plot PATH`` as given; a bare ``--plot`` beside ``--json`` (same name, .png), else in the current folder."""
    if args.plot is not _DEFAULT_PLOT:
        return args.plot
    return args.json.with_suffix(".png") if args.json is not None else _DEFAULT_PLOT

r"""``python -m research.attack``: clean and robust accuracy of a trained checkpoint, per attack and eps.

    python -m research.attack --config configs/cnn/mnist_five_layer_cnn.yaml \
        --ckpt_path checkpoints/cnn/mnist_five_layer_cnn/last.ckpt --eps 0.1 0.2 0.3 --steps 40 --step_size 0.01

    python -m research.attack --config configs/cnn/mnist_five_layer_cnn.yaml \
        --ckpt_path checkpoints/cnn/mnist_five_layer_cnn/last.ckpt --eps 0.1 0.3 --json robust.json --plot [--wandb]

The task (weights and hyperparameters, normalisation included) comes from the checkpoint; the
config names the task class and the data, read through the same LightningCLI classes as
``python -m research.fit``, so any of its overrides can follow (``--data.init_args.root DIR``).
Nothing trains. ``num_samples`` examples of the split are drawn at random with ``--seed`` (which
also seeds the random starts), every attack runs on the same ones, and a markdown table is
printed (and written as JSON with ``--json``), each accuracy with its 95% confidence interval.

An example counts as robust when the model classifies it correctly both clean and under the
attack (an attacker may always submit the clean image, which lies in every ball), as AutoAttack
counts; so robust accuracy never exceeds clean accuracy. An attack's figure is an upper bound on
the true robust accuracy: a stronger attack can only lower it.

Attacks are looked up by name in one registry, :data:`ATTACKS` (``--attack NAME ...``): each entry
maps ``(model, x, y, eps, norm, settings)`` to adversarial images; :func:`register_attack` adds one.

While it runs, a progress bar on stderr shows the attack and eps, the images done and the time
left; when stderr is not a terminal (a log file, a pipe, CI), one line per finished setting instead.

The sanity panel, run after the table unless ``--no_sanity``. A robust accuracy is only as good as
the attack: a model whose gradients are masked (zero, noisy or shattered: quantised inputs,
thresholds, stochastic layers) defeats PGD without being robust. Athalye, Carlini and Wagner 2018,
"Obfuscated Gradients Give a False Sense of Security" (arXiv:1802.00420, section 3.1) and Carlini
et al. 2019, "On Evaluating Adversarial Robustness" (arXiv:1902.06705, section 5, basic sanity
tests) list its signs. Four of them are checked at the largest ``--eps``, on ``--sanity_samples``
(default 100) of the drawn examples (the first of the same random draw), each PASS or WARN, with a
warning per failure that names the likely cause and what to try:

* more PGD steps (10, 40, 100) do not raise accuracy, nor do more restarts (1 against 5);
* accuracy reaches 0% at L-inf eps 0.5, where the ball of any [0, 1] image holds the all-grey image;
* an iterative attack (PGD-40) is at least as strong as a one-step one (FGSM; one L2 step for L2).

A rise fails only beyond the noise of the random starts (a one-sided sign test on the examples one
setting fools and the other does not, p < 0.05). On the defaults the panel adds about a fifth to
the run's time (100 examples at up to 100 steps, against 1,000 at 40).

``--plot [PATH]`` draws robust accuracy against eps per attack, with the intervals (PNG; needs
matplotlib; default path: beside ``--json``, else ``robust_accuracy.png``). ``--wandb`` logs the
table, the panel and the picture to a wandb run (offline unless you are logged in, as
``research.fit``; under ``logs/``).
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from research.attacks import apgd, autoattack, fgsm, pgd, square
from research.attacks.ensemble import COMPONENTS
from research.checkpoint_file import load_checkpoint
from research.config_file import config_files, read_config_file
from research.errors import UserError, run_command
from research.fit import ResearchCLI

NORM_NAMES = {"linf": "L-inf", "l2": "L2"}


# --- The attack registry -----------------------------------------------------------------------------------
# One entry per attack name: ``run(model, x, y, eps, norm, settings) -> x_adv``. The command line's
# choices, the table, the picture and the progress bar read everything from here, so an attack added
# with @register_attack needs no other change.


@dataclass(frozen=True)
class AttackSettings:
    """What the command line sets for every attack; each entry reads what applies to it.

    Attributes:
        steps: iterations (PGD).
        step_size: PGD's step; None for Madry et al.'s 2.5 * eps / steps.
        restarts: random restarts; an example is robust only if no restart fools it.

    """

    steps: int = 40
    step_size: float | None = None
    restarts: int = 1


AttackFn = Callable[[nn.Module, Tensor, Tensor, float, str, AttackSettings], Tensor]


@dataclass(frozen=True)
class Attack:
    """An entry of :data:`ATTACKS`.

    Attributes:
        run: ``run(model, x, y, eps, norm, settings)`` -> (B, C, H, W) adversarial images in
            [0, 1] within ``eps`` of ``x`` in ``norm``.
        norms: the threat models it attacks in.
        describe: ``describe(eps, norm, settings)`` -> the table's ``steps``, ``step_size`` and
            ``restarts`` for this setting (None where one does not apply).
        cost: forward-backward passes per image under ``settings``, for the time left.
        uses_steps: whether ``settings.steps`` must be >= 1.

    """

    run: AttackFn
    norms: tuple[str, ...]
    describe: Callable[[float, str, AttackSettings], dict[str, Any]]
    cost: Callable[[AttackSettings], float]
    uses_steps: bool = False


ATTACKS: dict[str, Attack] = {}


def _iterations(eps: float, norm: str, settings: AttackSettings) -> dict[str, Any]:
    return {"steps": settings.steps, "step_size": None, "restarts": settings.restarts}


def register_attack(
    name: str,
    *,
    norms: tuple[str, ...] = ("linf", "l2"),
    describe: Callable[[float, str, AttackSettings], dict[str, Any]] = _iterations,
    cost: Callable[[AttackSettings], float] = lambda s: s.steps * s.restarts,
    uses_steps: bool = False,
) -> Callable[[AttackFn], AttackFn]:
    """Register ``run(model, x, y, eps, norm, settings) -> x_adv`` under ``name`` (a decorator).

    Raises:
        ValueError: ``name`` is already registered.

    """

    def add(run: AttackFn) -> AttackFn:
        if name in ATTACKS:
            raise ValueError(f"attack {name!r} registered twice ({run.__module__}.{run.__qualname__})")
        ATTACKS[name] = Attack(run=run, norms=norms, describe=describe, cost=cost, uses_steps=uses_steps)
        return run

    return add


def pgd_step_size(eps: float, settings: AttackSettings) -> float:
    """``settings.step_size``, or Madry et al.'s rule of thumb 2.5 * eps / steps."""
    if settings.step_size is not None:
        return settings.step_size
    # Any positive step does for eps = 0 or steps = 0 (pgd checks steps itself).
    return 2.5 * eps / settings.steps if eps > 0 and settings.steps > 0 else 1.0


@register_attack("fgsm", norms=("linf",), cost=lambda s: 1,
                 describe=lambda eps, norm, s: {"steps": 1, "step_size": eps, "restarts": 1})
def _fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str, settings: AttackSettings) -> Tensor:
    return fgsm(model, x, y, eps=eps)


@register_attack("pgd", uses_steps=True,
                 describe=lambda eps, norm, s: {"steps": s.steps, "step_size": pgd_step_size(eps, s),
                                                "restarts": s.restarts})
def _pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str, settings: AttackSettings) -> Tensor:
    # pgd keeps, per example, a restart that fools the model if any does: the worst case.
    return pgd(model, x, y, eps=eps, step_size=pgd_step_size(eps, settings), steps=settings.steps, norm=norm,
               restarts=settings.restarts)


_FIXED = {"step_size": None, "restarts": 1}


@register_attack("apgd", cost=lambda s: 100 * s.restarts,
                 describe=lambda eps, norm, s: {"steps": 100, "step_size": None, "restarts": s.restarts})
def _apgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str, settings: AttackSettings) -> Tensor:
    # APGD-CE as AutoAttack runs it: 100 steps, no step size to choose (Croce and Hein 2020, section 3).
    return apgd(model, x, y, eps=eps, norm=norm, steps=100, loss="ce", restarts=settings.restarts)


@register_attack("apgd-t", cost=lambda s: 900, describe=lambda eps, norm, s: {"steps": 100, **_FIXED})
def _apgd_t(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str, settings: AttackSettings) -> Tensor:
    return COMPONENTS["apgd-t"][0](model, x, y, eps=eps, norm=norm, num_classes=_classes(model, x), eval_mode=True)


@register_attack("fab-t", cost=lambda s: 1800, describe=lambda eps, norm, s: {"steps": 100, **_FIXED})
def _fab_t(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str, settings: AttackSettings) -> Tensor:
    return COMPONENTS["fab-t"][0](model, x, y, eps=eps, norm=norm, num_classes=_classes(model, x), eval_mode=True)


@register_attack("square", cost=lambda s: 1700, describe=lambda eps, norm, s: {"steps": 5000, **_FIXED})
def _square(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str, settings: AttackSettings) -> Tensor:
    # 5,000 queries (forward passes only; "steps" in the table), p_init 0.8: AutoAttack's standard Square.
    return square(model, x, y, eps=eps, norm=norm, queries=5000, p_init=0.8)


@register_attack("autoattack", cost=lambda s: 2500, describe=lambda eps, norm, s: {"steps": None, **_FIXED})
def _autoattack(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str, settings: AttackSettings) -> Tensor:
    # The standard ensemble (APGD-CE, APGD-T, FAB-T, Square), worst case per example: the headline figure.
    return autoattack(model, x, y, eps=eps, norm=norm)


def _classes(model: nn.Module, x: Tensor) -> int:
    with torch.no_grad():
        return model(x[:1]).shape[-1]


#: What ``--attack`` runs when not given.
DEFAULT_ATTACKS = ("fgsm", "pgd")
# --- end of the attack registry ----------------------------------------------------------------------------


_DEFAULT_PLOT = Path("robust_accuracy.png")  # --plot without a path, and no --json to put it beside


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
        description="Clean and robust accuracy of a checkpoint per attack and eps, with a sanity panel for gradient "
        "masking. Arguments this command does not know go to the config's LightningCLI (e.g. --data.init_args.root "
        "DIR).",
    )
    parser.add_argument("--config", required=True, help="the YAML the checkpoint was trained with")
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by python -m research.fit")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.2, 0.3], help="radii, in pixel units")
    parser.add_argument("--attack", nargs="+", choices=sorted(ATTACKS), default=list(DEFAULT_ATTACKS),
                        help="attacks to run")
    parser.add_argument("--norm", choices=("linf", "l2"), default="linf", help="the threat model")
    parser.add_argument("--steps", type=int, default=40, help="PGD iterations")
    parser.add_argument(
        "--step_size", type=float, default=None, help="PGD step; default 2.5 * eps / steps (Madry et al.)"
    )
    parser.add_argument("--restarts", type=int, default=1, help="random restarts (an example is robust only if "
                        "none fools it)")
    parser.add_argument("--num_samples", type=int, default=1000, help="examples attacked; at most the split's size")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--batch_size", type=int, default=None, help="default: the datamodule's")
    parser.add_argument("--device", default="auto", help="'auto' (a GPU if there is one), 'cpu', 'cuda', 'cuda:1'")
    parser.add_argument("--seed", type=int, default=0, help="seeds the drawn examples and the random starts")
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


def load(config: str, ckpt_path: str, overrides: Sequence[str] = (), *, device: str | torch.device = "cpu"):
    """The checkpoint's task in eval mode on ``device``, and the config's datamodule.

    Raises:
        FileNotFoundError: no file at ``ckpt_path`` (the message names the command that writes it).
        ValueError: the checkpoint holds another model than the config describes.

    """
    # A clear error for a missing file (naming the command that writes it) or a broken one.
    load_checkpoint(ckpt_path, what="checkpoint", lightning=True, mmap=True)
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

    Random, not the first ones: a split may be sorted by class (the embedded digits are). For one
    seed, the examples drawn for a smaller ``num_samples`` are among those of a larger one.
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


def wilson_interval(correct: int, total: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``correct / total``.

    Wilson 1927, "Probable inference, the law of succession, and statistical inference" (JASA 22):
    the ``p`` with ``|p_hat - p| <= z * sqrt(p (1 - p) / n)``, solved in closed form; unlike the
    normal approximation it stays in [0, 1] and is not empty at 0% or 100%. The same as
    ``scipy.stats.binomtest(correct, total).proportion_ci(confidence, method="wilson")``.

    Args:
        correct: successes, 0 <= correct <= total.
        total: trials, >= 1.
        confidence: the interval's coverage, in (0, 1).

    Returns:
        (low, high), proportions in [0, 1].

    Raises:
        ValueError: counts or confidence out of range.

    """
    if not (0 <= correct <= total and total >= 1):
        raise ValueError(f"need 0 <= correct <= total and total >= 1, got correct={correct}, total={total}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    p, n = correct / total, total
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # At 0% and 100% the bound is p itself, up to rounding.
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == total else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class _Setting:
    """One attack at one eps: a row of the table."""

    attack: str
    norm: str
    eps: float
    settings: AttackSettings = field(default_factory=AttackSettings)

    def row(self) -> dict[str, Any]:
        return {"attack": self.attack, "norm": self.norm, "eps": self.eps,
                **ATTACKS[self.attack].describe(self.eps, self.norm, self.settings)}

    @property
    def label(self) -> str:
        row = self.row()
        label = f"{self.attack} {self.norm} eps {self.eps:g}"
        if self.attack != "fgsm" and row["steps"] is not None:
            label += f", {row['steps']} steps"
        if row["restarts"] is not None and row["restarts"] > 1:
            label += f" x {row['restarts']} restarts"
        return label


def _check_settings(attacks: Sequence[str], eps: Sequence[float], norm: str, settings: AttackSettings) -> None:
    """Stop before any work, with what was wrong and what to pass instead."""
    for name in attacks:
        if name not in ATTACKS:
            close = difflib.get_close_matches(name, ATTACKS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"unknown attack {name!r}; {hint}known: {', '.join(sorted(ATTACKS))}")
        if norm not in ATTACKS[name].norms:
            kinds = " or ".join(NORM_NAMES.get(n, n) for n in ATTACKS[name].norms)
            others = [other for other, entry in ATTACKS.items() if norm in entry.norms]
            raise ValueError(f"{name} is an {kinds} attack; with norm={norm!r} attack with {', '.join(others)} only")
    for e in eps:
        if not (isinstance(e, int | float) and math.isfinite(e) and e >= 0):
            raise ValueError(f"eps must be a finite number >= 0 (in pixel units of [0, 1] images), got {e!r}")
    if norm == "linf" and any(e > 1 for e in eps):
        raise UserError(
            f"--eps {max(eps):g} is above 1: images are in [0, 1], so an L-inf radius of 1 already reaches every "
            "image and accuracy is 0 by construction; give eps in pixel units (e.g. 0.3 on MNIST, 8/255 = 0.031 on "
            "CIFAR-10)"
        )
    iterative = [name.upper() for name in attacks if ATTACKS[name].uses_steps]
    if iterative and settings.steps < 1:
        given = f" with --step_size {settings.step_size:g}" if settings.step_size is not None else ""
        raise UserError(
            f"--steps {settings.steps}{given}: {' and '.join(iterative)} needs steps >= 1 (0 steps would be its "
            "random start only); use --steps 40 (Madry et al.), or --attack fgsm for a one-step attack"
        )


def robust_accuracy(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    attacks: Sequence[str],
    eps: Sequence[float],
    norm: str = "linf",
    steps: int = 40,
    step_size: float | None = None,
    restarts: int = 1,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> list[dict]:
    """Clean accuracy, then accuracy under each attack at each eps, over the same examples.

    Args:
        model: maps (B, C, H, W) images in [0, 1] to logits, in eval mode.
        batches: (images, labels) batches; iterated once per row, so it must give the same
            batches each time (a DataLoader without shuffling does; an iterator is read once
            into a list).
        attacks: names in :data:`ATTACKS` (``"fgsm"`` is L-inf by definition, ``"pgd"``, ...).
        eps: radii in ``norm``, pixel units.
        norm: the threat model.
        steps: PGD iterations.
        step_size: PGD step; None for 2.5 * eps / steps.
        restarts: random restarts; an example is robust only if no restart fools it.
        device: where the batches go.
        progress: report progress on stderr (:class:`AttackProgress`): a bar in a terminal,
            else one line per finished setting.

    Returns:
        One row per setting, clean first: ``attack`` ("none" for clean), ``norm``, ``eps``,
        ``steps``, ``step_size``, ``restarts``, ``correct``, ``total``, ``accuracy`` and its 95%
        Wilson interval ``ci_low``, ``ci_high``.

    Raises:
        ValueError: an unknown attack, one that does not attack in ``norm``, a negative eps.
        UserError: an L-inf eps above 1, or ``steps`` < 1 for an iterative attack.

    """
    settings = AttackSettings(steps=steps, step_size=step_size, restarts=restarts)
    _check_settings(attacks, eps, norm, settings)
    chosen = [_Setting(name, norm, e, settings) for name in attacks for e in eps]
    return _evaluate(model, batches, chosen, device=device, progress=progress)[0]


def _evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    chosen: Sequence[_Setting],
    *,
    device: str | torch.device = "cpu",
    progress: bool = False,
    title: str = "attacks",
) -> tuple[list[dict], list[Tensor]]:
    """The rows of :func:`robust_accuracy` for explicit settings, and which examples each counts.

    One setting at a time over all batches (not all settings per batch), so that each finished
    setting can be reported while the next runs. Counting: clean-correct and correct under the
    attack (worst case over the attack's restarts).

    Returns:
        The rows (clean first, then one per setting), and per row a (N,) bool tensor on the CPU:
        whether each example counts as correct.

    """
    if iter(batches) is batches:  # an iterator: it would be empty at the second pass
        batches = list(batches)
    clean, labels = [], []
    changed = ValueError("the batches changed between passes (shuffled or augmented?); attack a loader that gives "
                         "the same batches every time (shuffle=False, no random transforms)")
    with AttackProgress([s.label for s in chosen], [ATTACKS[s.attack].cost(s.settings) for s in chosen],
                        live=progress, title=title) as report:
        started = time.monotonic()
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            with torch.no_grad():
                clean.append(model(x).argmax(-1) == y)
            labels.append(y.cpu())
        total = sum(len(y) for y in labels)
        if total == 0:
            raise ValueError("the split has no examples to attack")
        hits = [torch.cat(clean).cpu()]
        report.clean(int(hits[0].sum()), total, time.monotonic() - started)
        for i, setting in enumerate(chosen):
            report.begin(i, total)
            run, robust = ATTACKS[setting.attack].run, []
            for b, (x, y) in enumerate(batches):
                if b >= len(labels) or not torch.equal(y.cpu(), labels[b]):
                    raise changed
                x, y = x.to(device), y.to(device)
                x_adv = run(model, x, y, setting.eps, setting.norm, setting.settings)
                with torch.no_grad():
                    robust.append(clean[b] & (model(x_adv).argmax(-1) == y))
                report.advance(len(y))
            if len(robust) != len(labels):
                raise changed
            hits.append(torch.cat(robust).cpu())
            report.end(i, int(hits[-1].sum()), total)
    clean_row = {"attack": "none", "norm": None, "eps": 0.0, "steps": 0, "step_size": None, "restarts": 1}
    rows = []
    for row, hit in zip([clean_row, *(s.row() for s in chosen)], hits):
        c = int(hit.sum())
        low, high = wilson_interval(c, total)
        rows.append({**row, "correct": c, "total": total, "accuracy": c / total, "ci_low": low, "ci_high": high})
    return rows, hits


class AttackProgress:
    """Where the attacks are, on stderr: a rich progress bar in a terminal, else a line per finished setting.

    The bar shows the attack and eps, the images done, the time spent and the time left on the
    current setting, and over all settings (weighted by each attack's cost per image, so a PGD-40
    row counts 40 FGSM rows). The lines (also printed above the bar in a terminal) give each
    setting's accuracy, its time and the estimated time left, so a log shows how far a run got.

    Args:
        labels: one per setting, in the order they run.
        costs: forward-backward passes per image of each setting.
        live: report (a bar when stderr is a terminal, else lines); False says nothing.
        title: names the phase in the lines ("attacks", "sanity panel").

    """

    def __init__(self, labels: Sequence[str], costs: Sequence[float], *, live: bool = True,
                 title: str = "attacks") -> None:
        self.labels, self.costs, self.title = list(labels), [max(float(c), 1e-3) for c in costs], title
        self.quiet = not live
        self.bar = None
        self.done_work = 0.0
        self.total_work = 0.0

    def __enter__(self) -> AttackProgress:
        if not self.quiet and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
                                TimeElapsedColumn(), TextColumn("elapsed,"), TimeRemainingColumn(), TextColumn("left"),
                                console=Console(file=sys.stderr), transient=True)
            self.bar.start()
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def _say(self, line: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=sys.stderr, flush=True)

    def clean(self, correct: int, total: int, seconds: float) -> None:
        self.total_images = total
        self.total_work = sum(self.costs) * total
        self.attack_start = time.monotonic()
        self._say(f"{self.title}: clean {_percent(correct, total)} in {_duration(seconds)}; "
                  f"{len(self.labels)} settings to run on {total} images")
        if self.bar is not None:
            self.overall = self.bar.add_task(f"{self.title}: all", total=self.total_work,
                                             count=f"0/{len(self.labels)} settings")

    def begin(self, i: int, total: int) -> None:
        self.index, self.row_start, self.row_done = i, time.monotonic(), 0
        if self.bar is not None:
            self.current = self.bar.add_task(f"[{i + 1}/{len(self.labels)}] {self.labels[i]}", total=total,
                                             count=f"0/{total} images")

    def advance(self, images: int) -> None:
        self.row_done += images
        self.done_work += images * self.costs[self.index]
        if self.bar is not None:
            self.bar.update(self.current, advance=images, count=f"{self.row_done}/{self.total_images} images")
            self.bar.update(self.overall, advance=images * self.costs[self.index])

    def end(self, i: int, correct: int, total: int) -> None:
        now = time.monotonic()
        left = (now - self.attack_start) / max(self.done_work, 1e-9) * (self.total_work - self.done_work)
        after = f"; about {_duration(left)} left" if i + 1 < len(self.labels) else ""
        self._say(f"[{i + 1}/{len(self.labels)}] {self.labels[i]}: {_percent(correct, total)} "
                  f"in {_duration(now - self.row_start)}{after}")
        if self.bar is not None:
            self.bar.remove_task(self.current)
            self.bar.update(self.overall, count=f"{i + 1}/{len(self.labels)} settings")


def _percent(correct: int, total: int) -> str:
    return f"{100 * correct / total:.2f}% ({correct}/{total})"


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{max(0.0, seconds):.1f} s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _cell(value: Any, spec: str = "") -> str:
    return "" if value is None else format(value, spec)


def markdown(rows: Sequence[dict]) -> str:
    """The rows as a markdown table, accuracies and their 95% intervals in percent."""
    lines = ["| attack | norm | eps | steps | step size | restarts | accuracy (%) | 95% CI (%) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = f"{100 * r['ci_low']:.1f}-{100 * r['ci_high']:.1f}" if "ci_low" in r else ""
        if r["attack"] == "none":
            lines.append(f"| clean | | 0 | | | | {100 * r['accuracy']:.2f} | {ci} |")
        else:
            lines.append(f"| {r['attack']} | {r['norm']} | {r['eps']:g} | {_cell(r['steps'])} | "
                         f"{_cell(r['step_size'], '.4g')} | {_cell(r['restarts'])} | {100 * r['accuracy']:.2f} | "
                         f"{ci} |")
    return "\n".join(lines)


# --- The sanity panel --------------------------------------------------------------------------------------

SANITY_STEPS = (10, 40, 100)  # the ladder of PGD iterations (Carlini et al. 2019, section 5)
SANITY_RESTARTS = 5  # against 1, on the shortest PGD of the ladder
SANITY_LARGE_EPS = 0.5  # L-inf: the ball of every [0, 1] image holds the all-0.5 image
SANITY_P = 0.05  # a rise in accuracy is a warning when a one-sided sign test finds it at this level

_TRY = ("try more restarts (--restarts 10), a stronger attack (APGD or AutoAttack, which adapt their step size) "
        "and a gradient-free one such as Square; if those find far lower accuracy, report theirs")


def rise_p_value(weaker: Tensor, stronger: Tensor) -> float:
    """How likely chance alone makes ``stronger`` count as many more examples robust as it does.

    The exact one-sided sign test on the discordant examples (McNemar's test, exact form): an
    attack that is in truth at least as strong leaves an example correct that the other fooled
    (``gained``) no more often than the other way round (``lost``); the p-value is
    ``P(X >= gained)`` for ``X ~ Binomial(gained + lost, 1/2)``.

    Args:
        weaker: (N,) bool, examples counted robust under the attack expected to be weaker.
        stronger: (N,) bool, the same examples under the attack expected to be stronger.

    Returns:
        The p-value in (0, 1]; 1 when no example is gained.

    """
    gained, lost = int((stronger & ~weaker).sum()), int((weaker & ~stronger).sum())
    n = gained + lost
    return sum(math.comb(n, k) for k in range(gained, n + 1)) / 2**n


def sanity_panel(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    eps: float,
    norm: str = "linf",
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> list[dict]:
    """The gradient-masking checks a reviewer runs, at ``eps`` in ``norm`` (the headline setting).

    Athalye, Carlini and Wagner 2018 (arXiv:1802.00420, section 3.1: one-step attacks beating
    iterative ones, unbounded attacks not reaching 100% success) and Carlini et al. 2019
    (arXiv:1902.06705, section 5: more iterations and restarts must not lower attack success; a
    large enough budget must reach it). The checks, on the same examples, PGD with Madry's step
    size 2.5 * eps / steps:

    * ``steps``: PGD-10, -40, -100 in ``norm``: accuracy must not rise with the steps;
    * ``restarts``: PGD-10 with 1 and with 5 restarts: must not rise either;
    * ``large eps``: PGD-40 at L-inf eps 0.5 must reach 0% (always L-inf: that radius reaches
      the grey image from any [0, 1] image);
    * ``one step``: FGSM (L-inf; one L2 step of ``eps`` from a random start for L2) must not
      leave less accuracy than PGD-40.

    A rise fails its check only if it is beyond the noise of the random starts: a one-sided sign
    test on the examples one setting fools and the other does not (:func:`rise_p_value`,
    p < 0.05). The large-eps check asks for exactly 0%.

    Args:
        model: maps (B, C, H, W) images in [0, 1] to logits, in eval mode.
        batches: (images, labels) batches, given the same each time they are read.
        eps: the radius of the checks in ``norm``, pixel units.
        norm: the threat model.
        device: where the batches go.
        progress: as :func:`robust_accuracy`'s.

    Returns:
        One dict per check: ``check``, ``setting`` (in words), ``compared`` (the settings'
        labels), ``accuracies``, ``correct``, ``total``, ``p_value`` (of the rise; None for the
        large-eps check), ``passed`` and ``warning`` (None when passed).

    Raises:
        ValueError, UserError: as :func:`robust_accuracy` for ``eps`` and ``norm``.

    """
    _check_settings(["pgd"], [eps], norm, AttackSettings())
    ladder = [_Setting("pgd", norm, eps, AttackSettings(steps=s)) for s in SANITY_STEPS]
    restarted = _Setting("pgd", norm, eps, AttackSettings(steps=SANITY_STEPS[0], restarts=SANITY_RESTARTS))
    large = _Setting("pgd", "linf", max(SANITY_LARGE_EPS, eps if norm == "linf" else 0), AttackSettings(steps=40))
    if norm == "linf":
        one_step, one_name = _Setting("fgsm", "linf", eps), "FGSM"
    else:  # one L2 step of length eps, the L2 counterpart of FGSM (from a random start: pgd's)
        one_step, one_name = _Setting("pgd", norm, eps, AttackSettings(steps=1, step_size=eps or 1.0)), "one L2 step"
    forty = ladder[SANITY_STEPS.index(40)]
    chosen = list(dict.fromkeys([*ladder, restarted, large, one_step]))  # eps >= 0.5: large is PGD-40 itself
    rows, hits = _evaluate(model, batches, chosen, device=device, progress=progress, title="sanity panel")
    row, hit = dict(zip(chosen, rows[1:])), dict(zip(chosen, hits[1:]))
    total = rows[0]["total"]
    where = f"{norm} eps {eps:g}"

    def check(name: str, setting: str, compared: Sequence[_Setting], p: float | None, passed: bool,
              warning: str) -> dict:
        return {"check": name, "setting": setting, "compared": [s.label for s in compared],
                "accuracies": [row[s]["accuracy"] for s in compared], "correct": [row[s]["correct"] for s in compared],
                "total": total, "p_value": p, "passed": passed, "warning": None if passed else warning}

    def rise(weaker: _Setting, stronger: _Setting, name_weaker: str, name_stronger: str) -> str:
        gained = int((hit[stronger] & ~hit[weaker]).sum())
        lost = int((hit[weaker] & ~hit[stronger]).sum())
        p = rise_p_value(hit[weaker], hit[stronger])
        return (f"{name_stronger} leaves {100 * row[stronger]['accuracy']:.1f}% against "
                f"{100 * row[weaker]['accuracy']:.1f}% for {name_weaker} ({gained} examples {name_weaker} fooled are "
                f"correct under {name_stronger}, {lost} the other way; sign test p = {p:.2g})")

    checks = []
    pairs = [(a, b) for i, a in enumerate(ladder) for b in ladder[i + 1:]]
    p_steps = {pair: rise_p_value(hit[pair[0]], hit[pair[1]]) for pair in pairs}
    fewer, more = min(p_steps, key=p_steps.get)
    checks.append(check(
        "more steps do not raise accuracy", f"PGD-{' / '.join(map(str, SANITY_STEPS))} at {where}", ladder,
        p_steps[fewer, more], p_steps[fewer, more] >= SANITY_P,
        f"{rise(fewer, more, f'PGD-{fewer.settings.steps}', f'PGD-{more.settings.steps}')}. An attack that gets "
        "worse with more iterations is not converging; the likely cause is gradient masking (noisy or shattered "
        f"gradients, Athalye et al. 2018) or a step size too large; {_TRY}"))
    p_restarts = rise_p_value(hit[ladder[0]], hit[restarted])
    checks.append(check(
        "more restarts do not raise accuracy", f"PGD-{SANITY_STEPS[0]} x 1 / {SANITY_RESTARTS} restarts at {where}",
        [ladder[0], restarted], p_restarts, p_restarts >= SANITY_P,
        f"{rise(ladder[0], restarted, '1 restart', f'{SANITY_RESTARTS} restarts')}. Restarts keep the worst case per "
        f"example, so this points at randomness in the model's outputs or gradients (gradient masking); {_TRY}"))
    compared = [forty, large] if norm == "linf" and large != forty else [large]
    checks.append(check(
        f"accuracy reaches 0% at L-inf eps {large.eps:g}",
        f"PGD-40 at linf eps {' / '.join(f'{s.eps:g}' for s in compared)}", compared, None, row[large]["correct"] == 0,
        f"PGD-40 at L-inf eps {large.eps:g} leaves {_percent(row[large]['correct'], total)}, not 0%: at that radius "
        "any [0, 1] image can be turned into another class, so the attack cannot follow the gradient; the likely "
        "cause is gradient masking (zero or vanishing gradients: quantised or thresholded inputs, saturated outputs, "
        f"a non-differentiable layer); {_TRY}"))
    p_one = rise_p_value(hit[one_step], hit[forty])
    checks.append(check(
        "iterative at least as strong as one step", f"{one_name} / PGD-40 at {where}", [one_step, forty], p_one,
        p_one >= SANITY_P,
        f"{rise(one_step, forty, one_name, 'PGD-40')}. An iterative attack only loses to a single step when the "
        f"gradient misleads it near the input, a sign of gradient masking; {_TRY}"))
    return checks


def sanity_markdown(checks: Sequence[dict]) -> str:
    """The panel as a markdown table (accuracies in percent), then one warning line per failed check."""
    lines = ["| check | setting | accuracy (%) | result |", "|---|---|---|---|"]
    for c in checks:
        accuracies = " / ".join(f"{100 * a:.1f}" for a in c["accuracies"])
        lines.append(f"| {c['check']} | {c['setting']} | {accuracies} | "
                     f"{'PASS' if c['passed'] else 'WARN'} |")
    warnings = [f"WARNING ({c['check']}): {c['warning']}" for c in checks if not c["passed"]]
    return "\n".join(lines + ([""] + warnings if warnings else []))


# --- The command -------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args, overrides = build_parser().parse_known_args(argv)
    settings = AttackSettings(steps=args.steps, step_size=args.step_size, restarts=args.restarts)
    _check_settings(args.attack, args.eps, args.norm, settings)  # before the model loads
    plot = _plot_path(args)
    if plot is not None:
        from research.attack_plot import require_matplotlib

        require_matplotlib()  # now, not after the attacks have run
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    task, datamodule = load(args.config, args.ckpt_path, overrides, device=device)
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
        from research.attack_plot import plot_robust_accuracy

        plot_robust_accuracy(rows, plot, title=header)
        print(f"\nplot: {plot}")
    if args.wandb:
        from research.attack_plot import log_to_wandb

        where = log_to_wandb(report, image=plot, name=f"attack-{Path(args.ckpt_path).parent.name}", title=header)
        print(f"logged to wandb: {where}")
    return rows


def _plot_path(args: argparse.Namespace) -> Path | None:
    """``--plot PATH`` as given; a bare ``--plot`` beside ``--json`` (same name, .png), else in the current folder."""
    if args.plot is not _DEFAULT_PLOT:
        return args.plot
    return args.json.with_suffix(".png") if args.json is not None else _DEFAULT_PLOT


if __name__ == "__main__":
    run_command(main)

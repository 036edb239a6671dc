"""Clean and robust accuracy of a classifier over the same examples, per attack and eps, with 95% intervals.

An example counts as robust when the model classifies it correctly both clean and under the
attack (an attacker may always submit the clean image, which lies in every ball), as AutoAttack
counts (Croce and Hein 2020, arXiv:2003.01690); so robust accuracy never exceeds clean accuracy. An
attack's figure is an upper bound on the true robust accuracy: a stronger attack can only lower it.
Attacks are named in :data:`research.attacks.registry.ATTACKS`. Intervals: Wilson 1927.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from research.attacks import registry
from research.attacks.progress import AttackProgress
from research.attacks.registry import AttackSettings


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
class Setting:
    """One attack at one eps: a row of the table."""

    attack: str
    norm: str
    eps: float
    settings: AttackSettings = field(default_factory=AttackSettings)

    def row(self) -> dict[str, Any]:
        return {"attack": self.attack, "norm": self.norm, "eps": self.eps,
                **registry.ATTACKS[self.attack].describe(self.eps, self.norm, self.settings)}

    @property
    def label(self) -> str:
        row = self.row()
        label = f"{self.attack} {self.norm} eps {self.eps:g}"
        if self.attack != "fgsm" and row["steps"] is not None:
            label += f", {row['steps']} steps"
        if row["restarts"] is not None and row["restarts"] > 1:
            label += f" x {row['restarts']} restarts"
        return label


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
        attacks: names in :data:`research.attacks.registry.ATTACKS` (``"fgsm"`` is L-inf by definition, ``"pgd"``, ...).
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
    registry.check_settings(attacks, eps, norm, settings)
    chosen = [Setting(name, norm, e, settings) for name in attacks for e in eps]
    return evaluate_settings(model, batches, chosen, device=device, progress=progress)[0]


def evaluate_settings(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    chosen: Sequence[Setting],
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
    with AttackProgress([s.label for s in chosen], [registry.ATTACKS[s.attack].cost(s.settings) for s in chosen],
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
            run, robust = registry.ATTACKS[setting.attack].run, []
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

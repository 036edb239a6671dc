"""The picture and the wandb record of ``python -m research attack``: robust accuracy against eps.

One line per attack, clean accuracy at eps 0 (where every attack starts, since the clean image
lies in every ball) and as a dashed level, each point with its 95% Wilson interval as an error bar
and a band (:func:`research.attacks.evaluation.wilson_interval`; the examples are shared, so the intervals of
two attacks are not independent, but each is right for its own figure).

matplotlib is optional (``pip install matplotlib``, or ``pip install 'research[plots]'``), as for
the reproduced tables' plots (research/reproduce/plots.py).
"""

from __future__ import annotations

import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from research.errors import UserError

MISSING = "matplotlib is not installed: pip install matplotlib (or pip install 'research[plots]') to draw --plot"


def require_matplotlib() -> None:
    """Raise, before any work, if matplotlib cannot be imported.

    Raises:
        UserError: matplotlib is not installed (the message says how to install it).

    """
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise UserError(MISSING) from err


def _curves(rows: Sequence[dict]) -> dict[str, list[dict]]:
    """Attack rows grouped by what was run (attack, norm, steps, restarts), each sorted by eps."""
    curves: dict[str, list[dict]] = {}
    for r in rows:
        if r["attack"] == "none":
            continue
        details = [r["norm"]]
        if r["attack"] != "fgsm" and r.get("steps") is not None:
            details.append(f"{r['steps']} steps")
        if r.get("restarts") is not None and r["restarts"] > 1:
            details.append(f"{r['restarts']} restarts")
        curves.setdefault(f"{r['attack']} ({', '.join(details)})", []).append(r)
    return {label: sorted(points, key=lambda r: r["eps"]) for label, points in curves.items()}


def plot_robust_accuracy(rows: Sequence[dict], path: Path, *, title: str = "") -> Path:
    """Draw robust accuracy (%) against eps per attack, with 95% intervals, to the PNG ``path``.

    Args:
        rows: :func:`research.attacks.evaluation.robust_accuracy`'s rows (clean first, with ``ci_low``, ``ci_high``).
        path: where the PNG goes; its folder is created.
        title: printed above the axes (wrapped).

    Returns:
        ``path``.

    Raises:
        UserError: matplotlib is not installed.

    """
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    clean = next(r for r in rows if r["attack"] == "none")
    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.axhline(100 * clean["accuracy"], color="grey", linestyle="--", linewidth=1,
                 label=f"clean {100 * clean['accuracy']:.1f}% (n = {clean['total']})")
    axes.errorbar([0], [100 * clean["accuracy"]], yerr=_yerr([clean]), fmt="o", color="black", capsize=3)
    norms = set()
    for label, points in _curves(rows).items():
        norms.add(points[0]["norm"])
        if points[0]["eps"] > 0:  # at eps 0 every attack leaves the clean accuracy
            points = [clean, *points]
        eps = [0.0 if p is clean else p["eps"] for p in points]
        acc = [100 * p["accuracy"] for p in points]
        line = axes.errorbar(eps, acc, yerr=_yerr(points), marker="o", capsize=3, label=label)
        axes.fill_between(eps, [100 * p["ci_low"] for p in points], [100 * p["ci_high"] for p in points],
                          color=line[0].get_color(), alpha=0.15, linewidth=0)
    kinds = " / ".join(sorted({"linf": "L-inf", "l2": "L2"}.get(n, str(n)) for n in norms))
    axes.set_xlabel(f"eps ({kinds}, pixel units of [0, 1] images)" if kinds else "eps")
    axes.set_ylabel("accuracy (%), 95% Wilson interval")
    axes.set_ylim(-2, 102)
    axes.grid(alpha=0.3)
    # Each attack finds a subset of the adversarial examples there are: its figure bounds the robust accuracy above.
    axes.legend(fontsize=8, title="accuracy under (an upper bound on robust accuracy)", title_fontsize=8)
    if title:
        axes.set_title("\n".join(textwrap.wrap(title, 80)), fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _yerr(points: Sequence[dict]) -> list[list[float]]:
    """Distances from each accuracy to its interval's ends, in percent, as matplotlib's errorbar takes them."""
    return [[100 * max(0.0, p["accuracy"] - p["ci_low"]) for p in points],
            [100 * max(0.0, p["ci_high"] - p["accuracy"]) for p in points]]


def log_to_wandb(report: dict[str, Any], *, image: Path | None, name: str, title: str = "") -> str:
    """Log the table, the sanity panel and the picture to a new wandb run; returns where they went.

    The run is online only when you are logged in (or WANDB_MODE says so), else offline under
    ``logs/wandb`` (``wandb sync`` uploads it later), as the runs of ``python -m research fit``. Without ``image``
    the picture is drawn to a temporary file when matplotlib is installed.

    Args:
        report: what ``python -m research attack`` writes to ``--json``: ``rows`` and ``sanity`` (or None).
        image: the PNG drawn by :func:`plot_robust_accuracy`, or None.
        name: the run's name.
        title: the picture's title when it is drawn here.

    """
    import wandb

    from research.loggers import LOG_ROOT, wandb_mode

    rows, checks = report["rows"], report.get("sanity")
    mode = wandb_mode()
    LOG_ROOT.mkdir(parents=True, exist_ok=True)  # wandb looks for the git repository from its folder
    run = wandb.init(project="research", name=name, dir=str(LOG_ROOT), mode=mode, job_type="attack",
                     config={key: report.get(key) for key in ("config", "ckpt_path", "split", "seed")})
    columns = ["attack", "norm", "eps", "steps", "step_size", "restarts", "correct", "total", "accuracy", "ci_low",
               "ci_high"]
    logged: dict[str, Any] = {"robust_accuracy": wandb.Table(columns=columns,
                                                             data=[[r.get(c) for c in columns] for r in rows])}
    if checks:
        logged["sanity_panel"] = wandb.Table(
            columns=["check", "setting", "accuracies", "p_value", "result", "warning"],
            data=[[c["check"], c["setting"], " / ".join(f"{a:.4f}" for a in c["accuracies"]), c["p_value"],
                   "PASS" if c["passed"] else "WARN", c["warning"] or ""] for c in checks])
    with tempfile.TemporaryDirectory() as folder:
        if image is None:
            try:
                image = plot_robust_accuracy(rows, Path(folder) / "robust_accuracy.png", title=title)
            except UserError:
                pass  # no matplotlib: the tables alone
        if image is not None:
            logged["robust_accuracy_plot"] = wandb.Image(str(image))
        run.log(logged)
    run.summary.update({f"accuracy/{_key(r)}": r["accuracy"] for r in rows})
    if mode == "disabled":
        where = "not logged (WANDB_MODE=disabled)"
    elif mode == "online":
        where = run.url or "online"
    else:
        where = f"offline run in {Path(run.dir).parent} (wandb sync uploads it)"
    run.finish()
    return where


def _key(row: dict) -> str:
    if row["attack"] == "none":
        return "clean"
    return f"{row['attack']}_{row['norm']}_eps{row['eps']:g}"

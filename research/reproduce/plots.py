"""Pictures of the tables, for those where one says more than the numbers (PNG, beside the JSON).

matplotlib is optional (``pip install 'research[plots]'``): without it the runner still prints and
saves every table, and says why no picture was written.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from research.reproduce.table import Result, Table

MISSING = "matplotlib is not installed: pip install 'research[plots]' to get the tables' PNG plots"


def save_plot(table: Table, results: list[Result], path: Path) -> str:
    """Draw ``table.plot`` of ``results`` to ``path``; returns what happened, in a line for the user."""
    if table.plot is None:
        return ""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        return f"no plot: {MISSING}"
    figure = table.plot(table, results)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return f"plot: {path}"


def _axes(table: Table, height: float) -> tuple[Figure, object]:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, height))
    figure.suptitle("\n".join(textwrap.wrap(table.title, 90)), fontsize=9)
    return figure, axes


def _ours(result: Result) -> float:
    return math.nan if result.ours is None else result.ours


def paper_vs_ours(table: Table, results: list[Result], *, labels: tuple[str, ...] | None = None) -> Figure:
    """One line per row: the paper's number (± its tolerance) and ours (± spread over seeds) as points.

    Points, not bars, so the axis may zoom in where the numbers are close (97% against 99%). Rows
    without a paper number are left out, and so are rows not in ``labels`` when it is given (one unit
    per picture); a row that failed or has not run says so where its point would be.
    """
    import numpy as np

    rows = [r for r in results if r.paper is not None and (labels is None or r.label in labels)]
    figure, axes = _axes(table, 1.6 + 0.45 * len(rows))
    y = np.arange(len(rows))
    axes.errorbar([r.paper for r in rows], y - 0.12, xerr=[r.tolerance for r in rows], fmt="D", color="0.55",
                  capsize=3, label="paper (± tolerance)")
    ours = "ours (± std over seeds)" if any(r.spread for r in rows) else "ours"
    axes.errorbar([_ours(r) for r in rows], y + 0.12, xerr=[r.spread or 0.0 for r in rows], fmt="o",
                  color="tab:blue", capsize=3, label=ours)
    for i, r in enumerate(rows):
        if r.ours is None:
            status = "not run" if r.error and r.error.startswith("not run") else "failed"
            axes.annotate(f"ours: {status}", (r.paper, i + 0.12), xytext=(-8, 0), textcoords="offset points",
                          ha="right", va="center", fontsize=8, color="tab:red")
    axes.set_yticks(y, [r.label for r in rows], fontsize=8)
    axes.set_ylim(len(rows) - 0.5, -0.5)  # the table's order, top to bottom
    axes.grid(axis="x", alpha=0.3)
    axes.set_xlabel(table.unit)
    figure.legend(loc="lower center", ncol=2, fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.07 if len(rows) > 3 else 0.12, 1, 1))
    return figure


def curve(table: Table, results: list[Result], *, x: dict[str, tuple[str, float]], xlabel: str, ylabel: str,
          paper_x: float | None = None) -> Figure:
    """Ours against a setting, one curve a series, the paper's best setting marked.

    ``x`` maps a row's label to (its series, e.g. "linear probe", and its setting, e.g. a mask ratio).
    """
    figure, axes = _axes(table, 4.0)
    for series in dict.fromkeys(name for name, _ in x.values()):
        points = sorted((x[r.label][1], r.ours) for r in results
                        if r.label in x and x[r.label][0] == series and r.ours is not None)
        if points:
            axes.plot(*zip(*points), marker="o", label=f"ours: {series}")
    if paper_x is not None:
        axes.axvline(paper_x, color="0.5", linestyle="--", label=f"paper's best ({paper_x:g})")
    axes.set_xticks(sorted({setting for _, setting in x.values()}))
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def two_panels(table: Table, results: list[Result], *, rows: dict[str, tuple[str, float]], paper_label: str,
               ours_label: str) -> Figure:
    """The paper's numbers and ours side by side, one panel each, for variants measured on different data.

    ``rows`` maps a result's label to (the variant's short name, the paper's number): the paper's panel
    shows those numbers, ours the results (± spread over seeds), each on its own axis (ImageNet top-1
    against Fashion-MNIST accuracy do not share a scale; their order is what compares).
    """
    import matplotlib.pyplot as plt
    import numpy as np

    found = {r.label: r for r in results}
    names = [name for name, _ in rows.values()]
    y = np.arange(len(rows))
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 1.6 + 0.4 * len(rows)), sharey=True)
    figure.suptitle("\n".join(textwrap.wrap(table.title, 100)), fontsize=9)
    left.plot([paper for _, paper in rows.values()], y, "D", color="0.55")
    ours = [found[label] if label in found else None for label in rows]
    right.errorbar([math.nan if r is None else _ours(r) for r in ours], y,
                   xerr=[0.0 if r is None or r.spread is None else r.spread for r in ours], fmt="o", color="tab:blue",
                   capsize=3)
    for axes, label in ((left, paper_label), (right, ours_label)):
        axes.set_xlabel(label, fontsize=8)
        axes.grid(axis="x", alpha=0.3)
    left.set_yticks(y, names, fontsize=8)
    left.set_ylim(len(rows) - 0.5, -0.5)
    figure.tight_layout()
    return figure

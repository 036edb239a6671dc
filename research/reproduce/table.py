"""A paper table as data: the paper's rows, a tolerance each, and how ours is measured.

The runner (``python -m research reproduce``) measures every row, caches what it measured with the
machine it was measured on (:func:`machine`), and prints paper | ours | difference | within
tolerance. A row whose measurement raises is reported as failed with its error, never dropped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class Measured(NamedTuple):
    """A measurement over several runs (seeds): their mean and standard deviation (None for one run)."""

    value: float
    spread: float | None


NOT_RUN = "not run yet"
COMMAND = "python -m research reproduce"
QUICK_NOTE = " (quick settings: one seed and a few steps, so no spread; not comparable to the paper)"


@dataclass(frozen=True)
class Row:
    """One number from a paper and how to measure ours.

    Args:
        label: what the number is, e.g. "ResNet-50 FLOPs".
        paper: the published value, in ``Table.unit``; None for a figure of ours that the paper has no
            number for (measured and printed beside the rows that compare, never judged).
        tolerance: largest |ours - paper| that still counts as reproduced, in the same unit
            (papers round: 1.8 G means 1.75-1.85 G).
        source: where the number is printed, e.g. "He et al. 2016, Table 1".
        measure: returns ours, a float or a :class:`Measured` mean ± spread; gets ``quick`` (tiny
            settings, for the test suite).
        key: everything the measurement depends on, for the cache (a config and its overrides).
        model: the registered model the row measures, if any.
        cache: keep the measurement in the cache (False: measured on every run, for cheap exact counts in a
            table whose other rows train).
    """

    label: str
    paper: float | None
    tolerance: float
    source: str
    measure: Callable[[bool], float | Measured]
    key: str = ""
    model: str | None = None
    cache: bool = True


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    unit: str
    rows: list[Row]
    notes: str = ""
    cache: bool = True  # measurements that train something are cached; cheap counts need not be
    digits: int = 2
    # Minutes a full run took, one torch thread, for a user deciding whether to start one; the machine it ran on is
    # recorded with the cached results (:func:`machine`) and printed in the report's header.
    minutes: float | None = None
    # Draws the results where a picture says more than the table (see research.reproduce.plots).
    plot: Callable[[Table, list[Result]], Figure] | None = None


@dataclass
class Result:
    label: str
    paper: float | None
    tolerance: float
    source: str
    ours: float | None = None
    spread: float | None = None
    error: str | None = None
    seconds: float = 0.0  # how long the measurement took (a cached one: when it was measured, 0 if not recorded)
    cached: bool = False
    machine: dict[str, Any] | None = None  # where it was measured (:func:`machine`); None if not recorded
    extra: dict = field(default_factory=dict)

    @property
    def not_run(self) -> bool:
        """Never measured (``report`` reads only the cache): neither within tolerance nor outside it."""
        return self.error is not None and self.error.startswith(NOT_RUN)

    @property
    def ok(self) -> bool:
        if self.ours is None or not math.isfinite(self.ours):
            return False
        return self.paper is None or abs(self.ours - self.paper) <= self.tolerance


def machine() -> dict[str, Any]:
    """Where a measurement runs: CPU model, cores, torch's threads and version, and the GPU if torch sees one.

    Kept with every cached result and in the JSON output, so a time or a number says where it came from.
    """
    import torch

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__.split("+")[0],
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def _cpu_model() -> str:
    try:  # Linux names the model; platform.processor() is often empty there
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(record: dict[str, Any] | None) -> str:
    """One line for a :func:`machine` record, e.g. "AMD EPYC 7B13, 2 cores, 1 torch thread, torch 2.15.0"."""
    if not record:
        return "machine not recorded"
    threads = record.get("torch_threads")
    parts = [record.get("cpu") or "unknown CPU", f"{record.get('cores')} cores",
             f"{threads} torch thread{'' if threads == 1 else 's'}", f"torch {record.get('torch')}"]
    return ", ".join(parts + ([f"GPU {record['gpu']}"] if record.get("gpu") else []))


def _cache_path(out: Path, table: Table, row: Row, quick: bool) -> Path:
    key = json.dumps([table.name, row.label, row.key, quick])
    return out / "cache" / f"{table.name}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.json"


def run_table(table: Table, *, quick: bool = False, out: Path | None = None, cached_only: bool = False) -> list[Result]:
    """Measure every row (or read it from ``out``'s cache); failures become failed results.

    With ``cached_only``, a row of a cached table that has no cached result is reported as not run
    instead of measured (nothing trains).
    """
    results = []
    here = None  # this machine's record, read once when a row is measured
    for row in table.rows:
        result = Result(row.label, row.paper, row.tolerance, row.source)
        cache = _cache_path(out, table, row, quick) if out is not None and table.cache and row.cache else None
        if cache is not None and cache.exists():
            saved = json.loads(cache.read_text())
            result.ours, result.spread, result.cached = saved["ours"], saved.get("spread"), True
            result.seconds, result.machine = saved.get("seconds", 0.0), saved.get("machine")
        elif cached_only and cache is not None:
            result.error = f"{NOT_RUN}: {COMMAND} {table.name}"
        else:
            here = here or machine()
            result.machine = here
            start = time.perf_counter()
            try:
                measured = row.measure(quick)
                if isinstance(measured, Measured):
                    result.ours = float(measured.value)
                    result.spread = None if measured.spread is None else float(measured.spread)
                else:
                    result.ours = float(measured)
            except Exception as err:  # a failed run is reported in the table, never dropped
                result.error = f"{type(err).__name__}: {err}".splitlines()[0][:200]
                result.extra["traceback"] = traceback.format_exc()
            result.seconds = time.perf_counter() - start
            if cache is not None and result.error is None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps({"ours": result.ours, "spread": result.spread, "seconds": result.seconds,
                                             "machine": result.machine}))
        results.append(result)
    return results


def to_markdown(table: Table, results: list[Result], *, quick: bool = False) -> str:
    d = table.digits
    lines = [f"### {table.title}" + (QUICK_NOTE if quick else ""), ""]
    lines += [
        f"| | paper ({table.unit}) | ours | difference | within ±tolerance | source |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        paper = "—" if r.paper is None else f"{r.paper:.{d}f}"
        if r.not_run:
            lines.append(f"| {r.label} | {paper} | {r.error} | | not run | {r.source} |")
            continue
        if r.error is not None:
            lines.append(f"| {r.label} | {paper} | failed: {r.error} | | no | {r.source} |")
            continue
        ours = f"{r.ours:.{d}f}" + (f" ± {r.spread:.{d}f}" if r.spread is not None else "")
        if r.paper is None:  # ours only: nothing to compare
            lines.append(f"| {r.label} | — | {ours} | | | {r.source} |")
            continue
        verdict = "yes" if r.ok else "no"
        lines.append(
            f"| {r.label} | {paper} | {ours} | {r.ours - r.paper:+.{d}f} | "
            f"{verdict} (±{r.tolerance:g}) | {r.source} |"
        )
    if table.notes:
        lines += ["", table.notes]
    if table.minutes is not None:
        lines += ["", f"A full run took about {table.minutes:g} min with one torch thread."]
    return "\n".join(lines)


def to_json(table: Table, results: list[Result], *, quick: bool) -> dict:
    return {
        "table": table.name,
        "title": table.title,
        "unit": table.unit,
        "quick": quick,
        "rows": [
            {
                "label": r.label,
                "paper": r.paper,
                "ours": r.ours,
                "spread": r.spread,
                "tolerance": r.tolerance,
                "within": r.ok if r.paper is not None and not r.not_run else None,
                "source": r.source,
                "error": r.error,
                "seconds": round(r.seconds, 3),
                "cached": r.cached,
                "machine": r.machine,
            }
            for r in results
        ],
    }

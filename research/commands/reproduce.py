"""``python -m research reproduce``: list the tables, or print one beside the paper's numbers.

    python -m research reproduce list
    python -m research reproduce complexity [--quick] [--out reproduce_results]
    python -m research reproduce report [--out reproduce_results] [--figures DIR]   # from the cache, trains nothing

Results go to ``OUT/<table>.json``, and where a picture says more, ``OUT/<table>.png`` (with the optional
matplotlib: ``pip install 'research[plots]'``); ``report --figures DIR`` draws them into DIR and links them
below each table. Measurements that train are cached under ``OUT/cache``, with the machine they ran on, so
a second call prints without retraining (``--fresh`` measures again). Exit status 1 if any row failed to
run. The tables themselves, and what is saved, are :mod:`research.reproduce`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from research.reproduce import TABLES, to_markdown
from research.reproduce.report import measure, report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m research reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("table", help=f"'list', 'report' or one of: {', '.join(TABLES)}")
    parser.add_argument("--quick", action="store_true", help="tiny settings (seconds); numbers not comparable")
    parser.add_argument("--out", type=Path, default=Path("reproduce_results"), help="where JSON and caches go")
    parser.add_argument("--fresh", action="store_true", help="ignore cached measurements")
    parser.add_argument("--figures", type=Path, help="report: draw the tables' plots into this folder and link them")
    args = parser.parse_args(argv)

    if args.table == "list":
        for table in TABLES.values():
            took = f", full run about {table.minutes:g} min" if table.minutes is not None else ""
            print(f"{table.name:14s} {table.title} ({len(table.rows)} rows{took})")
        return 0
    if args.table == "report":
        print(report(TABLES.values(), out=args.out, figures=args.figures))
        return 0
    if args.figures is not None:
        parser.error(f"--figures goes with 'report'; {args.table} draws its plot to {args.out}/<table>.png")
    if args.table not in TABLES:
        parser.error(f"unknown table {args.table!r}; choose one of: {', '.join(TABLES)} (or 'list')")
    table = TABLES[args.table]
    results, said = measure(table, out=args.out, quick=args.quick, fresh=args.fresh)
    print(to_markdown(table, results, quick=args.quick))
    if said:
        print(said, file=sys.stderr)
    return 1 if any(r.error for r in results) else 0

"""``python -m research.reproduce``: list the tables, or print one beside the paper's numbers.

    python -m research.reproduce list
    python -m research.reproduce complexity [--quick] [--out reproduce_results]

Results go to ``OUT/<table>.json``; measurements that train are cached under ``OUT/cache`` so a second
call prints without retraining (``--fresh`` measures again). Exit status 1 if any row failed to run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from research.reproduce import TABLES, run_table, to_markdown
from research.reproduce.table import to_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m research.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("table", help=f"'list' or one of: {', '.join(TABLES)}")
    parser.add_argument("--quick", action="store_true", help="tiny settings (seconds); numbers not comparable")
    parser.add_argument("--out", type=Path, default=Path("reproduce_results"), help="where JSON and caches go")
    parser.add_argument("--fresh", action="store_true", help="ignore cached measurements")
    args = parser.parse_args(argv)

    if args.table == "list":
        for table in TABLES.values():
            print(f"{table.name:14s} {table.title} ({len(table.rows)} rows)")
        return 0
    if args.table not in TABLES:
        parser.error(f"unknown table {args.table!r}; choose one of: {', '.join(TABLES)} (or 'list')")
    table = TABLES[args.table]
    if args.fresh:
        for path in (args.out / "cache").glob(f"{table.name}-*.json"):
            path.unlink()
    results = run_table(table, quick=args.quick, out=args.out)
    print(to_markdown(table, results, quick=args.quick))
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"{table.name}{'-quick' if args.quick else ''}.json"
    (args.out / name).write_text(json.dumps(to_json(table, results, quick=args.quick), indent=2))
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

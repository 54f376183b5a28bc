"""Print a sweep's metric as a README table: one row per value of one key, one column per value of
another, each cell the median (p5-p95) over the points sharing them (the samples of
`engramsim sweep --samples`). Used by the scripts/projection*.sh scripts.

    python scripts/sweep_table.py SWEEP.csv --rows KEY --cols KEY[,KEY...] [--metric overhead_pct] [--title TEXT] [--sizes]

Several --cols keys make one column per combination of their values ("per-node, 2").

`--sizes` labels rows of model.engram.rows_per_head as the Engram-at-block-1 scenario's table
(24 heads of 256-value fp8 rows, 264 B each): parameters per layer and GiB.
"""

from __future__ import annotations

import argparse
import csv
import sys

import numpy as np


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    p5, p50, p95 = (round(v, 2) + 0.0 for v in np.percentile(values, [5, 50, 95]))  # + 0.0: no "-0.00"
    return f"{p50:.2f} ({p5:.2f}-{p95:.2f})"


def size_label(rows_per_head: str) -> str:
    rows = int(rows_per_head)
    return f"{rows:,} ({rows * 24 * 256 / 1e9:,.0f} B, {rows * 24 * 264 / 2**30:,.0f} GiB)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    parser.add_argument("--rows", required=True)
    parser.add_argument("--cols", required=True)
    parser.add_argument("--metric", default="overhead_pct")
    parser.add_argument("--title", default="")
    parser.add_argument("--sizes", action="store_true")
    args = parser.parse_args()
    with open(args.csv, newline="") as f:
        points = list(csv.DictReader(f))
    failed = [p for p in points if p["status"] != "ok"]
    if failed:
        sys.exit(f"{len(failed)} points failed, e.g. {failed[0]['error']}")
    col_keys = args.cols.split(",")

    def column(point: dict[str, str]) -> str:
        return ", ".join(point[k] for k in col_keys)
    rows = list(dict.fromkeys(p[args.rows] for p in points))
    cols = list(dict.fromkeys(column(p) for p in points))
    samples = len(points) // (len(rows) * len(cols))
    print(f"\n{args.title}{': ' if args.title else ''}{args.metric}, median (p5-p95) over {samples} samples\n")
    print(f"| {args.rows} \\ {', '.join(col_keys)} | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for row in rows:
        cells = [cell([float(p[args.metric]) for p in points if p[args.rows] == row and column(p) == col]) for col in cols]
        print(f"| {size_label(row) if args.sizes else row} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

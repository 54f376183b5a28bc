"""`engramsim plot DIR --x KEY --y METRIC [--hue KEY] [--out FILE]`: a metric against a key of the
table `engramsim sweep` (sweep.json + sweep.csv) or `engramsim compare` (compare.json + compare.csv)
wrote in DIR, one line per value of the hue key; points sharing an x and a hue become their median
and a 5th-95th percentile band (engramsim/sweep_plot.py). Only points whose status is ok are drawn.
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engramsim.commands import HELP

BOOKKEEPING = {"point", "id", "index", "name", "status", "error", "reason", "workload_sha256", "schedule_sha256"}
TABLES = (("sweep.json", "sweep.csv", "sweep"), ("compare.json", "compare.csv", "compare"))
DESCRIPTION = """Draw METRIC against KEY from the table of a folder `engramsim sweep` (sweep.csv) or `engramsim compare`
(compare.csv) wrote, one line per value of the --hue key. Points that share an x and a hue (the other
keys of the grid, or repeated samples) are drawn as their median with a band from their 5th to their
95th percentile. The x axis is logarithmic when its values are positive numbers spanning more than two
decades. Only points whose status is ok are drawn."""



def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help=HELP["plot"],
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, metavar="DIR", help="a folder `engramsim sweep` or `engramsim compare` wrote")
    p.add_argument("--x", required=True, metavar="KEY", help="a --grid/--zip (or --vary) key: the x axis")
    p.add_argument("--y", required=True, metavar="METRIC", help="a column of the table: a summary metric (e.g. tpot_ms_p50)")
    p.add_argument("--hue", metavar="KEY[,KEY...]", default=None,
                   help="other keys: one line per value (per combination of values, for several)")
    p.add_argument("--out", type=Path, default=None, metavar="FILE", help="PNG to write (default: DIR/plot-METRIC-vs-KEY[-by-HUE].png)")
    p.add_argument("--quiet", action="store_true", help="print only the path written")
    p.set_defaults(handler=run)


@dataclass(frozen=True)
class Table:
    kind: str  # "sweep" or "compare"
    keys: list[str]
    metrics: list[str]  # columns with a number in at least one ok row
    rows: list[dict[str, str]]  # the ok rows


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value else None  # NaN: no value


def read_table(folder: Path) -> Table:
    """The keys (sweep.json's --grid and --zip, compare.json's --vary) and the ok rows of the
    folder's table; one `InputError` line for a folder holding neither."""
    from engramsim.errors import InputError

    for definition, table, kind in TABLES:
        if (folder / definition).is_file():
            if not (folder / table).is_file():
                raise InputError(folder, f"holds {definition} but no {table} yet (an unfinished {kind}?); run it again to finish it")
            try:
                doc = json.loads((folder / definition).read_text(encoding="utf-8"))
                keys = ([a["key"] for a in (*doc["grid"], *doc["zip"])] if kind == "sweep" else [v["key"] for v in doc["vary"]])
                with open(folder / table, encoding="utf-8", newline="") as fh:
                    rows = list(csv.DictReader(fh))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise InputError(folder / definition, f"cannot read the {kind}'s table ({type(exc).__name__}: {exc})") from None
            ok = [row for row in rows if row.get("status") == "ok"]
            columns = list(rows[0]) if rows else []
            metrics = [c for c in columns if c not in BOOKKEEPING and c not in keys and any(_number(r[c] or "") is not None for r in ok)]
            return Table(kind, keys, metrics, ok)
    raise InputError(folder, "holds no sweep.json + sweep.csv nor compare.json + compare.csv; expected a folder "
                     "`engramsim sweep` or `engramsim compare` wrote")


def _value(text: str) -> Any:
    """A key's value as given, parsed as YAML (so 1e6 and 1000000 are numbers), else the text."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # YAML reads 1e6 as text
        number = _number(value)
        return value if number is None else number
    return value if isinstance(value, int | float) and not isinstance(value, bool) else text


def _ylabel(metric: str) -> str:
    from engramsim.metrics import registered

    known = registered().get(metric)
    return f"{known.label} ({known.unit})" if known is not None and known.unit else (known.label if known else metric)


def run(args: argparse.Namespace) -> int:
    from engramsim.errors import InputError
    from engramsim.files import atomic_path, check_output
    from engramsim.sweep_plot import lines, use_log, write_lines_plot

    table = read_table(args.folder)
    keys = ", ".join(table.keys) or "none"
    hues = args.hue.split(",") if args.hue else []
    for flag, key in (("--x", args.x), *(("--hue", hue) for hue in hues)):
        if key not in table.keys:
            raise InputError(flag, f"{key!r} is not a key of this {table.kind}; its keys: {keys}")
    if args.x in hues:
        raise InputError("--hue", f"holds --x ({args.x}); choose other keys, or leave --hue out")
    if args.y not in table.metrics:
        raise InputError("--y", f"{args.y!r} is not a metric with values in this {table.kind}'s table; "
                         f"its metrics: {', '.join(table.metrics) or 'none (no point ran)'}")
    hue = args.hue
    out = args.out or args.folder / f"plot-{args.y}-vs-{args.x}{f'-by-{hue}' if hue else ''}.png"
    check_output(out)
    points = [(_value(row[args.x]), ", ".join(row[k] for k in hues) if hues else None, y) for row in table.rows
              if (y := _number(row[args.y] or "")) is not None]
    drawn, ticks = lines(points)
    log_x = ticks is None and use_log([x for x, _, _ in points])
    repeated = max((n for line in drawn for n in line.counts), default=0)
    title = f"{args.folder.name}: {args.y} against {args.x}" + (f" by {hue}" if hue else "") + f" ({len(points)} points"
    title += f"; median and p5-p95 of up to {repeated} points per x)" if repeated > 1 else ")"
    with atomic_path(out) as tmp:
        write_lines_plot(tmp, title, args.x + (" (log)" if log_x else ""), _ylabel(args.y), drawn, ticks, log_x, hue)
    print(out if args.quiet else f"wrote {out}" + (" (log x axis)" if log_x else ""))
    return 0

"""`engramsim diff A.json B.json [C.json ...]`: what differs between results files (sim vs real,
one strategy against another), against the first file.

It lists the backend of each file, the scenario and hardware fields that differ, then the metrics
whose printed values differ, each with its change against the reference file A. A change is
relative, (X - A) / A, only where A is large enough for that to mean something: at least ten
units of the metric's last printed digit (a step latency printed to 0.001 ms needs |A| >= 0.01 ms,
a row count |A| >= 10); below that floor, and for metrics that are themselves percentages, the
change is the absolute difference X - A in the metric's unit ("pp" for percentage points), so a
noise-level reference never turns into a giant percentage.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, NamedTuple

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from engramsim.commands import HELP
from engramsim.errors import InputError
from engramsim.metrics import Metric, Value, registered
from engramsim.results import SCHEMA_VERSION

RELATIVE_FLOOR_UNITS = 10  # "ten units" above: the reference prints with at least two significant digits
PROSE = ("description", "source")  # scenario and profile fields of free text
PLAIN = Metric(name="value", unit="", meaning="a results value no registered metric describes", compute=lambda c: None,
               label="value", digits=3)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diff", help=HELP["diff"],
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reference", type=Path, metavar="A.json", help="the reference results file; changes are against it")
    p.add_argument("others", type=Path, nargs="+", metavar="B.json", help="results files to compare with it")
    p.add_argument("--all", action="store_true", help="show every metric, not only those that differ")
    p.set_defaults(handler=run)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"non-standard JSON value {name}")


def load_results(path: Path) -> dict[str, Any]:
    """A results document, or an `InputError` naming the file: unreadable, not JSON (NaN and
    Infinity included: results files never hold them), or without the sections diff reads."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except OSError as exc:
        raise InputError(path, f"cannot read results file ({exc.strerror or exc})") from None
    except (ValueError, UnicodeDecodeError) as exc:  # json.JSONDecodeError is a ValueError
        raise InputError(path, f"not a results JSON file ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("summary"), dict):
        raise InputError(path, "expected an object with a 'summary' object", field="summary")
    for key in ("scenario", "hardware"):
        if not isinstance(doc.get(key, {}), dict):
            raise InputError(path, "expected an object", field=key)
    layers = doc.get("per_layer", [])
    if not isinstance(layers, list) or not all(isinstance(layer, dict) and _number(layer.get("layer")) for layer in layers):
        raise InputError(path, "expected a list of objects with a numeric 'layer'", field="per_layer")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise InputError(path, f"results schema version {doc.get('schema_version')!r}; this engramsim reads version {SCHEMA_VERSION} "
                         "(rerun the scenario to compare)", field="schema_version")
    return doc


class DiffRow(NamedTuple):
    """One value of file B compared with the reference file A; `metric` says how to print it."""

    key: str
    metric: Metric
    a: Value
    b: Value

    @property
    def unit(self) -> str:
        return self.metric.unit

    def shown(self, value: Value) -> str:
        """A value as the table prints it: fixed point at the metric's digits, never "-0.000"."""
        if isinstance(value, float):
            value = round(value, self.metric.digits) + 0.0
        return self.metric.number(value)

    @property
    def differs(self) -> bool:
        """The two values print differently (floating-point noise below the printed digits is no difference)."""
        return self.shown(self.a) != self.shown(self.b)

    @property
    def delta(self) -> float | None:
        return None if self.a is None or self.b is None else self.b - self.a

    @property
    def pct(self) -> float | None:
        """(B - A) / A in percent; None where A is below the floor (module docstring) or the metric is a percentage."""
        if self.delta is None or self.unit == "%" or self.a is None:
            return None
        digits = 0 if isinstance(self.a, int) else self.metric.digits
        return self.delta / self.a * 100 if abs(self.a) >= RELATIVE_FLOOR_UNITS * 10.0**-digits else None

    def change(self) -> str:
        """The change column: "=", a relative change ("%"), or the absolute difference in the metric's
        unit ("pp": percentage points)."""
        if not self.differs:
            return "="
        if self.delta is None:
            return "-"
        if self.pct is not None:
            return f"{self.pct:+,.1f}%"
        return f"{'+' if self.delta >= 0 else '-'}{self.shown(abs(self.delta))}{' pp' if self.unit == '%' else ''}"


def metric_rows(a: dict[str, Any], b: dict[str, Any]) -> list[DiffRow]:
    """Every numeric summary and per-layer value in either file: the registered metrics first, in
    declaration order, then unregistered summary keys, then per-layer keys (printed as the
    registered metric of the same name, where there is one)."""
    metrics = registered()
    flat_a, flat_b = _flatten(a), _flatten(b)
    present = flat_a.keys() | flat_b.keys()
    known = [f"summary.{name}" for name in metrics if f"summary.{name}" in present]
    others = sorted(present - set(known), key=lambda key: (not key.startswith("summary."), key))
    return [DiffRow(key, metrics.get(key.split(".", 1)[1], PLAIN), flat_a.get(key), flat_b.get(key)) for key in known + others]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _flatten(doc: dict[str, Any]) -> dict[str, int | float]:
    out = {f"summary.{k}": v for k, v in doc["summary"].items() if _number(v) and k != "seed"}  # the seed: a scenario field
    for layer in doc.get("per_layer", []):
        out |= {f"layer{layer['layer']}.{k}": v for k, v in layer.items() if k != "layer" and _number(v)}
    return out


def setting_rows(docs: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """The scenario and hardware fields (dotted paths, lists as one value) whose values differ
    between the files, with each file's value ("-" where a file lacks the field). Prose fields
    (`PROSE`) are left out: they restate the settings listed beside them at paragraph length."""
    flat = [_leaves({"scenario": doc.get("scenario", {}), "hardware": doc.get("hardware", {})}) for doc in docs]
    paths = sorted(set().union(*flat))
    return [(path, values) for path in paths if len(set(values := [f.get(path, "-") for f in flat])) > 1]


def _leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out |= _leaves(value, f"{prefix}{key}.")
        elif key not in PROSE:
            out[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return out


def run(args: argparse.Namespace) -> int:
    paths = [args.reference, *args.others]
    docs = [load_results(path) for path in paths]
    names = [chr(ord("A") + i) if i < 26 else str(i + 1) for i in range(len(paths))]  # a column letter per file
    backends = [str(doc.get("backend", "?")) for doc in docs]
    console = Console(highlight=False)
    console.print(Text(f"backends: {' vs '.join(backends)}"))
    files = Table.grid(padding=(0, 1))
    files.add_column(no_wrap=True)
    files.add_column(overflow="fold")
    for name, path, backend in zip(names, paths, backends):
        files.add_row(name, Text(f"{path} ({backend})"))
    console.print(files)

    settings = setting_rows(docs)
    if settings:
        table = _table("scenario and hardware fields that differ", ["field", *names], numbers=False)
        for path, values in settings:
            table.add_row(*map(Text, [path, *values]))
        console.print(table)
    else:
        console.print("same scenario and hardware")

    by_key = [{row.key: row for row in metric_rows(docs[0], doc)} for doc in docs[1:]]
    keys = list(dict.fromkeys(key for rows in by_key for key in rows))
    shown = [key for key in keys if args.all or any(key in rows and rows[key].differs for rows in by_key)]
    if not shown:
        console.print("no metric differs")
        return 0
    headers = ["metric", "unit", names[0]]
    for name in names[1:]:
        headers += [name, f"{name} vs {names[0]}"]
    table = _table("metrics" if args.all else "metrics that differ", headers, numbers=True)
    for key in shown:
        pairs = [rows.get(key) for rows in by_key]  # None where neither A nor that file has the value
        first = next(pair for pair in pairs if pair is not None)
        cells = [key.removeprefix("summary."), first.unit, first.shown(first.a)]
        for pair in pairs:
            cells += ["-", "-"] if pair is None else [pair.shown(pair.b), pair.change()]
        table.add_row(*map(Text, cells))
    console.print(table)
    console.print(f"change vs {names[0]}: relative (%), or X - {names[0]} where {names[0]} is near zero or a percentage (pp)")
    return 0


def _table(title: str, headers: list[str], numbers: bool) -> Table:
    """A compact table that never cuts a cell off: when the width is short, cells fold onto more
    lines, the long first column (metric or field names) first. `numbers`: right-align the values."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for i, header in enumerate(headers):
        table.add_column(header, justify="right" if numbers and i >= 2 else "left", overflow="fold")
    return table

"""`engramsim diff A.json B.json`: per-metric differences of two results files (e.g. sim vs real)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, NamedTuple

from rich.console import Console
from rich.table import Table

from engramsim.errors import InputError
from engramsim.metrics import registered


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diff", help="compare two results.json files metric by metric")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.set_defaults(handler=run)


def load_results(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(path, f"cannot read results file ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not a results JSON file ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("summary"), dict):
        raise InputError(path, "expected an object with a 'summary' object", field="summary")
    return doc


class DiffRow(NamedTuple):
    key: str
    unit: str
    a: Any
    b: Any
    delta: float | None
    pct: float | None  # (B - A) / A in percent


def metric_rows(a: dict[str, Any], b: dict[str, Any]) -> list[DiffRow]:
    """Every numeric summary and per-layer value in either file: the registered metrics first, in
    declaration order with their units, then unregistered summary keys, then per-layer keys."""
    flat_a, flat_b = _flatten(a), _flatten(b)
    present = flat_a.keys() | flat_b.keys()
    units = {f"summary.{m.name}": m.unit for m in registered().values()}
    known = [key for key in units if key in present]
    others = sorted(present - units.keys(), key=lambda key: (not key.startswith("summary."), key))
    rows = []
    for key in known + others:
        va, vb = flat_a.get(key), flat_b.get(key)
        delta = vb - va if va is not None and vb is not None else None
        pct = delta / va * 100 if delta is not None and va else None
        rows.append(DiffRow(key, units.get(key, ""), va, vb, delta, pct))
    return rows


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _flatten(doc: dict[str, Any]) -> dict[str, float]:
    out = {f"summary.{k}": v for k, v in doc["summary"].items() if _number(v)}
    for layer in doc.get("per_layer", []):
        for k, v in layer.items():
            if k != "layer" and _number(v):
                out[f"layer{layer['layer']}.{k}"] = v
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:,}" if isinstance(v, int) else f"{v:,.4g}"


def run(args: argparse.Namespace) -> int:
    a, b = load_results(args.a), load_results(args.b)
    table = Table(title=f"{args.a} (A) vs {args.b} (B): {a.get('backend', '?')} vs {b.get('backend', '?')}")
    for col in ("metric", "unit", "A", "B", "B - A", "(B - A) / A"):
        table.add_column(col, justify="left" if col in ("metric", "unit") else "right")
    for row in metric_rows(a, b):
        table.add_row(row.key, row.unit, _fmt(row.a), _fmt(row.b), _fmt(row.delta), "-" if row.pct is None else f"{row.pct:+.2f} %")
    Console().print(table)
    return 0

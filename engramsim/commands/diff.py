"""`engramsim diff A.json B.json`: per-metric differences of two results files (e.g. sim vs real)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from engramsim.errors import InputError


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


def metric_rows(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any, float | None, float | None]]:
    """(metric, A, B, B-A, (B-A)/A %) for every numeric summary and per-layer metric in either file."""
    flat_a, flat_b = _flatten(a), _flatten(b)
    rows = []
    for key in sorted(flat_a.keys() | flat_b.keys()):
        va, vb = flat_a.get(key), flat_b.get(key)
        delta = vb - va if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else None
        pct = delta / va * 100 if delta is not None and va else None
        rows.append((key, va, vb, delta, pct))
    return rows


def _flatten(doc: dict[str, Any]) -> dict[str, float]:
    out = {f"summary.{k}": v for k, v in doc["summary"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for layer in doc.get("per_layer", []):
        for k, v in layer.items():
            if k != "layer" and isinstance(v, (int, float)):
                out[f"layer{layer['layer']}.{k}"] = v
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:,}" if isinstance(v, int) else f"{v:,.4g}"


def run(args: argparse.Namespace) -> int:
    a, b = load_results(args.a), load_results(args.b)
    table = Table(title=f"{args.a} (A) vs {args.b} (B): {a.get('backend', '?')} vs {b.get('backend', '?')}")
    for col in ("metric", "A", "B", "B - A", "(B - A) / A"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for key, va, vb, delta, pct in metric_rows(a, b):
        table.add_row(key, _fmt(va), _fmt(vb), _fmt(delta), "-" if pct is None else f"{pct:+.2f} %")
    Console().print(table)
    return 0

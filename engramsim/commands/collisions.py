"""`engramsim collisions TRACE`: hashing quality of hashing plugins at table sizes, on a trace.

For every size (rows per head of every order) and plugin, per n-gram order of one Engram layer:
the heads' collision rates over the distinct n-grams, the share of distinct n-grams and of
occurrences whose every head collides, what independent uniform heads of the same sizes would
give, and the n-grams retained (engramsim/hash_quality.py defines each).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from engramsim.commands import HELP
from engramsim.commands.args import int_list
from engramsim.errors import InputError
from engramsim.files import check_output, write_text_atomic

_FLAGS = {"layers": "--layers", "max_ngram": "--max-ngram", "heads": "--heads", "rows_per_head": "--sizes", "seed": "--seed"}


def size_list(text: str) -> list[int]:
    """'1e4,100000' -> [10000, 100000]: integers, or whole numbers in scientific notation."""
    values = []
    for v in (v.strip() for v in text.split(",")):
        if not v:
            continue
        try:
            number = float(v) if "e" in v.lower() else int(v)
        except ValueError:
            number = None
        if number is None or number != int(number):
            raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers such as 10000 or 1e5, got {text!r}")
        values.append(int(number))
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one size, got {text!r}")
    return values


def name_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated plugin names, got {text!r}")
    return values


def add_parser(sub: argparse._SubParsersAction) -> None:
    from engramsim.hash_quality import BUILTIN_PLUGINS

    p = sub.add_parser("collisions", help=HELP["collisions"])
    p.add_argument("trace", help="a shipped trace name (see `engramsim trace list`) or a .npz path")
    p.add_argument("--plugins", type=name_list, default=list(BUILTIN_PLUGINS),
                   help=f"hashing plugins to compare (default: {','.join(BUILTIN_PLUGINS)})")
    p.add_argument("--sizes", type=size_list, default=[10_000, 100_000, 1_000_000],
                   help="rows per head (every order), one table per size (default: 1e4,1e5,1e6)")
    p.add_argument("--layers", type=int_list, default=[1, 15], help="Engram layer ids (primes depend on all of them)")
    p.add_argument("--layer", type=int, default=None, help="the layer measured (default: the first of --layers)")
    p.add_argument("--max-ngram", type=int, default=3)
    p.add_argument("--heads", type=int, default=8, help="heads per n-gram order")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", type=Path, default=None, help="tokenizer.json the trace was built with (default: DeepSeek V4)")
    p.add_argument("--json", dest="json_out", type=Path, default=None, help="also write the results as JSON to this file")
    p.set_defaults(handler=run)


def engram_config(args: argparse.Namespace):
    """The scenario's Engram section these flags describe; a bad value is one line naming its flag."""
    from engramsim.scenario import Engram

    try:
        engram = Engram(layers=args.layers, max_ngram=args.max_ngram, heads=args.heads, seed=args.seed,
                        rows_per_head=[max(args.sizes)])
        for size in args.sizes:
            Engram(max_ngram=args.max_ngram, rows_per_head=[size])
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        got = getattr(args, field, None) if field != "rows_per_head" else args.sizes
        message = err["msg"].removeprefix("Value error, ")
        if "got" not in message:
            message += f", got {got if got is not None else err.get('input')}"
        raise InputError(_FLAGS.get(field, "arguments"), message) from None
    layer = engram.layers[0] if args.layer is None else args.layer
    if layer not in engram.layers:
        raise InputError("--layer", f"expected one of --layers {engram.layers}, got {layer}")
    return engram, layer


def check_plugins(names: list[str]) -> None:
    from engramsim import registry

    known = registry.names("hashing")
    for name in names:
        if name not in known:
            raise InputError("--plugins", f"unknown hashing plugin {name!r}; known: {', '.join(known)}")


def _pct(value: float) -> str:
    if value == 0:
        return "0"
    return f"{100 * value:.3f}%" if value < 0.001 else f"{100 * value:.2f}%"


def _rows(value: int) -> str:
    return f"{value / 1e6:.2f} M" if value >= 1e6 else f"{value / 1e3:.1f} k" if value >= 1e3 else str(value)


def print_table(console: Console, doc: dict, results, seconds: float) -> None:
    first = results[0].orders if results else []
    distinct = ", ".join(f"{o.distinct:,} {o.order}-grams ({o.occurrences:,} occurrences)" for o in first)
    table = Table(
        title=f"{doc['trace']}, Engram layer {doc['layer']}: {distinct}",
        caption="rows: the order's heads together. head coll.: share of the distinct n-grams whose row in a head is another's "
        "too, mean and worst head. all heads: share of the distinct n-grams colliding in every head of the order, and of the "
        "occurrences; ideal: that share for independent uniform heads of these sizes. retained: distinct n-grams with a "
        "collision-free head.",
        title_justify="left",
        caption_justify="left",
    )
    for col in ("rows/head", "plugin", "n", "rows", "head coll.", "worst head", "all heads", "occurrences", "ideal", "retained"):
        table.add_column(col, justify="left" if col == "plugin" else "right")
    previous = None
    for r in results:
        if previous is not None and r.rows_per_head != previous:
            table.add_section()
        for k, o in enumerate(r.orders):
            table.add_row(
                f"{r.rows_per_head:,}" if r.rows_per_head != previous else "", r.plugin if k == 0 else "", str(o.order), _rows(o.rows),
                _pct(o.mean_head_collision_rate), _pct(max(o.head_collision_rate)), _pct(o.all_heads_collide_distinct),
                _pct(o.all_heads_collide_occurrences), _pct(o.ideal_all_heads_collide_distinct),
                _pct(o.retained / o.distinct) if o.distinct else "-",
            )
            previous = r.rows_per_head
    console.print(table)
    console.print(f"computed in {seconds:.2f} s", highlight=False)


def run(args: argparse.Namespace) -> int:
    from engramsim.hash_quality import compare
    from engramsim.traces.format import load_trace, resolve_trace
    from engramsim.traces.stats import compressed_ids

    engram, layer = engram_config(args)
    check_plugins(args.plugins)
    if args.json_out is not None:
        check_output(args.json_out, inputs=[resolve_trace(args.trace), *([args.tokenizer] if args.tokenizer else [])])
    trace = load_trace(args.trace)
    ids, vocab_size, pad = compressed_ids(trace, args.tokenizer)
    start = time.perf_counter()
    try:
        results = compare(ids, trace.doc_offsets, vocab_size, pad, engram, args.plugins, args.sizes, layer)
    except ValidationError as exc:  # a plugin's own params model
        raise InputError("--plugins", " ".join(str(exc).split())) from None
    seconds = time.perf_counter() - start
    doc = {
        "trace": trace.name,
        "tokens": len(trace),
        "documents": trace.n_documents,
        "layer": layer,
        "engram": {"layers": engram.layers, "max_ngram": engram.max_ngram, "heads": engram.heads, "seed": engram.seed},
        "sizes": args.sizes,
        "results": [r.to_dict() for r in results],
    }
    console = Console()
    if not console.is_terminal:  # a file or a pipe: the whole table, not one squeezed to 80 columns
        console = Console(width=130)
    print_table(console, doc, results, seconds)
    if args.json_out is not None:
        write_text_atomic(args.json_out, json.dumps(doc, indent=2) + "\n")
        console.print(f"wrote {args.json_out}", highlight=False)
    return 0

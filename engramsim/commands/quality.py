"""`engramsim quality SCENARIO`: what storing the Engram tables in a lower precision costs the Engram
layer's output, on the scenario's trace, with the real module (engramsim/backends/quality.py says
what the proxy does and does not tell)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import get_args

from rich.console import Console
from rich.table import Table

from engramsim.commands import HELP
from engramsim.errors import InputError
from engramsim.files import check_output, write_text_atomic
from engramsim.scenario import Engram

TABLE_DTYPES: tuple[str, ...] = get_args(Engram.model_fields["dtype"].annotation)  # model.engram.dtype's values
DEFAULT_MODES = ("bf16", "fp8", "int8")


def mode_list(text: str) -> list[str]:
    values = list(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated table dtypes such as bf16,fp8,int8, got {text!r}")
    return values


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quality", help=HELP["quality"])
    p.add_argument("scenario", type=Path, help="scenario YAML (its model, trace, hashing and run.seed are used)")
    p.add_argument("--modes", type=mode_list, default=list(DEFAULT_MODES),
                   help=f"table dtypes compared with the fp32 table (of {','.join(TABLE_DTYPES)}; default: {','.join(DEFAULT_MODES)})")
    p.add_argument("--tokens", type=positive_int, default=4096, help="the trace's first N tokens (default: 4096)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a scenario field, validated like the file (repeatable)")
    p.add_argument("--json", dest="json_out", type=Path, default=None, help="also write the results as JSON to this file")
    p.set_defaults(handler=run)


def check_modes(modes: list[str]) -> None:
    for mode in modes:
        if mode not in TABLE_DTYPES:
            raise InputError("--modes", f"unknown table dtype {mode!r}; expected some of {', '.join(TABLE_DTYPES)}")


def _pct(value: float) -> str:
    return "0" if value == 0 else f"{100 * value:.3f}%" if value < 0.01 else f"{100 * value:.2f}%"


def print_table(console: Console, report, engram, seconds: float) -> None:
    bf16_bytes = engram.model_copy(update={"dtype": "bf16"}).row_bytes
    table = Table(
        title=f"{report.scenario}: {report.tokens:,} tokens of {report.trace} ({report.documents} documents), "
        f"{engram.heads_per_layer} heads x {engram.head_dim} values, hashing {report.hashing}; against the {report.reference} table",
        caption="bytes: one head's row (scales included), one token's rows at the layer, and against a bf16 row. "
        "e: per token ||e - e_ref|| / ||e_ref|| of the gathered memory vector; y: the same for the Engram layer's output "
        "(v + ShortConv(v), every branch). Random N(0, 1) tables and module weights: a numerical proxy, not task accuracy.",
        title_justify="left",
        caption_justify="left",
    )
    for col in ("dtype", "layer", "B/row", "B/token", "vs bf16", "e mean", "e p99", "y mean", "y p50", "y p99", "y max"):
        table.add_column(col, justify="left" if col == "dtype" else "right")
    for r in report.results:
        table.add_row(r.mode, str(r.layer), str(r.row_bytes), f"{r.token_bytes:,}", f"{r.row_bytes / bf16_bytes:.3f}",
                      _pct(r.embedding.mean), _pct(r.embedding.p99), _pct(r.output.mean), _pct(r.output.p50),
                      _pct(r.output.p99), _pct(r.output.max))
    console.print(table)
    console.print(f"computed in {seconds:.1f} s", highlight=False)


def run(args: argparse.Namespace) -> int:
    from engramsim.backends.quality import measure
    from engramsim.scenario_io import load_scenario
    from engramsim.session import located
    from engramsim.traces.format import resolve_trace

    check_modes(args.modes)
    scenario = load_scenario(args.scenario, args.overrides)
    source = str(args.scenario)
    if args.json_out is not None:
        with located(source, "workload.trace"):
            trace_path = resolve_trace(scenario.workload.trace)
        check_output(args.json_out, inputs=[args.scenario, trace_path])
    start = time.perf_counter()
    try:
        report = measure(scenario, source, args.modes, args.tokens)
    except MemoryError:
        raise InputError("--tokens", f"out of memory at {args.tokens:,} tokens; ask for fewer") from None
    seconds = time.perf_counter() - start
    console = Console()
    if not console.is_terminal:  # a file or a pipe: the whole table, not one squeezed to 80 columns
        console = Console(width=150)
    print_table(console, report, scenario.model.engram, seconds)
    if args.json_out is not None:
        doc = {"source": source, **report.to_dict(),
               "engram": scenario.model.engram.model_dump(mode="json", exclude={"dtype"}),
               "hidden": scenario.model.backbone.hidden, "seed": scenario.run.seed}
        write_text_atomic(args.json_out, json.dumps(doc, indent=2) + "\n")
        console.print(f"wrote {args.json_out}", highlight=False)
    return 0

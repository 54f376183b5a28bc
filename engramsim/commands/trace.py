"""`engramsim trace build|stats|synth|list`: token traces (traces/README.md has the format)."""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

from engramsim.commands import HELP
from engramsim.commands.args import add_hash_spec_args
from engramsim.commands.hash import spec_from_args
from engramsim.errors import InputError
from engramsim.files import check_output


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help=HELP["trace"])
    tsub = p.add_subparsers(dest="trace_command", required=True)

    b = tsub.add_parser("build", help="tokenize text files (one document each) into a trace .npz")
    b.add_argument("--text", required=True, nargs="+", type=Path, metavar="FILE", help="UTF-8 text files, one document each")
    b.add_argument("--out", required=True, type=Path, help="output .npz (written atomically)")
    b.add_argument("--tokenizer", type=Path, default=None, help="tokenizer.json (default: DeepSeek V4)")
    b.add_argument("--name", default=None, help="trace name (default: the output file's stem)")
    b.add_argument("--source", default=None, help="where the text comes from (recorded in meta)")
    b.add_argument("--licence", default="unspecified", help="licence of the text, e.g. an SPDX id (recorded in meta)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(handler=run_build)

    s = tsub.add_parser("stats", help="n-gram skew, Zipf fit and Engram row reuse of a trace")
    s.add_argument("trace", help="a shipped trace name (see `engramsim trace list`) or a .npz path")
    s.add_argument("--layer", type=int, default=None, help="layer whose row reuse is measured (default: first of --layers)")
    add_hash_spec_args(s)
    s.add_argument("--tokenizer", type=Path, default=None, help="tokenizer.json the trace was built with (default: DeepSeek V4)")
    s.add_argument("--json", action="store_true", help="print the statistics as JSON")
    s.set_defaults(handler=run_stats)

    g = tsub.add_parser("synth", help="generate a synthetic Zipf n-gram trace")
    g.add_argument("--tokens", type=int, required=True)
    g.add_argument("--exponent", type=float, required=True, help="Zipf exponent of the phrase law")
    g.add_argument("--vocab", type=int, default=99_092, help="vocabulary of the (compressed) ids")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--doc-length", type=int, default=2048)
    g.add_argument("--phrase-length", type=int, default=4)
    g.add_argument("--phrases", type=int, default=1_000_000, help="size of the phrase catalogue")
    g.add_argument("--name", default=None)
    g.add_argument("--out", required=True, type=Path)
    g.set_defaults(handler=run_synth)

    ls = tsub.add_parser("list", help="the shipped traces")
    ls.set_defaults(handler=run_list)


def run_build(args: argparse.Namespace) -> int:
    from engramsim.traces.build import build_from_files
    from engramsim.traces.format import save_trace

    check_output(args.out, inputs=args.text)  # before tokenizing: a bad --out fails at once
    command = ["engramsim", "trace", "build", "--text", *map(str, args.text), "--out", str(args.out)]
    for flag, value in (("--tokenizer", args.tokenizer), ("--name", args.name), ("--source", args.source), ("--licence", args.licence)):
        if value is not None:
            command += [flag, str(value)]
    trace = build_from_files(
        args.text,
        name=args.name or args.out.stem,
        source=args.source or f"{len(args.text)} local text file(s), one document each",
        licence=args.licence,
        created_by=shlex.join(command),
        tokenizer_path=args.tokenizer,
        progress=not args.quiet,
    )
    save_trace(trace, args.out)
    print(f"{args.out}: {len(trace):,} tokens in {trace.n_documents:,} documents (trace {trace.name!r})")
    return 0


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _int(value: float | None) -> str:
    return "-" if value is None else f"{int(value):,}"


def print_stats(stats, seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{stats.name}[/bold]: {stats.tokens:,} tokens in {stats.documents:,} documents")
    console.print(f"source: {stats.source}", highlight=False)
    console.print(f"licence: {stats.licence}", highlight=False)
    table = Table(
        title="n-grams of compressed ids, inside documents",
        caption="top q%: share of occurrences covered by the most frequent q% of distinct n-grams; "
        "Zipf s: log-log least squares over ranks 1..R (count >= 5)",
        title_justify="left",
        caption_justify="left",
    )
    for col in ("n", "occurrences", "distinct", "top 1%", "top 10%", "Zipf s", "fit ranks"):
        table.add_column(col, justify="right")
    for n in stats.ngrams:
        table.add_row(
            str(n.order),
            f"{n.occurrences:,}",
            f"{n.distinct:,}",
            f"{100 * n.top_1pct_coverage:.1f}%",
            f"{100 * n.top_10pct_coverage:.1f}%",
            _fmt(n.zipf_exponent, 2),
            f"1..{n.zipf_fit_ranks:,}" if n.zipf_exponent is not None else "-",
        )
    console.print(table)
    r = stats.reuse
    spec = stats.spec
    reuse = Table(
        title=f"Engram layer {r.layer} table rows: {r.heads} per token, {r.table_rows:,} in the table",
        caption=(
            f"spec: layers {spec['layer_ids']}, {spec['heads']} heads/order, max n-gram {spec['max_ngram']}, "
            f"rows/head {spec['rows_per_head']}, seed {spec['seed']}. Reuse distance = {r.metric}; "
            "quantiles over re-accesses"
        ),
        title_justify="left",
        caption_justify="left",
    )
    for col in ("accesses", "distinct rows", "first-time", "reuse p50", "reuse p90", "reuse p99"):
        reuse.add_column(col, justify="right")
    reuse.add_row(
        f"{r.accesses:,}", f"{r.distinct_rows:,}", f"{100 * r.first_access_share:.1f}%", _int(r.p50), _int(r.p90), _int(r.p99)
    )
    console.print(reuse)
    console.print(f"computed in {seconds:.2f} s", highlight=False)


def run_stats(args: argparse.Namespace) -> int:
    from engramsim.traces.format import load_trace
    from engramsim.traces.stats import trace_stats

    spec = spec_from_args(args)
    layer = spec.layer_ids[0] if args.layer is None else args.layer
    if layer not in spec.layer_ids:
        raise InputError("--layer", f"expected one of --layers {list(spec.layer_ids)}, got {layer}")
    trace = load_trace(args.trace)
    start = time.perf_counter()
    stats = trace_stats(trace, spec, layer=layer, tokenizer_path=args.tokenizer)
    seconds = time.perf_counter() - start
    if args.json:
        print(json.dumps(stats.to_dict(), indent=2))
    else:
        print_stats(stats, seconds)
    return 0


def run_synth(args: argparse.Namespace) -> int:
    from engramsim.traces.format import save_trace
    from engramsim.traces.synthetic import zipf_trace

    check_output(args.out)
    try:
        trace = zipf_trace(
            args.tokens,
            args.exponent,
            vocab=args.vocab,
            seed=args.seed,
            doc_length=args.doc_length,
            phrase_length=args.phrase_length,
            phrases=args.phrases,
        )
    except ValueError as exc:
        raise InputError("trace synth", str(exc)) from None
    if args.name:
        trace.meta["name"] = args.name
    save_trace(trace, args.out)
    print(f"{args.out}: {len(trace):,} synthetic tokens in {trace.n_documents:,} documents (trace {trace.name!r})")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from rich.console import Console, JustifyMethod
    from rich.table import Table

    from engramsim.traces.format import load_trace, shipped_traces

    table = Table(title="shipped traces (`engramsim trace stats NAME` for more)", title_justify="left")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("name", "left"), ("tokens", "right"), ("documents", "right"), ("genre", "left"), ("licence", "left"))
    for col, just in columns:
        table.add_column(col, justify=just)
    for name in shipped_traces():
        t = load_trace(name)
        genre = str(t.meta.get("genre", ""))
        table.add_row(name, f"{len(t):,}", f"{t.n_documents:,}", genre, str(t.meta["licence"]))
    Console().print(table)
    return 0

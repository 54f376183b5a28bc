"""`engramsim compare SCENARIO --vary KEY=V1,V2,... [--vary ...] --out DIR`: simulate every
combination of the values on the same requests; one table, and compare.json, compare.csv and
compare.png in DIR (written into a hidden folder beside it and renamed into place when complete).
The work itself is engramsim/compare.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from engramsim import compare
from engramsim.commands import HELP
from engramsim.commands.preflight import ask_on_terminal, default_scenario
from engramsim.commands.run import bytes_bar, progress_bar, warn_profile_host
from engramsim.compare import FILES, SIM, Ready, Result, columns, prepare_real, run_real_variant, run_variant, tradeoff
from engramsim.files import staged_folder
from engramsim.runner import passes
from engramsim.variants import Vary, load_variants, parse_varies, short_keys

DESCRIPTION = """Simulate every combination of the --vary values (their cartesian product) on the same requests,
with the passes `engramsim run` makes (offloaded, all tables in HBM, no Engram), and print one table
of the variants; write compare.json, compare.csv and compare.png to --out.

Values are parsed as --set parses them; a comma inside {} or [] stays in its value, e.g.
  --vary 'strategies.cache=none,{name: lru, params: {rows: 100000}}' --vary strategies.transport=staged,zero-copy
A variant the hardware cannot hold (KV cache, HBM, host DRAM) is listed as "does not fit" with the
reason; the others still run.

--backend cpu|cuda runs every variant's passes for real, as `engramsim run --backend cpu|cuda` does,
one variant after another; a variant the real backends do not run (a tier, transport or prefetch
mode) or this machine cannot hold is listed as "refused by the real backend" with the reason. The
values are then measured, not reproducible byte for byte. A comparison estimated to take over
10 minutes needs --yes."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help=HELP["compare"],
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", nargs="?", type=Path, default=None, help="scenario YAML (default: quickstart)")
    p.add_argument("--vary", action="append", default=[], metavar="KEY.PATH=V1,V2,...",
                   help="a scenario field and its values, parsed as --set parses them; commas inside {} or [] stay in a value "
                        "(repeatable: variants are the cartesian product)")
    p.add_argument("--out", type=Path, required=True, help="output folder; must not exist unless --force replaces an earlier compare folder")
    p.add_argument("--force", action="store_true", help="replace an existing --out compare folder whole")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a scenario field in every variant (repeatable)")
    p.add_argument("--backend", choices=("sim", "cpu", "cuda"), default="sim",
                   help="sim (default): variants are simulated; cpu, cuda: each variant's passes run and are measured")
    p.add_argument("--yes", action="store_true", help="run a real backend even when the comparison is estimated to take long")
    p.add_argument("--keep-runs", action="store_true",
                   help="also write each variant's run folder (results.json, steps.csv, timeline.json, plot.png) under DIR/runs/")
    p.add_argument("--quiet", action="store_true", help="no progress or table, just the output folder")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # off a terminal the table is 200 columns wide unless COLUMNS says otherwise (rich reads it)
    console = Console(quiet=args.quiet, width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200)
    start = time.perf_counter()
    path = args.scenario or default_scenario()
    backend = args.backend
    varies = parse_varies(args.vary, args.overrides)
    loaded = load_variants(path, args.overrides, varies, backend)  # every variant validated before any runs
    if backend == "cuda":  # before any work: no GPU, no work
        from engramsim.backends.cuda import require_gpu

        require_gpu(str(path))
    results: list[Result] = []
    with staged_folder(args.out, force=args.force, marker="compare.json") as staging:
        readied: list[Ready | None] = [None] * len(loaded)  # simulated: each variant is prepared when it runs
        if backend != SIM:
            readied[:], estimate = prepare_real(loaded, str(path), backend, args.yes, ask_on_terminal(Console(stderr=True, highlight=False)))
            if not args.quiet:
                print(f"engramsim: {estimate}", file=sys.stderr)
            for profile in {r.profile.name: r.profile for r in readied if r is not None and not isinstance(r, Result)}.values():
                warn_profile_host(profile)
        width = len(str(len(loaded)))
        for (variant, scenario), ready in zip(loaded, readied, strict=True):
            label = f"{variant.index}/{len(loaded)} {variant.name}"
            keep = staging / "runs" / f"v{variant.index:0{width}d}" if args.keep_runs else None
            progress = None if not console.is_terminal else (lambda what, total, label=label: progress_bar(console, f"{label}: {what}", total))
            began = time.perf_counter()
            if backend == SIM:
                result = run_variant(variant, scenario, str(path), keep, progress)
            elif isinstance(ready, Result):
                result = ready
            else:
                assert ready is not None
                setup = None if not console.is_terminal else (lambda what, total, label=label: bytes_bar(console, f"{label}: {what}", total))
                result = run_real_variant(variant, ready, backend, keep, progress, setup)
            if keep is not None and result.fits:
                result.run_dir = keep.relative_to(staging).as_posix()
            results.append(result)
            console.print(Text(f"{label}: " + ("ran" if result.fits else result.status) + f" ({time.perf_counter() - began:.2f} s)",
                               style="dim"))
        compare.write_compare(staging, str(path), args.overrides, varies, results, backend)
    print_table(console, varies, results, time.perf_counter() - start, backend)
    console.print(f"wrote {', '.join(FILES)}{' and runs/' if args.keep_runs else ''} to {args.out}")
    if args.quiet:
        print(args.out)
    return 0


def print_table(console: Console, varies: Sequence[Vary], results: Sequence[Result], wall_s: float, backend: str = SIM) -> None:
    """One row per variant: its values, then the columns of `compare.columns`; a variant that does
    not fit (or the real backend refuses) says so, with its reason below the table."""
    cols = columns(results)
    trade = tradeoff(results)
    front = set(trade.front) if trade else set()
    kind = "simulated" if backend == SIM else f"measured on {backend}"
    table = Table(title=f"{results[0].scenario.name}: {len(results)} variants ({kind})" if results else "no variants")
    table.add_column("#", justify="right")
    for key in short_keys([v.key for v in varies]):
        table.add_column(key)
    for c in cols:
        table.add_column(f"{c.header}\n{c.unit}" if c.unit else c.header, justify="right")
    if not cols:
        table.add_column("status")
    notes = []
    for r in results:
        values = [Text(text) for _, text, _ in r.variant.overrides]
        if r.fits:
            cells = [Text(c.text(r)) for c in cols]
        else:
            cells = [Text(r.status, style="bold red")] + [Text("")] * (max(1, len(cols)) - 1)
            notes.append(f"{r.variant.index} ({r.variant.name}): {r.status}: {r.reason}")
        table.add_row(Text(f"{r.variant.index}{'*' if r.variant.index in front else ''}"), *values, *cells)
    console.print(table)
    for note in notes:
        console.print(Text(note))
    if trade is not None:
        console.print(Text(f"* on the Pareto front of {trade.title.removesuffix('; Pareto front in red')} (compare.png)"))
    console.print(Text(same_steps(results)))
    if results:
        console.print(Text(f"{len(results)} variants x {len(passes(results[0].scenario))} passes in {wall_s:.2f} s wall"))


def same_steps(results: Sequence[Result]) -> str:
    """Whether the variants that ran served the same requests and ran the same steps."""
    ok = [r for r in results if r.fits]
    if not ok:
        return "no variant ran"
    requests = ("the same requests" if len({r.workload for r in ok}) == 1
                else "different requests (a --vary changes the workload or the seed)")
    first = ok[0]
    other = [r.variant.index for r in ok if r.schedule != first.schedule]
    if not other:
        return f"every variant that ran served {requests} in the same steps"
    return (f"every variant that ran served {requests}; {'variants' if len(other) > 1 else 'variant'} {', '.join(map(str, other))} "
            f"ran other steps than variant {first.variant.index} (another KV cache, scheduler or batching, or timed arrivals "
            "batching by each run's clock)")

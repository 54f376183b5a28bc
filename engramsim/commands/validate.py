"""`engramsim validate`: run scenarios for real and in the simulator on a profile; print the errors.

Default scenarios: every scenarios/validation/*.yaml. Each real run is repeated (`--repeats`, 3 by
default) because a shared machine's step times move a few percent run to run: per scenario a table
of the validated metrics (engramsim/metrics.py: mean and p99 step latency, throughput, Engram stall)
and the per-stage totals, with the real median, the real range and its relative spread, the
simulated value and (sim - median) / median; then the median / max |error| of the mean step
latency over all scenarios. `--timeline` writes the median real run and the simulation of every
scenario side by side in one Perfetto trace.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from engramsim.commands import HELP
from engramsim.commands.run import progress_bar, warn_profile_host
from engramsim.errors import InputError
from engramsim.files import check_output, write_text_atomic
from engramsim.metrics import validated_metrics


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help=HELP["validate"])
    p.add_argument("scenarios", nargs="*", type=Path, help="scenario YAMLs (default: every scenarios/validation/*.yaml)")
    p.add_argument("--backend", choices=("cpu", "cuda"), required=True, help="the real backend to run on")
    p.add_argument("--profile", required=True, help="hardware profile (YAML path or preset name) the simulator prices with")
    p.add_argument("--repeats", type=int, default=3, help="real runs per scenario; errors are against their median (default 3)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a field of every scenario, e.g. model.backbone.dtype=bf16 (repeatable)")
    p.add_argument("--json", dest="json_out", type=Path, default=None, help="write the comparison as JSON to this file")
    p.add_argument("--timeline", type=Path, default=None,
                   help="write a Perfetto trace with the median real run and the simulation of every scenario side by side")
    p.add_argument("--quiet", action="store_true", help="no progress bar or tables")
    p.set_defaults(handler=run)


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f} %"


def _spread(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} %"


def print_result(console: Console, result) -> None:
    """The validated metrics, then every stage that was busy on either side."""
    table = Table(title=f"{result.name}: {result.steps} steps, {result.repeats} real runs in {result.real_wall_s:.1f} s")
    for col in ("metric", "real median", "real min..max", "spread", "sim", "error"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    errors = result.error_pct
    for metric in validated_metrics():
        real = result.real[metric.name]
        table.add_row(f"{metric.label} ({metric.unit})", metric.number(real.median),
                      f"{metric.number(real.low)}..{metric.number(real.high)}", _spread(real.spread_pct),
                      metric.number(result.sim[metric.name]), _pct(errors[metric.name]))
    stage_errors = result.stage_error_pct
    for stage, real in result.stages_real.items():
        sim = result.stages_sim[stage]
        if real.high or sim:
            table.add_row(f"[dim]stage {stage} total (ms)[/dim]", _num(real.median, 1), f"{_num(real.low, 1)}..{_num(real.high, 1)}",
                          _spread(real.spread_pct), _num(sim, 1), _pct(stage_errors[stage]))
    console.print(table)


def print_summary(console: Console, results, median: float | None, worst: float | None, repeats: int) -> None:
    from engramsim.validate import HEADLINE

    table = Table(title="mean step latency: simulated vs real median")
    for col in ("scenario", "real ms", "real spread", "sim ms", "error"):
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for r in results:
        real = r.real[HEADLINE]
        table.add_row(r.name, _num(real.median, 3), _spread(real.spread_pct), _num(r.sim[HEADLINE], 3), _pct(r.error_pct[HEADLINE]))
    console.print(table)
    console.print(f"median |error| {_num(median, 2)} %, max |error| {_num(worst, 2)} % over {len(results)} scenarios "
                  f"(real: the median of {repeats} runs each)")


def run(args: argparse.Namespace) -> int:
    from engramsim.backends.calibration.machine import require_backend
    from engramsim.scenario_io import load_scenario
    from engramsim.validate import (
        aggregate,
        comparison_trace,
        default_scenarios,
        document,
        load_checked_profile,
        overrides,
        validate_scenario,
    )

    if args.repeats < 1:
        raise InputError("--repeats", f"expected an integer >= 1, got {args.repeats}")
    outputs = [check_output(out, inputs=[*args.scenarios, args.profile])  # before any run
               for out in (args.json_out, args.timeline) if out is not None]
    if len(set(outputs)) < len(outputs):  # both given, one path: the second write would replace the first
        raise InputError(args.timeline, "is also the --json file; choose another --timeline path")
    profile = load_checked_profile(args.profile)  # a missing or corrupt profile: one line, exit 2, before any run
    require_backend(args.backend)
    scenarios = list(args.scenarios) or default_scenarios()
    for path in scenarios:  # a scenario that does not load fails before the first real run
        load_scenario(path, [*args.overrides, *overrides(args.profile, args.backend)])
    console = Console(quiet=args.quiet)
    warning = warn_profile_host(profile)
    results = []
    factory = None if args.quiet else lambda label, total: progress_bar(console, label, total)
    for path in scenarios:
        result = validate_scenario(path, args.backend, args.profile, factory, args.overrides, args.repeats)
        results.append(result)
        print_result(console, result)
        if args.json_out is not None:  # after every scenario, so a run cut short keeps what it measured
            doc = document(results, args.backend, args.profile, args.repeats, warning, planned=len(scenarios))
            write_text_atomic(args.json_out, json.dumps(doc, indent=2) + "\n")
    median, worst = aggregate(results)
    print_summary(console, results, median, worst, args.repeats)
    if args.json_out is not None:
        console.print(f"wrote {args.json_out}")
    if args.timeline is not None:
        write_text_atomic(args.timeline, comparison_trace(results))
        console.print(f"wrote {args.timeline}")
    return 0

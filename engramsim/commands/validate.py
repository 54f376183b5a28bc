"""`engramsim validate`: run scenarios for real and in the simulator on a profile; print the errors.

Default scenarios: every scenarios/validation/*.yaml. Per scenario a table of the real and simulated
values of the validated metrics (engramsim/metrics.py: mean and p99 step latency, throughput,
Engram stall) with (sim - real) / real; then per-stage totals, and the median / max |error| of the
mean step latency over all scenarios.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from engramsim.commands.run import progress_bar, warn_profile_host
from engramsim.files import check_output, write_text_atomic
from engramsim.metrics import validated_metrics


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="run scenarios for real and simulated on a profile and report the error")
    p.add_argument("scenarios", nargs="*", type=Path, help="scenario YAMLs (default: every scenarios/validation/*.yaml)")
    p.add_argument("--backend", choices=("cpu", "cuda"), required=True, help="the real backend to run on")
    p.add_argument("--profile", required=True, help="hardware profile (YAML path or preset name) the simulator prices with")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a field of every scenario, e.g. model.backbone.dtype=bf16 (repeatable)")
    p.add_argument("--json", dest="json_out", type=Path, default=None, help="write the comparison as JSON to this file")
    p.add_argument("--quiet", action="store_true", help="no progress bar or tables")
    p.set_defaults(handler=run)


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f} %"


def print_result(console: Console, result) -> None:
    table = Table(title=f"{result.name}: {result.steps} steps, real run {result.real_wall_s:.1f} s")
    for col in ("metric", "real", "sim", "error"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for metric in validated_metrics():
        key = metric.name
        table.add_row(f"{metric.label} ({metric.unit})", metric.number(result.real[key]), metric.number(result.sim[key]),
                      _pct(result.error_pct[key]))
    real, sim = result.stages_ms["real"], result.stages_ms["sim"]
    for stage in real:
        if real[stage] or sim[stage]:
            err = (sim[stage] - real[stage]) / real[stage] * 100 if real[stage] else None
            table.add_row(f"[dim]stage {stage} total (ms)[/dim]", _num(real[stage], 1), _num(sim[stage], 1), _pct(err))
    console.print(table)


def print_summary(console: Console, results, median: float | None, worst: float | None) -> None:
    table = Table(title="mean step latency: simulated vs real")
    for col in ("scenario", "real ms", "sim ms", "error"):
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for r in results:
        table.add_row(r.name, _num(r.real["step_latency_ms_mean"], 3), _num(r.sim["step_latency_ms_mean"], 3),
                      _pct(r.error_pct["step_latency_ms_mean"]))
    console.print(table)
    console.print(f"median |error| {_num(median, 2)} %, max |error| {_num(worst, 2)} % over {len(results)} scenarios")


def run(args: argparse.Namespace) -> int:
    from engramsim.backends.calibration.machine import require_backend
    from engramsim.validate import (
        aggregate,
        default_scenarios,
        document,
        load_checked_profile,
        validate_scenario,
    )

    if args.json_out is not None:
        check_output(args.json_out)  # before any run
    profile = load_checked_profile(args.profile)  # a missing or corrupt profile: one line, exit 2, before any run
    require_backend(args.backend)
    scenarios = list(args.scenarios) or default_scenarios()
    console = Console(quiet=args.quiet)
    warning = warn_profile_host(profile)
    results = []
    factory = None if args.quiet else lambda label, total: progress_bar(console, label, total)
    for path in scenarios:
        result = validate_scenario(path, args.backend, args.profile, factory, args.overrides)
        results.append(result)
        print_result(console, result)
    median, worst = aggregate(results)
    print_summary(console, results, median, worst)
    if args.json_out is not None:
        write_text_atomic(args.json_out, json.dumps(document(results, args.backend, args.profile, warning), indent=2) + "\n")
        console.print(f"wrote {args.json_out}")
    return 0

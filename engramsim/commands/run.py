"""`engramsim run`: execute a scenario and write results.json, steps.csv, timeline.json, plot.png.

`--backend sim` (the default) simulates it; `cpu` and `cuda` execute it for real and time it.
`--samples N` also simulates it on N profiles drawn from the profile's spreads and prints each
headline number's p5-p95 band beside it (results.json `bands`; engramsim/uncertainty.py).
Every check runs first (engramsim/commands/preflight.py); the files are written into a hidden
folder beside `--out` and renamed into place when complete, so a failed or interrupted run
leaves nothing behind.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from engramsim.commands import HELP
from engramsim.commands.preflight import add_preflight_args, ask_on_terminal, ready, target
from engramsim.errors import InputError
from engramsim.files import staged_folder
from engramsim.hardware.profile import HardwareProfile
from engramsim.metrics import GROUPS, in_group
from engramsim.runner import RunReport, run_real_report, run_sim
from engramsim.uncertainty import check_samples

CALIBRATED_SAMPLES = 8
"""Samples a simulated run on a calibrated profile with spreads draws when --samples is not given."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help=HELP["run"])
    p.add_argument("scenario", nargs="?", type=Path, default=None, help="scenario YAML (default: quickstart)")
    add_preflight_args(p)
    p.add_argument("--samples", type=int, default=None, metavar="N",
                   help="also simulate N profiles drawn from the hardware profile's uncertainty spreads (seeded by run.seed) "
                        f"and report each metric's p5/p50/p95; default {CALIBRATED_SAMPLES} on a calibrated profile with spreads, "
                        "0 (no bands) on a preset; sim backend only")
    p.add_argument("--quiet", action="store_true", help="no progress bar or tables, just the output folder")
    p.set_defaults(handler=run)


def samples_for(args: argparse.Namespace, profile: HardwareProfile, backend: str) -> int:
    """--samples, or its default for this profile (`CALIBRATED_SAMPLES` on a calibrated one with
    spreads, simulated); a count the run cannot draw is one line naming the flag."""
    if args.samples is None:
        return CALIBRATED_SAMPLES if backend == "sim" and profile.provenance.kind == "calibrated" and profile.uncertainty else 0
    if args.samples and backend != "sim":
        raise InputError("--samples", f"bands are simulated; the {backend} backend measures one run (leave --samples out)")
    check_samples(profile, args.samples)
    return args.samples


@contextlib.contextmanager
def progress_bar(console: Console, label: str, total: int) -> Iterator[Callable]:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("tokens"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda step: bar.advance(task, step.num_seqs)


@contextlib.contextmanager
def bytes_bar(console: Console, label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A real run's setup (tables allocated and filled, stand-in weights), in bytes."""
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def warn_profile_host(profile: HardwareProfile) -> str | None:
    """One stderr line when `profile` was calibrated on other hardware than this machine (real
    backends: the run is measured here, compared against numbers from elsewhere); the warning, or None."""
    from engramsim.backends.calibration.machine import check_profile_host

    warning = check_profile_host(profile)
    if warning:
        print(f"engramsim: warning: {warning}", file=sys.stderr)
    return warning


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def print_report(console: Console, report: RunReport, wall_s: float) -> None:
    """The summary metrics by group (engramsim/metrics.py), the run's speed, then one row per Engram layer."""
    s = report.document["summary"]
    backend = report.document["backend"]
    bands = report.document.get("bands")
    table = Table(title=f"{report.document['scenario']['name']} (backend {backend})", show_header=False)
    for group in GROUPS:
        if group == "link traffic" and backend == "cpu":  # no host-device link: "copies" are host memcpy
            table.add_row("host-device link", "none on the CPU backend (fetches copy within host memory)")
        else:
            for metric in in_group(group):
                band = bands["metrics"].get(metric.name) if bands else None
                beside = f" (p5-p95: {metric.number(band['p5'])} to {metric.number(band['p95'])})" if band and band["p5"] < band["p95"] else ""
                table.add_row(metric.label, metric.display(s[metric.name]) + beside)
        table.add_section()
    if backend != "sim":
        table.add_row("run time", f"{wall_s:.2f} s wall for all passes, setup included")
    else:
        table.add_row("simulator speed", f"{report.document['simulation']['events']:,} events, {wall_s:.2f} s wall for all passes")
    if bands:
        table.add_row("uncertainty", f"p5-p95 over {bands['samples']} profiles drawn from {len(bands['spreads'])} spreads "
                                     f"(seed {bands['seed']}): {', '.join(bands['spreads'])}")
    nvml = report.document.get("nvml")
    if nvml is not None:
        table.add_row("NVML", f"{nvml['samples']} samples, PCIe host->GPU {_fmt(nvml.get('pcie_rx_gbps_mean'), 3)} GB/s mean, "
                              f"SM {_fmt(nvml.get('sm_util_pct_mean'), 0)} %"
                      + "".join(f" ({why})" for why in [nvml["error"], *nvml.get("errors", {}).values()] if why))
    console.print(table)
    layers = Table(title="per Engram layer")
    for col in ("layer", "stall ms", "steps stalled", "rows fetched", "cache hits", "bytes", "dedup"):
        layers.add_column(col, justify="right")
    for layer in report.document["per_layer"]:
        layers.add_row(str(layer["layer"]), _fmt(layer["stall_ms_total"], 3), str(layer["steps_stalled"]),
                       f"{layer['rows_fetched']:,}", f"{layer['cache_hits']:,}", f"{layer['bytes_fetched']:,}",
                       _fmt(layer["dedup_ratio"], 3))
    console.print(layers)


def run(args: argparse.Namespace) -> int:
    console = Console(quiet=args.quiet)
    start = time.perf_counter()
    where = target(args)
    with staged_folder(where.out_dir, force=args.force) as staging:  # claimed now: an unwritable --out fails at once
        checked = ready(args, where, console, ask_on_terminal(Console(stderr=True, highlight=False)))
        prepared = checked.prepared
        backend = prepared.scenario.run.backend
        if checked.estimate and not args.quiet:
            print(f"engramsim: {checked.estimate}", file=sys.stderr)
        progress = None if args.quiet else lambda label, total: progress_bar(console, label, total)
        samples = samples_for(args, prepared.profile, backend)
        if backend == "sim":
            report = run_sim(prepared, staging, progress, samples)
        else:
            warn_profile_host(prepared.profile)
            setup = None if args.quiet else lambda label, total: bytes_bar(console, label, total)
            report = run_real_report(prepared, backend, staging, progress, setup)
    print_report(console, report, time.perf_counter() - start)
    console.print(f"wrote {', '.join(f.name for f in report.files)} to {where.out_dir}")
    if args.quiet:
        print(where.out_dir)
    return 0

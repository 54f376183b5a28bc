"""`engramsim calibrate`: micro-benchmark this machine and write a calibrated hardware profile.

The profile (a YAML file `load_profile` reads, usable as a scenario's `hardware.profile`) holds
the fitted numbers, the residual of each fit and where they come from (host, GPU, versions,
date). See backends/calibration/ for what is measured and how it is fitted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from engramsim.commands import HELP
from engramsim.errors import InputError
from engramsim.files import check_output, write_text_atomic
from engramsim.hardware.profile import HardwareProfile

STAGES = ("gather + h2d", "gather (quiet)", "host bandwidth", "zero-copy", "backbone", "host work")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help=HELP["calibrate"])
    p.add_argument("--backend", choices=("cpu", "cuda"), required=True, help="the real backend to calibrate")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="budget", const="quick",
                      help="fewer cases and repeats (about a minute)")
    size.add_argument("--budget", choices=("tiny", "quick", "full"),
                      help="how much to measure (default full, a few minutes; tiny is for tests: seconds, rough numbers)")
    p.add_argument("--out", type=Path, default=None, help="profile YAML to write (default: profiles/<backend>.yaml)")
    p.add_argument("--name", default=None, help="the profile's name (default: the file name without .yaml)")
    p.add_argument("--samples", type=Path, default=None, help="also write every measured timing to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress bar or tables, just the profile path")
    p.set_defaults(handler=run, budget="full")  # parser defaults win over the two options' own


@contextlib.contextmanager
def _progress(console: Console) -> Iterator[Callable[[str, int, int], None]]:
    columns = (TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        tasks = {stage: bar.add_task(stage, total=None, start=False) for stage in STAGES}

        def advance(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=None)
            task = tasks[stage]
            bar.start_task(task)
            bar.update(task, completed=done, total=total)

        yield advance


def check_out(path: Path) -> None:
    """The output must be a YAML file name in a folder we can create (checked before measuring)."""
    if path.suffix not in (".yaml", ".yml"):
        raise InputError(path, "expected a profile file ending in .yaml or .yml", field="--out")
    check_output(path)


def _fmt(value: float, digits: int = 3) -> str:
    return f"{value:,.{digits}g}"


def print_profile(console: Console, profile: HardwareProfile, wall_s: float) -> None:
    gpu, link, host = profile.gpu, profile.link, profile.host
    engram_us = gpu.layer_overhead_us if gpu.engram_overhead_us is None else gpu.engram_overhead_us
    table = Table(title=f"calibrated profile {profile.name!r} ({wall_s:.0f} s)", show_header=False)
    rows = [
        ("compute (achieved)", f"{gpu.bf16_tflops * 1e3:,.1f} GFLOP/s ({gpu.name})"),
        ("memory (achieved)", f"{gpu.hbm_gbps:,.2f} GB/s"),
        ("decode attention (achieved)", "- (not identified: see the description)" if gpu.attention_efficiency is None
         else f"{gpu.hbm_gbps * gpu.attention_efficiency:,.2f} GB/s ({gpu.attention_efficiency:.2f} x memory)"),
        ("compute + memory", "max" if gpu.roofline_exponent is None else (f"roofline exponent {gpu.roofline_exponent:.2f} "
                                                                           f"(1: they add up, 32: their max)")),
        ("layer / Engram layer / step overhead",
         f"{gpu.layer_overhead_us:,.1f} us / {engram_us:,.1f} us / {profile.step_overhead_us:,.1f} us "
         f"+ {profile.step_overhead_per_seq_us:,.2f} us per sequence"),
        ("GEMM half-performance rows", f"{gpu.gemm_half_rows:,.1f}"),
        ("kernel overhead / grouped GEMM half-rows", f"{gpu.kernel_overhead_us:,.1f} us / "
         + ("-" if gpu.grouped_gemm_half_rows is None else f"{gpu.grouped_gemm_half_rows:,.1f}")),
        ("gather", (f"{host.gather_rows_per_s / 1e6:,.2f} M rows/s per thread x {host.gather_threads}, "
                    f"overhead {host.gather_overhead_us:,.1f} us, DRAM bound {host.dram_gbps:,.1f} GB/s")),
        ("h2d", f"{link.h2d_gbps:,.2f} GB/s, latency {link.dma_latency_us:,.2f} us"),
        ("zero-copy", (f"{link.zero_copy_gbps:,.2f} GB/s, latency {link.zero_copy_latency_us:,.2f} us, "
                       f"{link.transaction_bytes} B transactions")),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    res = Table(title="residuals: (model - measured) / measured")
    for col in ("group", "samples", "mean", "p95 |err|"):
        res.add_column(col, justify="left" if col == "group" else "right")
    for key, r in profile.residuals.items():
        res.add_row(key, str(r.samples), f"{r.rel_error_mean * 100:+.1f} %", f"{r.rel_error_p95 * 100:.1f} %")
    console.print(res)


def run(args: argparse.Namespace) -> int:
    import time

    from engramsim.backends.calibration.machine import require_backend
    from engramsim.backends.calibration.profile import calibrate, profile_yaml
    from engramsim.hardware.presets import load_profile

    out: Path = args.out or Path("profiles") / f"{args.backend}.yaml"
    check_out(out)
    require_backend(args.backend)  # no GPU for --backend cuda: one line, nothing measured, nothing written
    name = args.name or out.stem
    console = Console(quiet=args.quiet)
    start = time.perf_counter()
    progress_cm = contextlib.nullcontext(None) if args.quiet else _progress(console)
    with progress_cm as advance:
        profile, measurements = calibrate(args.backend, args.budget, name, advance)
    text = profile_yaml(profile)
    if args.samples is not None:
        write_text_atomic(args.samples, json.dumps(measurements.as_dict(), indent=1) + "\n")
    write_text_atomic(out, text)
    load_profile(out)  # what was written must load (it is a bug if not)
    print_profile(console, profile, time.perf_counter() - start)
    console.print(f"wrote {out}" + (f" and {args.samples}" if args.samples else ""))
    if args.quiet:
        print(out)
    return 0

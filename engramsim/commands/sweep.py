"""`engramsim sweep SCENARIO --grid KEY=V1,V2,... [--zip ...] --out DIR`: every point of a grid run as
`engramsim run` runs it, in a local process pool or on Ray; one results file per point under
DIR/points/, and DIR/sweep.csv and DIR/sweep.parquet of them all. Resumable: the same command
again runs only the points not done. The work itself is engramsim/sweep.py and engramsim/pool.py,
imported when the command runs (pyarrow and Ray are not loaded for `engramsim --help`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from engramsim.commands import HELP

DESCRIPTION = """Run every point of a grid of scenario values as `engramsim run` runs it (offloaded, all tables in
HBM, no Engram; simulated), and write one results file per point and a table of them all.

Points are the cartesian product of the --grid lists; the --zip lists (all of one length) advance
together as one more axis. Values are parsed as `compare --vary` and --set parse them; a comma
inside {} or [] stays in its value, e.g.
  --grid hardware.link=pcie-gen4-x16,pcie-gen5-x16 --grid 'strategies.cache=none,{name: lru, params: {rows: 100000}}'
DIR/points/<id>.json is results.json of one point (id: the sha256 of its resolved scenario);
DIR/sweep.csv and DIR/sweep.parquet hold each point's values, status, error and summary metrics.
A point that fails (a value the schema refuses, a scenario that does not fit) is listed with its
error and the others run. The same command again skips the points done and retries the others;
a DIR holding another sweep is refused. --samples N runs every point on N profiles drawn from
the hardware profile's uncertainty spreads (seeded by run.seed; a `sample` column tells them
apart), so `engramsim plot` draws their p5-p95 band. --ray runs the points as Ray tasks (a local Ray instance,
or the cluster at ADDRESS); needs pip install 'engramsim[ray]'."""



def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help=HELP["sweep"],
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", type=Path, metavar="SCENARIO", help="scenario YAML")
    p.add_argument("--grid", action="append", default=[], metavar="KEY.PATH=V1,V2,...",
                   help="a scenario field and its values (repeatable: points are the cartesian product)")
    p.add_argument("--zip", action="append", default=[], metavar="KEY.PATH=V1,V2,...",
                   help="values that advance together with every other --zip's, as one axis of the product (repeatable)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="sweep folder: new, empty, or this sweep's (to resume it)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a scenario field in every point (repeatable)")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="processes (or local Ray CPUs); default: the CPU count")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run the points as Ray tasks: a local Ray instance, or the cluster at ADDRESS (HOST:PORT, ray://HOST:PORT, auto)")
    p.add_argument("--samples", type=int, default=0, metavar="N",
                   help="run every point on N profiles drawn from the profile's uncertainty spreads (default 0: the profile as it is)")
    p.add_argument("--plots", action="store_true", help="also write each point's plot.png as points/<id>.png")
    p.add_argument("--quiet", action="store_true", help="no progress or listing, just the output folder")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from engramsim import sweep
    from engramsim.errors import InputError
    from engramsim.pool import RayCluster, run_in_pool

    console = Console(quiet=args.quiet, width=None if sys.stdout.isatty() else 200)
    start = time.perf_counter()
    workers = (os.cpu_count() or 1) if args.workers is None else args.workers
    if workers < 1:
        raise InputError("--workers", f"expected a positive number of processes, got {workers}")
    definition = sweep.parse_definition(args.scenario, args.grid, args.zip, args.overrides, args.samples)
    definition, points = sweep.resolve(definition)  # every point resolved before any runs
    resuming = sweep.check_folder(args.out, definition)
    cluster = None if args.ray is None else RayCluster(args.ray or None, workers)
    try:
        where = (f"Ray ({'a local instance' if not args.ray else args.ray}, {cluster.cpus} CPUs)" if cluster
                 else f"{workers} worker process{'es' if workers != 1 else ''}")
        console.print(f"{len(points)} points{' (resuming)' if resuming else ''} on {where}", style="dim")
        with _progress(console) as progress:
            outcome = sweep.run_sweep(args.out, definition, points,
                                      cluster.run if cluster else (lambda tasks, done: run_in_pool(tasks, workers, done)),
                                      args.plots, progress)
    finally:
        if cluster is not None:
            cluster.close()
    failed = outcome.failed
    console.print(f"{len(points)} points: {outcome.ran} ran now, {outcome.skipped} done before, {len(failed)} failed "
                  f"({time.perf_counter() - start:.1f} s)")
    for point in failed[:10]:
        console.print(f"  point {point.variant.index}: {outcome.status(point)[1]}", style="red", markup=False, highlight=False)
    if len(failed) > 10:
        console.print(f"  ... {len(failed) - 10} more in {sweep.CSV}")
    console.print(f"wrote {sweep.CSV}, {sweep.PARQUET} and {sweep.POINTS}/ to {args.out}")
    if args.quiet:
        print(args.out)
    return 0


@contextlib.contextmanager
def _progress(console) -> Iterator[Callable[[int, int], Callable[[], None]] | None]:
    """A bar of points with the time left, on a terminal: yields `(to run, done before) -> advance`."""
    if not console.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("points"), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        def start(todo: int, before: int) -> Callable[[], None]:
            task = bar.add_task("sweep", total=todo + before, completed=before)
            return lambda: bar.advance(task, 1)

        yield start

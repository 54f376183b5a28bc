"""Where `engramsim sweep` runs its points: a local process pool (the default) or Ray core tasks.

A point is a resolved scenario (`Task`); `run_point` runs it as `engramsim run` does (every pass of
`runner.passes`, simulated) and returns results.json's text, not a file: the sweep's own process
writes each point's file as it comes back (a Ray worker may not share its disk), so the executor
and the worker count never change a byte. A worker imports the project once and serves many
points, so the caches behind `session.prepare` (the tokenizer's compressed vocabulary, the trace)
are filled once per worker, and points sharing a workload reuse its hashed lookups (`WORKLOADS`).
Ray is optional (`pip install 'engramsim[ray]'`) and imported only here, only when asked for.
"""

from __future__ import annotations

import gc
import multiprocessing
import signal
import socket
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from engramsim.errors import InputError
from engramsim.plot import write_plot
from engramsim.results import results_json
from engramsim.runner import results_of, run_passes, sampled, simulate_run, split_passes
from engramsim.scenario import Scenario
from engramsim.session import Workloads, prepare
from engramsim.uncertainty import check_samples

RAY_INSTALL = "pip install 'engramsim[ray]'"
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Task:
    """One point to run: its id (the file name), its resolved scenario and the file it came from."""

    id: str
    scenario: Scenario
    source: str
    plots: bool = False
    sample: int = 0  # 1..: run on the profile drawn from its spreads (`runner.sampled`)


@dataclass(frozen=True)
class Done:
    """A point's outcome: results.json's text (and plot.png's bytes with --plots), or its one-line error."""

    id: str
    text: str | None = None
    png: bytes | None = None
    error: str | None = None


def one_line(text: str) -> str:
    return " ".join(str(text).split())


WORKLOADS = Workloads()
"""This worker's recent workloads: points sharing one (`Workloads.key`; `sweep` runs them back to
back) hash their lookups once."""


def run_point(task: Task) -> Done:
    """Prepare and simulate one point: the passes and the results document `engramsim run` makes.
    A refusal (`InputError`: the point does not fit) or any other failure is the point's error,
    never the sweep's."""
    try:
        prepared = prepare(task.scenario, task.source, WORKLOADS)
        extra = None
        if task.sample:
            check_samples(prepared.profile, task.sample)
            prepared, record = sampled(prepared, task.sample)
            extra = {"sample": record}
        outcomes = run_passes(prepared, partial(simulate_run, prepared), None)
        document = results_of(prepared, outcomes, "sim", extra)
        text = results_json(document, Path(f"{task.id}.json"))
        png = None
        if task.plots:
            with tempfile.TemporaryDirectory(prefix="engramsim-point-") as tmp:
                path = Path(tmp) / "plot.png"
                write_plot(path, document, *split_passes(prepared, outcomes))
                png = path.read_bytes()
        return Done(task.id, text, png)
    except InputError as exc:
        return Done(task.id, error=one_line(f"{exc.field}: {exc.problem}" if exc.field else exc.problem))
    except Exception as exc:  # a bug met by one point must not end the others; the table names it
        return Done(task.id, error=one_line(f"{type(exc).__name__}: {exc}"))
    finally:
        gc.collect()  # a point's passes leave reference cycles holding its arrays: freed now, not points later


def _worker_init() -> None:
    """Ctrl-C reaches the whole process group: the sweep's own process stops the workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_in_pool(tasks: Sequence[Task], workers: int, done: Callable[[Done], None]) -> None:
    """Every task on a pool of `workers` processes ('spawn': a fresh interpreter per worker, safe
    whatever the parent imported, torch included); `done` is called in this process as each ends.
    An interrupt stops every worker: the points running end unfinished, the others never start."""
    if not tasks:
        return
    pool = ProcessPoolExecutor(max_workers=max(1, min(workers, len(tasks))), mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init)
    try:
        pending: set[Future[Done]] = {pool.submit(run_point, task) for task in tasks}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                done(future.result())
    except BrokenProcessPool:
        _stop(pool)
        raise InputError("--workers", "a worker process died (killed, or out of memory); the points finished so far are kept, "
                         "run the same command again to resume") from None
    except BaseException:
        _stop(pool)
        raise
    finally:
        pool.shutdown(wait=True)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Stop the workers, running points and all. The futures are left alone: the pool marks them
    broken itself, and one cancelled meanwhile makes its manager thread fail (CPython 3.11's
    `terminate_broken` sets an exception on every pending future, cancelled or not)."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()


# ---- Ray ---------------------------------------------------------------------------------------
def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InputError("--ray", f"Ray is not installed; {RAY_INSTALL}") from None
    return ray


def _check_reachable(address: str) -> None:
    """A HOST:PORT (or ray://HOST:PORT) address that answers nothing is refused within seconds
    (`ray.init` would retry for minutes)."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and the like: ray.init says at once whether it finds a cluster
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise InputError("--ray", f"cannot reach a Ray cluster at {address}: {exc.strerror or one_line(str(exc)) or 'timed out'}") from None


class RayCluster:
    """A connection to Ray: a local instance of `workers` CPUs (no address) or the cluster at
    `address`; refused in one line when Ray is missing or the address is unreachable."""

    def __init__(self, address: str | None, workers: int) -> None:
        import logging

        self.ray = _import_ray()
        if address:
            _check_reachable(address)
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
        try:
            if address:
                self.ray.init(address=address, **options)
            else:
                self.ray.init(address="local", num_cpus=workers, **options)
        except Exception as exc:
            where = f"at {address}" if address else "locally"
            raise InputError("--ray", f"cannot start or reach a Ray cluster {where}: {one_line(str(exc))}") from None
        self.cpus = max(1, int(self.ray.cluster_resources().get("CPU", workers)))

    def close(self) -> None:
        self.ray.shutdown()

    def run(self, tasks: Sequence[Task], done: Callable[[Done], None]) -> None:
        """Every task as a Ray task, at most twice the cluster's CPUs in flight; `done` is called
        here as each ends. An interrupt cancels the points in flight."""
        ray = self.ray
        remote = ray.remote(num_cpus=1)(run_point)
        queue: Iterator[Task] = iter(tasks)
        pending: list[Any] = []
        try:
            while True:
                for task in queue:
                    pending.append(remote.remote(task))
                    if len(pending) >= 2 * self.cpus:
                        break
                if not pending:
                    return
                finished, pending = ray.wait(pending, num_returns=1)
                for ref in finished:
                    done(ray.get(ref))
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise

"""How the benchmarks time device work: the way the executor's threads see it, not alone.

On the 2-core VM this was written on, 128 random rows out of a 1-2 GiB table take ~20 us back to
back on a quiet machine; right after a stand-in step, handed to a waiting worker thread, the
same gather takes 100-700 us (cold TLB and caches, the worker's wake-up), and the thread waiting
for it pays its own wake-up too. Timing fetches alone would make every stall look too small, so
fetches are timed through the executor's own fetch worker (backends/fetch.py), each after a
stand-in decode step on this thread, which then waits for the rows as an Engram layer does
(`fetch_timer`). The worker's spans have the simulator's boundaries, so each stage is measured
the way it is simulated: a gather from its hand-over to its last row; an h2d copy from the
gather's end, and a zero-copy read from its issue, until the waiting thread resumes (the fixed
latency before the transfer and the waiting thread's wake-up after it are the stage's latency).
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engramsim.backends.device import Device
from engramsim.backends.fetch import Buffers, Fetch, FetchWorker
from engramsim.plan import FetchPlan
from engramsim.records import Span

Timer = Callable[[Any, Any, Any], float]  # seconds of one gather(table, index, out)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


@dataclass(frozen=True)
class FetchTiming:
    """One fetch as the executor records it: its issue, its stages' spans and when the waiting
    compute timeline resumed (seconds of the device's clock)."""

    issued_s: float
    spans: list[Span]
    resumed_s: float


class Harness:
    """Timing on one `Device`, with the fetch worker's `threads` torch threads."""

    def __init__(self, device: Device, threads: int) -> None:
        self.device = device
        self.threads = threads

    def timed(self, marks: tuple[Any, Any]) -> float:
        """Seconds between two marks, once the device reached them."""
        self.device.synchronize()
        start, end = marks
        return self.device.seconds(end) - self.device.seconds(start)

    def device_time(self, fn: Callable[[], Any]) -> float:
        """Seconds of `fn` on the compute timeline (events on CUDA, perf_counter on the CPU)."""
        self.device.synchronize()
        start = self.device.mark()
        fn()
        end = self.device.mark()
        return self.timed((start, end))

    @contextlib.contextmanager
    def fetch_threads(self) -> Iterator[None]:
        """This thread as the fetch worker: its torch threads and device context, restored afterwards."""
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with self.device.worker():
                yield
        finally:
            torch.set_num_threads(previous)

    @contextlib.contextmanager
    def quiet_gather(self) -> Iterator[Timer]:
        """One gather(table, index, out) alone on this thread, back to back, by its own marks."""
        def alone(table: Any, index: Any, out: Any) -> float:
            start, end = self.device.gather(table, index, out)
            return float(end) - float(start)

        with self.fetch_threads():
            yield alone

    @contextlib.contextmanager
    def fetch_timer(self, step: Callable[[], None]) -> Iterator[Callable[[FetchWorker, FetchPlan, Buffers], FetchTiming]]:
        """`timed(worker, plan, buffers)`: `step` (a stand-in decode step) on this thread as the
        compute thread, then the fetch issued and handed to `worker` (a running FetchWorker),
        waited for as the executor's Engram layer waits; the fetch's spans and marks."""
        device = self.device

        def timed(worker: FetchWorker, plan: FetchPlan, buffers: Buffers) -> FetchTiming:
            step()
            fetch = Fetch(plan, buffers, device.mark())
            worker.submit(fetch)
            fetch.land(device)
            resumed = device.mark()
            device.synchronize()
            spans = [p.resolve(device) for p in worker.take_spans(fetch.plan.step)]
            return FetchTiming(device.seconds(fetch.issued), spans, device.seconds(resumed))

        with device.compute(), torch.no_grad():
            yield timed

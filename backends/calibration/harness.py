"""How the benchmarks time device work: the way the executor's threads see it, not alone.

On the 2-core VM this was written on, 128 random rows out of a 1-2 GiB table take ~20 us back to
back on a quiet machine; with an idle gap before each and a compute thread running, one gather in
ten or more takes 150-700 us (cold TLB and caches), and gathers inside real runs took 30-1000 us.
Timing fetches alone would make every stall look too small, so:

- gathers are timed as a waiting Engram layer sees them: after a stand-in decode step, handed to a
  waiting worker thread, until the computing thread sees them done (`gather_timer`);
- copies are timed under service load: a compute thread keeps running stand-in steps and every
  timed copy follows an idle wait of `FETCH_GAP_S`, as the executor's fetch worker waits for the
  next step's fetch (`service_load`, `idle`).
"""

from __future__ import annotations

import contextlib
import queue
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from engramsim.backends.device import Device

FETCH_GAP_S = 0.01  # the fetch worker's idle wait before each timed fetch under service load: about a step

Timer = Callable[[Any, Any, Any], float]  # seconds of one gather(table, index, out)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


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

    @staticmethod
    def idle() -> None:
        """Under service load, the worker's wait for the next fetch (an Event wait, as on the queue)."""
        threading.Event().wait(FETCH_GAP_S)

    @contextlib.contextmanager
    def service_load(self, steps: Sequence[Callable[[], None]]) -> Iterator[None]:
        """A compute thread running `steps` in turn (each a stand-in step ending in a synchronize)
        for as long as the block lasts; its failure is raised here."""
        stop, failure = threading.Event(), []

        def loop() -> None:
            try:
                with self.device.compute(), torch.no_grad():
                    i = 0
                    while not stop.is_set():
                        steps[i % len(steps)]()
                        i += 1
            except BaseException as exc:  # noqa: BLE001 -- raised again in the calibrating thread
                failure.append(exc)

        worker = threading.Thread(target=loop, name="calibrate-compute", daemon=True)
        worker.start()
        try:
            time.sleep(0.02)
            yield
        finally:
            stop.set()
            worker.join()
        if failure:
            raise failure[0]

    @contextlib.contextmanager
    def handoff(self) -> Iterator[Callable[[Callable[[], Any]], float]]:
        """A worker thread waiting on a queue, as the executor's FetchWorker waits for fetches;
        yields `handed(fn)`: seconds from handing `fn` over until the hander sees it done (the
        worker's wake-up and the hander's own wake-up included, as a waiting Engram layer pays them)."""
        jobs: queue.SimpleQueue = queue.SimpleQueue()

        def loop() -> None:
            torch.set_num_threads(self.threads)
            with self.device.worker():
                while (job := jobs.get()) is not None:
                    fn, done, failure = job
                    try:
                        fn()
                        self.device.synchronize()
                    except BaseException as exc:  # noqa: BLE001 -- raised again in the calibrating thread
                        failure.append(exc)
                    done.set()

        def handed(fn: Callable[[], Any]) -> float:
            done = threading.Event()
            failure: list[BaseException] = []
            t0 = time.perf_counter()
            jobs.put((fn, done, failure))
            done.wait()
            seconds = time.perf_counter() - t0
            if failure:
                raise failure[0]
            return seconds

        worker = threading.Thread(target=loop, name="calibrate-fetch", daemon=True)
        worker.start()
        try:
            yield handed
        finally:
            jobs.put(None)
            worker.join()

    @contextlib.contextmanager
    def gather_timer(self, step: Callable[[], None] | None) -> Iterator[Timer]:
        """How one gather(table, index, out) is timed: after `step` (a stand-in decode step) on
        this thread, handed to a waiting worker, until this thread sees it done; or, without a
        step, alone on this thread by the gather's own marks."""
        if step is None:
            def alone(table: Any, index: Any, out: Any) -> float:
                start, end = self.device.gather(table, index, out)
                return float(end) - float(start)

            with self.fetch_threads():
                yield alone
            return
        with self.device.compute(), torch.no_grad(), self.handoff() as handed:
            def after_step(table: Any, index: Any, out: Any) -> float:
                step()
                return handed(lambda: self.device.gather(table, index, out))

            yield after_step

"""The fetch worker: the thread that moves each fetch's rows through the transport's stages while
the compute thread runs blocks, one fetch after another in issue order.

gather: index_select of the fetched rows into a host staging buffer; h2d: staging → landing
buffer; zero_copy: rows straight into the landing buffer. Stage kinds dispatch through one
handler table. Every stage returns device marks, turned into seconds after the step's
synchronize (`Pending.resolve`).

Span boundaries follow the simulator's (simulator/engine.py), so stage totals compare: a gather
starts when the worker could take the fetch (handed over, its issuing block reached, the
previous fetch done), its wake-up included, as the simulator starts a gather at its issue with
its fixed cost inside; an h2d copy or a zero-copy read spans the transfer alone, and what comes
before it (the hand-over between stages) and after it (the waiting thread's wake-up) is the fixed
latency the simulator pays outside the span. A fetch whose first stage runs on the device (a
zero-copy read) does not wait on the host for its issuing block: the device orders it after that
block (`Device.queue_after`), so no host wake-up sits between the block's start and the read.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engramsim.backends.device import Device, Mark
from engramsim.plan import FetchPlan
from engramsim.records import Span, SpanKind
from engramsim.strategies import StageKind, Transport


@dataclass(kw_only=True)
class Pending:
    """A span whose marks become seconds after the step's synchronize."""

    kind: SpanKind
    start: Mark
    end: Mark
    step: int
    layer: int | None = None
    bytes: int = 0
    blocks: tuple[int, int] | None = None

    def resolve(self, device: Device) -> Span:
        return Span(kind=self.kind, start_s=device.seconds(self.start), end_s=device.seconds(self.end), step=self.step,
                    layer=self.layer, bytes=self.bytes, blocks=self.blocks)


@dataclass(frozen=True)
class Buffers:
    """Where one fetch reads and writes: the host table, its staging and landing slots, and the
    zero-copy view of the table (None where the transport does not use it)."""

    table: torch.Tensor
    staging: torch.Tensor | None
    landing: torch.Tensor
    zero_copy: torch.Tensor | None


@dataclass
class Fetch:
    """One Engram layer's fetch for one step, handed from the compute thread to the worker."""

    plan: FetchPlan
    buffers: Buffers
    issued: Mark  # the issuing block's start
    handed_s: float = 0.0  # host seconds when it was handed to the worker
    done: threading.Event = field(default_factory=threading.Event)
    ready: Mark | None = None  # the last stage's end
    error: BaseException | None = None

    def land(self, device: Device) -> None:
        """On the compute thread: block until the worker is done, then make the compute timeline
        wait for the rows (the worker's failure is raised here)."""
        self.done.wait()
        if self.error is not None:
            raise self.error
        device.wait_landed(self.ready)


HOST_STAGES = {StageKind.GATHER}  # stages the worker runs on the host; the others it enqueues on the device
SPAN_OF = {StageKind.GATHER: SpanKind.GATHER, StageKind.H2D: SpanKind.H2D, StageKind.ZERO_COPY: SpanKind.ZERO_COPY}


class FetchWorker:
    """The thread that runs fetches one after another, in the order they are issued."""

    def __init__(self, device: Device, transport: Transport, row_bytes: int) -> None:
        self.device, self.transport, self.row_bytes = device, transport, row_bytes
        self._jobs: queue.SimpleQueue[Fetch | None] = queue.SimpleQueue()
        self._spans: list[Pending] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="engram-fetch", daemon=True)
        self._free_s = 0.0  # host seconds when the previous fetch's last stage was handed to the device
        self._stages: dict[StageKind, Callable[[Buffers, torch.Tensor, int, float], tuple[Mark, Mark]]] = {
            StageKind.GATHER: self._gather, StageKind.H2D: self._h2d, StageKind.ZERO_COPY: self._zero_copy,
        }

    def __enter__(self) -> FetchWorker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._jobs.put(None)
        self._thread.join()

    def restart(self) -> None:
        """Forget the finished stages and the last fetch's end (after an untimed warm-up, before
        the pass's clock starts again)."""
        with self._lock:
            self._spans = []
        self._free_s = 0.0

    def submit(self, fetch: Fetch) -> None:
        fetch.handed_s = self.device.now()
        self._jobs.put(fetch)

    def take_spans(self, step: int) -> list[Pending]:
        """The finished stages of fetches for steps up to `step` (fetches issued ahead for later
        steps stay until their step has synchronized, so their marks are complete)."""
        with self._lock:
            taken = [p for p in self._spans if p.step <= step]
            self._spans = [p for p in self._spans if p.step > step]
        return taken

    def _loop(self) -> None:
        with self.device.worker(), torch.no_grad():
            while (fetch := self._jobs.get()) is not None:
                try:
                    self._run(fetch)
                except BaseException as exc:  # handed to the compute thread, which raises it
                    fetch.error = exc
                finally:
                    fetch.done.set()

    def _gather(self, b: Buffers, index: torch.Tensor, n: int, takeable_s: float) -> tuple[Mark, Mark]:
        """From when the worker could take the fetch to the last row packed."""
        assert b.staging is not None
        _, end = self.device.gather(b.table, index, b.staging[:n])
        return takeable_s, end

    def _h2d(self, b: Buffers, index: torch.Tensor, n: int, takeable_s: float) -> tuple[Mark, Mark]:
        assert b.staging is not None
        return self.device.h2d(b.landing[:n], b.staging[:n])

    def _zero_copy(self, b: Buffers, index: torch.Tensor, n: int, takeable_s: float) -> tuple[Mark, Mark]:
        assert b.zero_copy is not None
        return self.device.zero_copy(b.zero_copy, index, b.landing[:n])

    def _run(self, fetch: Fetch) -> None:
        plan, n = fetch.plan, int(fetch.plan.fetch.size)
        stages = self.transport.stages(n, self.row_bytes)
        if stages[0].kind in HOST_STAGES:
            takeable_s = max(fetch.handed_s, self._free_s, self.device.wait_reached(fetch.issued))
        else:
            self.device.queue_after(fetch.issued)
            takeable_s = max(fetch.handed_s, self._free_s)
        index = torch.from_numpy(plan.fetch)
        spans = []
        for stage in stages:
            start, end = self._stages[stage.kind](fetch.buffers, index, n, takeable_s)
            spans.append(Pending(kind=SPAN_OF[stage.kind], start=start, end=end, step=plan.step, layer=plan.layer, bytes=stage.bytes))
        self._free_s = self.device.now()
        with self._lock:
            self._spans += spans
        fetch.ready = spans[-1].end

"""The SimPy event model: GPU compute stream, copy engines, the link, host gather threads.

One process walks the steps; each step is the segment list of engramsim/skeleton.py, priced
here: consecutive compute is one timeout, cut only where a fetch is issued or an Engram layer
must wait, so there are a few events per (step, layer, transfer) and never one per row. Each
fetch is its own process through the transport's stages; an Engram layer waits for its fetch,
and that wait is the layer's stall. A fetch issued in an earlier step runs while that step
computes, and its rows wait on the device until their layer runs.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import simpy
from simpy.events import EventPriority

from engramsim.plan import FetchPlan, Planner, StepPlan
from engramsim.records import Span, SpanKind, StepLog, StepRecord, Timeline
from engramsim.scheduler import Scheduler
from engramsim.skeleton import Blocks, EngramLayer, Head, Host, Issue, Segment, skeleton
from engramsim.steps import Step
from engramsim.strategies import Stage, StageKind, TableInfo, Transport

if TYPE_CHECKING:
    from engramsim.simulator.cost import CostModel

Events = Generator[simpy.Event, Any, None]  # SimPy sends each yielded event's value back


class CountingEnvironment(simpy.Environment):
    """A SimPy environment that counts scheduled events, for the speed report."""

    def __init__(self) -> None:
        super().__init__()
        self.event_count = 0

    def schedule(self, event: simpy.Event, priority: EventPriority = simpy.core.NORMAL, delay: float = 0) -> None:
        self.event_count += 1
        super().schedule(event, priority, delay)


class Link:
    """The host-to-device direction of the link: one transfer at a time at full bandwidth.

    A transfer's fixed latency (launch, DMA setup, first round trip) is paid before it takes
    the link, so the link only counts as busy while bytes actually move.
    """

    def __init__(self, env: simpy.Environment) -> None:
        self.env = env
        self.wire = simpy.Resource(env, capacity=1)
        self.busy_s = 0.0

    def move(self, latency_s: float, wire_s: float) -> Generator[simpy.Event, None, tuple[float, float]]:
        if latency_s > 0:
            yield self.env.timeout(latency_s)
        with self.wire.request() as turn:
            yield turn
            start = self.env.now
            yield self.env.timeout(wire_s)
        self.busy_s += wire_s
        return start, self.env.now


class Engine:
    """Prices steps on simulated hardware: one handler per segment kind and per stage kind."""

    def __init__(self, cost: CostModel, tables: dict[int, TableInfo], blocks: int, transport: Transport, copy_engines: int) -> None:
        self.cost = cost
        self.tables = tables
        self.blocks = blocks
        self.transport = transport
        self.env = CountingEnvironment()
        self.link = Link(self.env)
        self.copy_engines = simpy.Resource(self.env, capacity=copy_engines)
        self.gather_pool = simpy.Resource(self.env, capacity=1)
        self.spans = Timeline()
        self._issued: dict[tuple[int, int], tuple[float, simpy.Process | None]] = {}  # (step, layer) -> issue time, fetch
        self._queued: list[tuple[float, dict]] = []  # compute enqueued but not yet simulated: seconds, span fields
        self._stages: dict[StageKind, Callable[[Stage, FetchPlan], Events]] = {
            StageKind.GATHER: self._gather, StageKind.H2D: self._h2d, StageKind.ZERO_COPY: self._zero_copy,
        }
        self._segments: dict[type, Callable[[Segment, Step, StepRecord], Events]] = {
            Host: self._host, Issue: self._issue, EngramLayer: self._engram_layer, Blocks: self._blocks, Head: self._head,
        }

    # ---- fetches -------------------------------------------------------------------------
    def _gather(self, stage: Stage, fetch: FetchPlan) -> Events:
        with self.gather_pool.request() as turn:
            yield turn
            start = self.env.now
            yield self.env.timeout(self.cost.gather_time(stage.rows, self.tables[fetch.layer].row_bytes))
        self._span(SpanKind.GATHER, start, self.env.now, fetch, stage)

    def _h2d(self, stage: Stage, fetch: FetchPlan) -> Events:
        with self.copy_engines.request() as engine:
            yield engine
            start, end = yield from self.link.move(self.cost.h2d_latency(), self.cost.h2d_wire_time(stage.bytes))
        self._span(SpanKind.H2D, start, end, fetch, stage)

    def _zero_copy(self, stage: Stage, fetch: FetchPlan) -> Events:
        wire = self.cost.zero_copy_wire_time(stage.rows, self.tables[fetch.layer].row_bytes)
        start, end = yield from self.link.move(self.cost.zero_copy_latency(), wire)
        self._span(SpanKind.ZERO_COPY, start, end, fetch, stage)

    def _span(self, kind: SpanKind, start: float, end: float, fetch: FetchPlan, stage: Stage) -> None:
        self.spans.add(Span(kind=kind, start_s=start, end_s=end, step=fetch.step, layer=fetch.layer, bytes=stage.bytes))

    def _fetch(self, fetch: FetchPlan) -> Generator[simpy.Event, None, float]:
        """Move the fetch's rows through the transport's stages in order; return when the last byte landed."""
        for stage in self.transport.stages(int(fetch.fetch.size), self.tables[fetch.layer].row_bytes):
            if stage.rows:
                yield from self._stages[stage.kind](stage, fetch)
        return self.env.now

    # ---- compute -------------------------------------------------------------------------
    def _compute(self, seconds: float, **span: object) -> None:
        """Enqueue `seconds` of compute on the stream; `span` holds the fields of its span but the times."""
        self._queued.append((seconds, span))

    def _flush(self) -> Events:
        """Simulate the queued compute as one timeout and lay out its spans back to back."""
        start = self.env.now
        total = sum(seconds for seconds, _ in self._queued)
        if total > 0:
            yield self.env.timeout(total)
        for seconds, span in self._queued:  # zero-length ones too: the real backend records every segment
            self.spans.add(Span(start_s=start, end_s=start + seconds, **span))
            start += seconds
        self._queued.clear()

    def _pending_s(self) -> float:
        return sum(seconds for seconds, _ in self._queued)

    # ---- segments ------------------------------------------------------------------------
    def _host(self, segment: Segment, step: Step, record: StepRecord) -> Events:
        self._compute(self.cost.host_time(step), kind=SpanKind.HOST, step=step.index)
        yield from ()

    def _issue(self, segment: Segment, step: Step, record: StepRecord) -> Events:
        assert isinstance(segment, Issue)
        for fetch in segment.fetches:
            process = None
            if fetch.fetch.size:
                yield from self._flush()
                process = self.env.process(self._fetch(fetch))
            self._issued[(fetch.step, fetch.layer)] = (self.env.now + self._pending_s(), process)

    def _engram_layer(self, segment: Segment, step: Step, record: StepRecord) -> Events:
        assert isinstance(segment, EngramLayer)
        plan = segment.plan
        issue_s, process = self._issued.pop((plan.step, plan.layer))
        ready_s, stall_s = issue_s, 0.0
        if process is not None:
            yield from self._flush()
            waited_from = self.env.now
            ready_s = yield process
            stall_s = self.env.now - waited_from
            if stall_s > 0:
                self.spans.add(Span(kind=SpanKind.STALL, start_s=waited_from, end_s=self.env.now, step=step.index, layer=plan.layer))
        self._compute(self.cost.engram_time(step, int(plan.rows.size)), kind=SpanKind.ENGRAM, step=step.index, layer=plan.layer)
        record.layers.append(plan.record(self.tables[plan.layer].row_bytes, issue_s, ready_s, stall_s))

    def _blocks(self, segment: Segment, step: Step, record: StepRecord) -> Events:
        assert isinstance(segment, Blocks)
        self._compute(self.cost.blocks_time(step, segment.start, segment.stop), kind=SpanKind.BLOCKS, step=step.index,
                      blocks=(segment.start, segment.stop - 1))
        yield from ()

    def _head(self, segment: Segment, step: Step, record: StepRecord) -> Events:
        self._compute(self.cost.head_time(step), kind=SpanKind.HEAD, step=step.index)
        yield from ()

    def run_step(self, plan: StepPlan) -> Generator[simpy.Event, None, StepRecord]:
        """Walk the step's segments; the record's end is when its last compute finished."""
        step = plan.step
        record = StepRecord(index=step.index, kind=step.kind, start_s=self.env.now, end_s=self.env.now,
                            tokens=step.num_tokens, seqs=step.num_seqs)
        for segment in skeleton(plan, self.blocks):
            yield from self._segments[type(segment)](segment, step, record)
        yield from self._flush()
        record.end_s = self.env.now
        return record


def simulate(engine: Engine, scheduler: Scheduler, planner: Planner, max_steps: int | None = None,
             progress: Callable[[Step], None] | None = None) -> tuple[StepLog, float]:
    """Run the scheduler's steps back to back on the engine; idle until arrivals when needed.
    Returns the step records and the makespan."""
    env = engine.env
    records = StepLog()

    def loop() -> Events:
        while not scheduler.done and (max_steps is None or len(records) < max_steps):
            step = scheduler.next_step(env.now)
            if step is None:
                arrival = scheduler.next_arrival()
                if arrival is None:
                    return
                yield env.timeout(max(0.0, arrival - env.now))
                continue
            record = yield from engine.run_step(planner.plan(scheduler.view(step, max_steps)))
            scheduler.finish_step(step, env.now)
            records.append(record)
            if progress is not None:
                progress(step)

    env.process(loop())
    env.run()
    return records, env.now

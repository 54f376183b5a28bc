"""The SimPy event model: GPU compute stream, copy engines, the link, host gather threads.

One process walks the steps. A step starts with its host work (the profile's step overhead:
scheduling, planning, input layout), then the blocks run in segments: a segment ends where a
prefetch is issued or an Engram layer starts, so there are a few events per (step, layer,
transfer) and never one per row. Each fetch is its own process through the transport's stages;
an Engram layer waits for its fetch, and that wait is the layer's stall.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import simpy

from engramsim.plan import FetchPlan, Planner
from engramsim.steps import Step
from engramsim.strategies import Stage, StepView, TableInfo, Transport

if TYPE_CHECKING:
    from engramsim.simulator.cost import CostModel


class CountingEnvironment(simpy.Environment):
    """A SimPy environment that counts scheduled events, for the speed report."""

    def __init__(self) -> None:
        super().__init__()
        self.event_count = 0

    def schedule(self, event: simpy.Event, priority: int = simpy.core.NORMAL, delay: float = 0) -> None:
        self.event_count += 1
        super().schedule(event, priority, delay)


@dataclass(frozen=True)
class Span:
    """One busy interval on a timeline lane (compute, stall, gather, copy, zero-copy)."""

    lane: str
    name: str
    start_s: float
    end_s: float
    step: int
    layer: int | None = None
    bytes: int = 0


@dataclass
class LayerRecord:
    """What one Engram layer cost in one step."""

    layer: int
    rows_unique: int
    references: int
    rows_hbm: int  # served from HBM: placed there or cache hits
    rows_fetched: int  # moved over the link (misses + speculative)
    bytes_fetched: int
    issue_s: float
    ready_s: float  # the fetch's last byte arrived (= issue when nothing was fetched)
    stall_s: float


@dataclass
class StepRecord:
    index: int
    kind: str
    start_s: float
    end_s: float
    tokens: int
    seqs: int
    layers: list[LayerRecord] = field(default_factory=list)

    @property
    def latency_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class SimOutcome:
    """Everything one simulated run produced; results.py turns it into files and metrics."""

    steps: list[StepRecord]
    spans: list[Span]
    events: int
    link_busy_s: float
    makespan_s: float


def _record(plan: FetchPlan, row_bytes: int) -> tuple[LayerRecord, int]:
    fetched = int(plan.fetch.size)
    record = LayerRecord(plan.layer, int(plan.rows.size), plan.references, plan.rows_hbm, fetched, fetched * row_bytes, 0.0, 0.0, 0.0)
    return record, plan.issue_block


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
    """Prices steps on simulated hardware with the scenario's strategies."""

    def __init__(
        self,
        cost: CostModel,
        tables: dict[int, TableInfo],
        blocks: int,
        planner: Planner,
        transport: Transport,
        copy_engines: int,
        engram: bool = True,
    ) -> None:
        """`engram=False` prices the backbone alone (no Engram layers), for the no-Engram reference."""
        self.cost = cost
        self.tables = tables
        self.blocks = blocks
        self.planner, self.transport = planner, transport
        self.engram = engram
        self.env = CountingEnvironment()
        self.link = Link(self.env)
        self.copy_engines = simpy.Resource(self.env, capacity=copy_engines)
        self.gather_pool = simpy.Resource(self.env, capacity=1)
        self.spans: list[Span] = []

    # ---- fetches -------------------------------------------------------------------------
    def _stage(self, stage: Stage, row_bytes: int, step: int, layer: int) -> Generator[simpy.Event, None, None]:
        if stage.rows == 0:
            return
        cost = self.cost
        if stage.resource == "gather":
            with self.gather_pool.request() as turn:
                yield turn
                start = self.env.now
                yield self.env.timeout(cost.gather_time(stage.rows, row_bytes))
            self.spans.append(Span("gather", f"gather L{layer}", start, self.env.now, step, layer, stage.bytes))
        elif stage.resource == "h2d":
            with self.copy_engines.request() as engine:
                yield engine
                start, end = yield from self.link.move(cost.h2d_latency(), cost.h2d_wire_time(stage.bytes))
            self.spans.append(Span("copy", f"h2d L{layer}", start, end, step, layer, stage.bytes))
        elif stage.resource == "zero_copy":
            start, end = yield from self.link.move(cost.zero_copy_latency(), cost.zero_copy_wire_time(stage.rows, row_bytes))
            self.spans.append(Span("zero-copy", f"zero-copy L{layer}", start, end, step, layer, stage.bytes))
        else:
            raise ValueError(f"transport stage names unknown resource {stage.resource!r}")

    def _fetch(self, rows: int, layer: int, step: int) -> Generator[simpy.Event, None, float]:
        """Move `rows` through the transport's stages in order; return when the last byte landed."""
        row_bytes = self.tables[layer].row_bytes
        for stage in self.transport.stages(rows, row_bytes):
            yield from self._stage(stage, row_bytes, step, layer)
        return self.env.now

    # ---- steps ---------------------------------------------------------------------------
    def run_step(self, step: Step, view: StepView) -> Generator[simpy.Event, None, StepRecord]:
        """Blocks run back to back on the compute stream; consecutive compute is one timeout,
        cut only where a fetch must start or an Engram layer must wait for its rows."""
        env, cost = self.env, self.cost
        record = StepRecord(step.index, step.kind, env.now, env.now, step.num_tokens, step.num_seqs)
        plans = {layer: _record(p, self.tables[layer].row_bytes) for layer, p in self.planner.plan(step, view).items()} if self.engram else {}
        issues: dict[int, list[int]] = {}
        for layer, (_, issue) in plans.items():
            issues.setdefault(issue, []).append(layer)
        fetches: dict[int, simpy.Process] = {}
        queued: list[tuple[str, float, int | None]] = []  # compute enqueued but not yet simulated

        def run_queued() -> Iterator[simpy.Event]:
            start = env.now
            total = sum(seconds for _, seconds, _ in queued)
            if total > 0:
                yield env.timeout(total)
            for name, seconds, layer in queued:
                if seconds > 0:
                    self.spans.append(Span("compute", name, start, start + seconds, step.index, layer))
                    start += seconds
            queued.clear()

        queued.append(("host", cost.host_time(step), None))
        cuts = sorted({0, self.blocks, *issues, *plans})
        for start, stop in zip(cuts, cuts[1:]):
            for layer in issues.get(start, []):
                lrec = plans[layer][0]
                if lrec.rows_fetched:
                    yield from run_queued()
                    fetches[layer] = env.process(self._fetch(lrec.rows_fetched, layer, step.index))
                lrec.issue_s = env.now + sum(seconds for _, seconds, _ in queued)
            if start in plans:
                lrec = plans[start][0]
                lrec.ready_s = lrec.issue_s
                if start in fetches:
                    yield from run_queued()
                    waited_from = env.now
                    lrec.ready_s = yield fetches[start]
                    lrec.stall_s = env.now - waited_from
                    if lrec.stall_s > 0:
                        self.spans.append(Span("compute", f"stall L{start}", waited_from, env.now, step.index, start))
                queued.append((f"engram L{start}", cost.engram_time(step, lrec.rows_unique), start))
                record.layers.append(lrec)
            queued.append((f"blocks {start}-{stop - 1}", cost.blocks_time(step, start, stop), None))
        queued.append(("head", cost.head_time(step), None))
        yield from run_queued()
        record.end_s = env.now
        return record


def simulate(engine: Engine, scheduler, max_steps: int | None = None, progress=None) -> SimOutcome:
    """Run the scheduler's steps back to back on the engine; idle until arrivals when needed."""
    env = engine.env
    records: list[StepRecord] = []

    def loop() -> Generator[simpy.Event, None, None]:
        while not scheduler.done and (max_steps is None or len(records) < max_steps):
            step = scheduler.next_step(env.now)
            if step is None:
                arrival = scheduler.next_arrival()
                if arrival is None:
                    return
                yield env.timeout(max(0.0, arrival - env.now))
                continue
            record = yield from engine.run_step(step, StepView(step))
            scheduler.finish_step(step, env.now)
            records.append(record)
            if progress is not None:
                progress(step)

    env.process(loop())
    env.run()
    return SimOutcome(records, engine.spans, env.event_count, engine.link.busy_s, env.now)

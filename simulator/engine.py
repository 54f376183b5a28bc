"""The SimPy event model: GPU compute stream, copy engines, the link, host gather threads.

One process walks the steps; each step is the segment list of engramsim/skeleton.py, priced
here: consecutive compute is one timeout, cut only where a fetch is issued or an Engram layer
must wait, so there are a few events per (step, layer, transfer) and never one per row. Each
fetch is its own process through the transport's stages; an Engram layer waits for its fetch,
and for the earlier fetches that carried its staged rows (`FetchPlan.staged_from`: a staging
fetch, or the previous step's fetch with its speculative rows), and that wait is the layer's
stall (in deadline mode a layer whose fetches have not all landed goes ahead at once without its
missed rows, which count as dropped). A fetch issued in an earlier step runs while that step
computes, and its rows wait on the device until their layer runs.

Rows placed in CXL memory or on NVMe reach the transport by tier (the placement says which), so
each leg is priced by its own physics; the NVMe drives serve one batch of page reads at a time.
A transport that batches layers moves every fetch issued at one point as one pipeline (its spans
split among the fetches by their bytes). A leg with a `slowdown` (a zero-copy gather holding SMs)
stretches the compute that runs while it moves bytes, and only that compute.

What the compute segments cost and how their spans are laid out is `compute.ComputeQueue`'s, one
definition for this event model, for `fast.simulate_fast`, which `simulate` takes for a pass whose
resources only ever see requests in time order (one that moves no rows, or whose transport keeps
its fetches in order), and for `bulk.simulate_bulk`, which takes such a pass whole when its steps
are a replayed schedule: the same records, spans, makespan and event count without the event
machinery.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import simpy
from simpy.events import EventPriority

from engramsim.plan import FetchKey, FetchPlan, Planner, StepPlan
from engramsim.records import Span, SpanKind, StepLog, StepRecord, Timeline
from engramsim.schedule import Replay, Served
from engramsim.simulator.bulk import simulate_bulk, takes_bulk_path
from engramsim.simulator.compute import ComputeQueue, stretch
from engramsim.simulator.cost import use_schedule_prices
from engramsim.simulator.fast import simulate_fast, takes_fast_path
from engramsim.skeleton import Blocks, EngramLayer, Head, Host, Issue, Segment, skeleton
from engramsim.steps import Step
from engramsim.strategies import Placement, Stage, StageKind, TableInfo, Tier, TierRows, Transport

if TYPE_CHECKING:
    from engramsim.simulator.cost import CostModel
    from engramsim.simulator.node import Seat, Source

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

    def move(self, latency_s: float, wire_s: float, during: Callable[[bool], None] | None = None,
             shared: Callable[[], Events] | None = None) -> Generator[simpy.Event, None, tuple[float, float]]:
        """Pay the latency, then hold the link for `wire_s`, or for as long as `shared()` takes (a
        node's GPUs share what lies beyond their links); `during(True)` / `during(False)` are
        called as the bytes start and stop moving."""
        if latency_s > 0:
            yield self.env.timeout(latency_s)
        with self.wire.request() as turn:
            yield turn
            start = self.env.now
            if during is not None:
                during(True)
            yield from hold(self.env, wire_s, shared)
            if during is not None:
                during(False)
        self.busy_s += wire_s if shared is None else self.env.now - start
        return start, self.env.now


def hold(env: simpy.Environment, seconds: float, shared: Callable[[], Events] | None) -> Events:
    """Take `seconds` (one GPU with the host to itself), or as long as `shared()` takes (a node's GPU,
    its flow through the host's shared fabric: simulator/node.py)."""
    if shared is None:
        yield env.timeout(seconds)
    else:
        yield from shared()


BESIDE = frozenset({StageKind.NVME_DIRECT})
"""Legs that run beside the rest of their fetch's pipeline rather than before it."""
INTO_HOST = frozenset({StageKind.GATHER, StageKind.CXL_GATHER, StageKind.NVME_READ})
"""Legs that put rows in host staging: a later leg of their pipeline reads the staging, not the table
(on a node, `Seat`: local DRAM rather than the table's sockets)."""


def table_shares(legs: list[Stage]) -> list[float]:
    """Per leg of a pipeline, the fraction of its rows it reads from the tables where they are placed
    rather than from host staging an earlier leg filled: a gather after an NVMe read packs the pages
    just read (its rows beyond them are the table's); a DMA or zero-copy read after any leg into host
    staging reads only the staging."""
    out, into_host, read_pages = [], False, 0
    for leg in legs:
        if leg.kind == StageKind.GATHER:
            out.append(max(0, leg.rows - read_pages) / leg.rows)
        else:
            out.append(0.0 if into_host and leg.kind in (StageKind.H2D, StageKind.ZERO_COPY) else 1.0)
        into_host = into_host or leg.kind in INTO_HOST
        read_pages += leg.rows if leg.kind == StageKind.NVME_READ else 0
    return out


SPAN_OF = {StageKind.GATHER: SpanKind.GATHER, StageKind.H2D: SpanKind.H2D, StageKind.ZERO_COPY: SpanKind.ZERO_COPY,
           StageKind.CXL_GATHER: SpanKind.CXL_GATHER, StageKind.NVME_READ: SpanKind.NVME_READ,
           StageKind.NVME_DIRECT: SpanKind.NVME_DIRECT}


class Engine:
    """Prices steps on simulated hardware: one handler per segment kind and per stage kind."""

    def __init__(self, cost: CostModel, tables: dict[int, TableInfo], blocks: int, transport: Transport, copy_engines: int,
                 placement: Placement | None = None, env: CountingEnvironment | None = None, seat: Seat | None = None) -> None:
        """`placement`: where the fetched rows live; None (or one using no tier beyond host DRAM):
        every fetched row comes from host DRAM. `env` and `seat`: one GPU of a node, in the node's
        environment, sharing its host (simulator/node.py); None: one GPU with the host to itself."""
        self.cost = cost
        self.tables = tables
        self.blocks = blocks
        self.transport = transport
        self.placement = placement
        self.tiered = placement is not None and any(
            size > 0 and tier not in (Tier.HBM, Tier.HOST) for tier, size in placement.bytes_per_tier().items())
        self.env = env or CountingEnvironment()
        self.seat = seat
        self.link = Link(self.env)
        self.copy_engines = simpy.Resource(self.env, capacity=copy_engines)
        self.gather_pool = simpy.Resource(self.env, capacity=1)
        self.drives = simpy.Resource(self.env, capacity=1) if seat is None else seat.drives
        self.spans = Timeline()
        self._issued: dict[tuple[int, int], tuple[float, simpy.Process | None]] = {}  # (step, layer) -> issue time, fetch
        self._carriers: dict[FetchKey, simpy.Process | None] = {}  # fetches later steps are served from, until a plan releases them
        self.compute = ComputeQueue(cost)  # compute enqueued but not yet simulated
        self._stages: dict[StageKind, Callable[[Stage, int, float], Generator[simpy.Event, Any, tuple[float, float]]]] = {
            StageKind.GATHER: self._gather, StageKind.H2D: self._h2d, StageKind.ZERO_COPY: self._zero_copy,
            StageKind.CXL_GATHER: self._cxl_gather, StageKind.NVME_READ: self._nvme_read, StageKind.NVME_DIRECT: self._nvme_direct,
        }
        self.interferes = any(stage.slowdown > 1 for stage in transport.stages(1, 64))
        self._slowdowns: list[float] = []  # slowdowns of the legs moving bytes now
        self._changed = self.env.event()  # succeeds whenever _slowdowns changes
        self._segments: dict[type, Callable[[Segment, Step, StepRecord], Events]] = {
            Host: self._host, Issue: self._issue, EngramLayer: self._engram_layer, Blocks: self._blocks, Head: self._head,
        }

    # ---- fetches -------------------------------------------------------------------------
    def _gather(self, stage: Stage, row_bytes: int, table_share: float) -> Generator[simpy.Event, Any, tuple[float, float]]:
        seconds = self.cost.gather_time(stage.rows, row_bytes)
        shared = None if self.seat is None else partial(
            self.seat.gather, seconds, self.cost.gather_overhead(), self.cost.gather_latency_time(stage.rows), stage.bytes, table_share)
        return (yield from self._host_gather(seconds, shared))

    def _cxl_gather(self, stage: Stage, row_bytes: int, table_share: float) -> Generator[simpy.Event, Any, tuple[float, float]]:
        seconds = self.cost.cxl_gather_time(stage.rows, row_bytes)
        return (yield from self._host_gather(seconds, None if self.seat is None else partial(self.seat.gather_cxl, seconds, stage.bytes)))

    def _host_gather(self, seconds: float, shared: Callable[[], Events] | None) -> Generator[simpy.Event, Any, tuple[float, float]]:
        """The host's gather threads, one gather at a time: `seconds` alone, or as long as `shared()`
        takes on a node (`Seat.gather`: its cores, DRAM and interconnect shared, its remote rows slower)."""
        with self.gather_pool.request() as turn:
            yield turn
            start = self.env.now
            yield from hold(self.env, seconds, shared)
        return start, self.env.now

    def _shared(self, wire_s: float, wire_bytes: int, stage: Stage, table_share: float) -> Callable[[], Events] | None:
        """How a node's GPU moves a leg's `wire_bytes` beyond its own link (`Seat.transfer`): read from
        the table (in DRAM or CXL), from host staging, or by a drive itself; None alone."""
        if self.seat is None:
            return None
        source: Source = ("device" if stage.kind == StageKind.NVME_DIRECT else "staging" if not table_share else
                          "cxl" if stage.source == Tier.CXL else "table")
        return partial(self.seat.transfer, wire_s, wire_bytes, source)

    def source(self, stage: Stage, latency_s: float, wire_s: float) -> tuple[float, float]:
        """(latency, wire seconds) of a transfer reading `stage.source`: CXL memory adds its load
        latency and moves no faster than the expanders serve."""
        if stage.source == Tier.CXL:
            return latency_s + self.cost.cxl_latency(), max(wire_s, self.cost.cxl_wire_time(stage.bytes))
        return latency_s, wire_s

    def _h2d(self, stage: Stage, row_bytes: int, table_share: float) -> Generator[simpy.Event, Any, tuple[float, float]]:
        """`copies` DMAs, each paying the fixed cost (and the source's latency), then the bytes."""
        per_copy, wire = self.source(stage, self.cost.h2d_latency(), self.cost.h2d_wire_time(stage.bytes))
        with self.copy_engines.request() as engine:
            yield engine
            return (yield from self.link.move(per_copy * stage.copies, wire, self._during(stage),
                                              self._shared(wire, stage.bytes, stage, table_share)))

    def _zero_copy(self, stage: Stage, row_bytes: int, table_share: float) -> Generator[simpy.Event, Any, tuple[float, float]]:
        latency, wire = self.source(stage, self.cost.zero_copy_latency(), self.cost.zero_copy_wire_time(stage.rows, row_bytes))
        shared = None if self.seat is None else self._shared(  # whole transactions cross the uplink too
            wire, self.cost.zero_copy_wire_bytes(stage.rows, row_bytes), stage, table_share)
        return (yield from self.link.move(latency, wire, self._during(stage), shared))

    def _nvme_read(self, stage: Stage, row_bytes: int, table_share: float) -> Generator[simpy.Event, Any, tuple[float, float]]:
        """The drives read the stage's pages into host memory: the first read's latency, then the
        pages at the drives' rate; one batch of reads at a time."""
        with self.drives.request() as turn:
            yield turn
            start = self.env.now
            seconds = self.cost.nvme_latency() + self.cost.nvme_stream_time(stage.bytes)
            yield from hold(self.env, seconds, None if self.seat is None else partial(self.seat.land_pages, seconds, stage.bytes))
        return start, self.env.now

    def _nvme_direct(self, stage: Stage, row_bytes: int, table_share: float) -> Generator[simpy.Event, Any, tuple[float, float]]:
        """The drives write the stage's pages into HBM: the first read's latency, then the pages
        at the slower of the drives' rate and the link's; the link carries them for their wire
        time only, at the end of the stream (it serves other transfers meanwhile)."""
        wire = self.cost.h2d_wire_time(stage.bytes)
        with self.drives.request() as turn:
            yield turn
            yield self.env.timeout(self.cost.nvme_latency() + max(self.cost.nvme_stream_time(stage.bytes), wire) - wire)
            return (yield from self.link.move(0.0, wire, self._during(stage), self._shared(wire, stage.bytes, stage, table_share)))

    def _during(self, stage: Stage) -> Callable[[bool], None] | None:
        """What a leg that slows compute does as its bytes start and stop moving."""
        if stage.slowdown <= 1:
            return None

        def during(moving: bool) -> None:
            if moving:
                self._slowdowns.append(stage.slowdown)
            else:
                self._slowdowns.remove(stage.slowdown)
            changed, self._changed = self._changed, self.env.event()
            changed.succeed()
        return during

    def pipeline(self, fetch: FetchPlan) -> list[Stage]:
        """The transport's stages for the fetch's rows, by the tier each row sits in."""
        row_bytes = self.tables[fetch.layer].row_bytes
        if not self.tiered:
            return self.transport.stages(int(fetch.fetch.size), row_bytes)
        return self.transport.fetch_stages(self.tier_rows(fetch), row_bytes)

    def tier_rows(self, fetch: FetchPlan) -> TierRows:
        """The fetch's rows by the tier that holds them."""
        rows = fetch.fetch
        if not self.tiered or self.placement is None:
            return {Tier.HOST: rows}
        tiers = self.placement.tier_of(fetch.layer, rows)
        return {Tier(int(t)): rows[tiers == t] for t in np.unique(tiers)}

    def _run_legs(self, stages: list[Stage], row_bytes: int,
                  record: Callable[[Stage, float, float], None]) -> Generator[simpy.Event, Any, float]:
        """Run the legs in order (a direct NVMe leg beside the others: it needs neither the host's
        threads nor a copy engine), `record` each one's span; return when the last byte landed."""
        moving = [stage for stage in stages if stage.rows]
        shares = table_shares(moving)
        beside = [self.env.process(self._leg(stage, row_bytes, record, share))
                  for stage, share in zip(moving, shares, strict=True) if stage.kind in BESIDE]
        for stage, share in zip(moving, shares, strict=True):
            if stage.kind not in BESIDE:
                yield from self._leg(stage, row_bytes, record, share)
        for process in beside:
            yield process
        return self.env.now

    def _leg(self, stage: Stage, row_bytes: int, record: Callable[[Stage, float, float], None],
             table_share: float) -> Generator[simpy.Event, Any, None]:
        start, end = yield from self._stages[stage.kind](stage, row_bytes, table_share)
        record(stage, start, end)

    def _fetch(self, fetch: FetchPlan) -> Generator[simpy.Event, Any, float]:
        """Move the fetch's rows through the transport's stages; return when the last byte landed."""
        def record(stage: Stage, start: float, end: float) -> None:
            self.spans.add(Span(kind=SPAN_OF[stage.kind], start_s=start, end_s=end, step=fetch.step, layer=fetch.layer,
                                bytes=stage.bytes, staging=fetch.staging))
        return (yield from self._run_legs(self.pipeline(fetch), self.tables[fetch.layer].row_bytes, record))

    def _fetch_together(self, fetches: tuple[FetchPlan, ...]) -> Generator[simpy.Event, Any, float]:
        """Move several fetches as one pipeline (`Transport.batch`): each leg once for all their
        rows; its span is split among the fetches by their share of its bytes."""
        pipelines = [self.pipeline(fetch) for fetch in fetches]

        def record(stage: Stage, start: float, end: float) -> None:
            key = (stage.kind, stage.slowdown, stage.source)
            shares = [sum(s.bytes for s in pipeline if (s.kind, s.slowdown, s.source) == key) for pipeline in pipelines]
            total, at = sum(shares), start
            for i, (fetch, share) in enumerate(zip(fetches, shares)):
                if share <= 0:
                    continue
                until = end if sum(shares[i + 1:]) == 0 else at + (end - start) * share / total
                self.spans.add(Span(kind=SPAN_OF[stage.kind], start_s=at, end_s=until, step=fetch.step, layer=fetch.layer,
                                    bytes=share, staging=fetch.staging))
                at = until
        return (yield from self._run_legs(self.transport.batch(pipelines), self.tables[fetches[0].layer].row_bytes, record))

    # ---- compute -------------------------------------------------------------------------
    def _flush(self) -> Events:
        """Simulate the queued compute as one timeout and lay out its spans back to back (stretched
        alike where a leg slowed it). `fast._flush` mirrors this float for float."""
        start = self.env.now
        total = self.compute.pending_s()
        scale = 1.0
        if total > 0:
            if self.interferes:
                scale = stretch((yield from self._slowed(total)), total)
            else:
                yield self.env.timeout(total)
        self.compute.lay_out(self.spans, start, scale)

    def _slowed(self, work: float) -> Generator[simpy.Event, Any, float]:
        """Run `work` seconds of compute at 1 / slowdown of its speed while a slowing leg moves
        bytes (the largest, when several do), at full speed otherwise; return the seconds it took."""
        began, left = self.env.now, work
        while True:
            factor = max(self._slowdowns, default=1.0)
            changed, since = self._changed, self.env.now
            done = self.env.timeout(left * factor)
            yield done | changed
            left -= (self.env.now - since) / factor
            if done.processed or left <= work * 1e-12:
                return self.env.now - began

    # ---- segments ------------------------------------------------------------------------
    def _host(self, segment: Segment, step: Step, record: StepRecord) -> Events:
        self.compute.host(step)
        yield from ()

    def _issue(self, segment: Segment, step: Step, record: StepRecord) -> Events:
        assert isinstance(segment, Issue)
        if self.transport.batches_layers:
            yield from self._issue_together(segment.fetches)
            return
        for fetch in segment.fetches:
            process = None
            if fetch.fetch.size:
                yield from self._flush()
                process = self.env.process(self._fetch(fetch))
            self._issued_as(fetch, self.env.now + self.compute.pending_s(), process)

    def _issue_together(self, fetches: tuple[FetchPlan, ...]) -> Events:
        """Issue every fetch of one point as one pipeline (a transport that batches layers)."""
        moving = tuple(fetch for fetch in fetches if fetch.fetch.size)
        process = None
        if moving:
            yield from self._flush()
            process = self.env.process(self._fetch(moving[0]) if len(moving) == 1 else self._fetch_together(moving))
        for fetch in fetches:
            self._issued_as(fetch, self.env.now + self.compute.pending_s(), process if fetch.fetch.size else None)

    def _issued_as(self, fetch: FetchPlan, issue_s: float, process: simpy.Process | None) -> None:
        """Remember an issued fetch: for its own Engram layer, and for later steps served from it."""
        if fetch.carries:
            self._carriers[fetch.key] = process
        if not fetch.staging:
            self._issued[(fetch.step, fetch.layer)] = (issue_s, process)

    def _engram_layer(self, segment: Segment, step: Step, record: StepRecord) -> Events:
        assert isinstance(segment, EngramLayer)
        plan = segment.plan
        issue_s, process = self._issued.pop((plan.step, plan.layer))
        if plan.carries and not plan.misses:
            process = None  # it moves only speculative rows, which serve the next step: this layer needs none of them
        ready_s, stall_s, dropped = issue_s, 0.0, False
        carriers = [p for p in (self._carriers[key] for key in plan.staged_from) if p is not None]
        waits = ([] if process is None else [process]) + carriers
        if waits:
            yield from self._flush()
        if waits and plan.deadline and not all(p.triggered for p in waits):
            ready_s, dropped = self.env.now, True  # deadline mode: go ahead without the rows; the fetches still land, unused
        elif waits:
            waited_from = self.env.now
            for waited in waits:
                ready_s = max(ready_s, (yield waited))  # each fetch's last byte; carriers may have landed before the issue
            stall_s = self.env.now - waited_from
            if stall_s > 0:
                self.spans.add(Span(kind=SpanKind.STALL, start_s=waited_from, end_s=self.env.now, step=step.index, layer=plan.layer))
        self.compute.engram(step, plan.layer, int(plan.rows.size))
        record.layers.append(plan.record(self.tables[plan.layer].row_bytes, issue_s, ready_s, stall_s, dropped))

    def _blocks(self, segment: Segment, step: Step, record: StepRecord) -> Events:
        assert isinstance(segment, Blocks)
        self.compute.blocks(step, segment.start, segment.stop)
        yield from ()

    def _head(self, segment: Segment, step: Step, record: StepRecord) -> Events:
        self.compute.head(step)
        yield from ()

    def run_step(self, plan: StepPlan) -> Generator[simpy.Event, None, StepRecord]:
        """Walk the step's segments; the record's end is when its last compute finished."""
        step = plan.step
        record = StepRecord(index=step.index, kind=step.kind, start_s=self.env.now, end_s=self.env.now,
                            tokens=step.num_tokens, seqs=step.num_seqs)
        for segment in skeleton(plan, self.blocks):
            yield from self._segments[type(segment)](segment, step, record)
        yield from self._flush()
        for key in plan.released:
            self._carriers.pop(key, None)
        record.end_s = self.env.now
        return record


def simulate(engine: Engine, scheduler: Served, planner: Planner, max_steps: int | None = None,
             progress: Callable[[Step], None] | None = None, fast: bool = True, bulk: bool = True) -> tuple[StepLog, float]:
    """Run the scheduler's steps back to back on the engine; idle until arrivals when needed.
    Returns the step records and the makespan. A pass that `fast.takes_fast_path` (one whose
    fetches go through FIFO resources, started in time order) gives the same results there without
    the event machinery, and one that `bulk.takes_bulk_path` (its steps and their plans known
    before the first runs) gives them for the whole schedule at once; `fast=False` forces the
    event model, `bulk=False` the fast path's step by step."""
    _covered(scheduler, max_steps)
    if fast and bulk and takes_bulk_path(engine, scheduler, planner):
        assert isinstance(scheduler, Replay) and isinstance(planner, Planner)
        return simulate_bulk(engine, scheduler, planner, max_steps, progress)
    if fast and takes_fast_path(engine, planner):
        return simulate_fast(engine, scheduler, planner, max_steps, progress)
    return simulate_node([engine], [scheduler], [planner], max_steps, progress)[0]


def _covered(scheduler: Served, max_steps: int | None) -> None:
    """A replay runs the steps its schedule was served for: a pass of another step limit is another schedule."""
    if isinstance(scheduler, Replay) and not scheduler.schedule.covers(max_steps):
        raise ValueError(f"a schedule of {len(scheduler.schedule.steps)} steps served under max_steps={scheduler.schedule.max_steps} "
                         f"cannot be replayed under max_steps={max_steps}")


def simulate_node(engines: list[Engine], schedulers: list[Served], planners: list[Planner], max_steps: int | None = None,
                  progress: Callable[[Step], None] | None = None) -> list[tuple[StepLog, float]]:
    """Serve each GPU's replica (its engine, scheduler and planner) at once in the engines' one
    environment; each GPU's step records and makespan (`max_steps` per GPU)."""
    env = engines[0].env
    out: list[tuple[StepLog, float]] = []

    def serve(engine: Engine, scheduler: Served, planner: Planner, records: StepLog, at: int) -> Events:
        while not scheduler.done and (max_steps is None or len(records) < max_steps):
            step = scheduler.next_step(env.now)
            if step is None:
                arrival = scheduler.next_arrival()
                if arrival is None:
                    break
                yield env.timeout(max(0.0, arrival - env.now))
                continue
            record = yield from engine.run_step(planner.plan(scheduler.view(step, max_steps)))
            scheduler.finish_step(step, env.now)
            records.append(record)
            if progress is not None:
                progress(step)
        out[at] = (records, env.now)  # the last step's end: a slowed compute's superseded timeout may still run the clock on

    for at, (engine, scheduler, planner) in enumerate(zip(engines, schedulers, planners, strict=True)):
        assert engine.env is env, "a node's engines share one environment"
        _covered(scheduler, max_steps)
        use_schedule_prices(engine.cost, scheduler, planner.layers)
        out.append((StepLog(), 0.0))
        env.process(serve(engine, scheduler, planner, out[at][0], at))
    env.run()
    return out

"""Passes simulated without the event machinery, float for float what the event model computes.

A pass qualifies (`takes_fast_path`) when the event model's resources could only ever see their
requests in time order, so each is a FIFO queue whose next grant is the later of the request and
the previous holder's release, and a fetch's whole course is known the moment it is issued:

- a pass that moves no rows (`never_fetches`: the all-HBM baseline, the no-Engram reference):
  each step is its compute back to back, and the only waits are for arrivals;
- a pass on one GPU with the host to itself whose transport keeps its fetches in order
  (`Transport.in_order`: a gather then one DMA copy, or one zero-copy read, the same legs and
  fixed latency for every fetch; it does not batch layers and its legs do not slow compute), with
  every fetched row in host DRAM, and whose prefetch sets no deadline. Every fetch then runs the
  same legs, started in time order, through FIFO resources (the host's gather threads take one gather
  at a time, the copy engines `copy_engines` copies, the link one transfer), so no fetch overtakes
  another: however far ahead it was issued (`lead_steps`), whatever it carries for later steps
  (speculative rows, waiting requests' rows), its course is known when it is issued, and an
  Engram layer waits for the last byte of its own fetch and of those that carried its staged rows.

Everything else (deadlines, which go ahead on whichever fetch has landed by an instant, a DMA per
row, whose latency grows with the rows so a later fetch may take the link first, batched or
SM-slowing transports, CXL and NVMe tiers, a node's shared host) runs on the event model.

The same scheduler calls in the same order (`next_step`, `next_arrival`, `view`, `finish_step`),
the same plans and segments (engramsim/skeleton.py), compute priced by the same `ComputeQueue`,
each fetch's legs priced by the same cost model calls, and the clock advanced by the same float
additions as the event model's timeouts, so records, spans, busy times, makespan and event count
are identical to the last bit (tests/test_fast_path.py runs every shipped scenario family and the
strategies around the boundary both ways). `events` counts what the event model schedules for the
same pass: the loop's start and end, one timeout per idle wait and per stretch of compute (and,
where legs slow compute, the condition it waits on), and per fetch its process's start and end and
each leg's resource requests, timeouts and releases.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engramsim.plan import FetchKey, FetchPlan, Planner, StepPlan
from engramsim.records import LayerRecord, Span, SpanFields, SpanKind, StepLog, StepRecord
from engramsim.schedule import Served
from engramsim.simulator.compute import stretch
from engramsim.simulator.cost import CostModel, use_schedule_prices
from engramsim.skeleton import Blocks, EngramLayer, Head, Host, Issue, skeleton
from engramsim.steps import Step
from engramsim.strategies import Stage, StageKind, Tier, Transport

if TYPE_CHECKING:
    from engramsim.simulator.engine import Engine

LOOP_EVENTS = 2
"""Events the event model's loop schedules whatever the steps: its process starting and ending."""
FETCH_EVENTS = 2
"""Events a fetch's process schedules besides its legs': its start and its end."""
LEGS = {StageKind.GATHER: SpanKind.GATHER, StageKind.H2D: SpanKind.H2D, StageKind.ZERO_COPY: SpanKind.ZERO_COPY}
"""The legs the fast path prices, and their spans."""
IN_ORDER = frozenset({(StageKind.GATHER, StageKind.H2D), (StageKind.H2D,), (StageKind.ZERO_COPY,)})
"""The pipelines of an `in_order` transport: each fetch pays one fixed latency before the link."""
Shape = tuple[StageKind, ...] | None
"""The kinds of every fetch's legs in a pass, once its first fetch is priced (`in_order_legs`)."""


def in_order_legs(transport: Transport, stages: list[Stage], shape: Shape) -> tuple[StageKind, ...]:
    """The kinds of a fetch's moving legs, checked against `Transport.in_order`'s promise (one of
    `IN_ORDER`, one copy per DMA, no slowdown, read from host DRAM, the same for every fetch of the
    pass: `shape`, the first fetch's, or None for the first)."""
    kinds = tuple(stage.kind for stage in stages)
    if (kinds not in IN_ORDER or any(stage.copies != 1 or stage.slowdown > 1 or stage.source != Tier.HOST for stage in stages)
            or (shape is not None and kinds != shape)):
        legs = ", ".join(f"{stage.kind.value} x{stage.copies}" for stage in stages)
        raise RuntimeError(f"transport {transport.name!r} says its fetches keep their order (in_order), but a fetch of {stages[0].rows} "
                           f"rows has legs [{legs}] after [{', '.join(kind.value for kind in shape or kinds)}]: set in_order = False")
    return kinds


def never_fetches(planner: object) -> bool:
    """Whether `planner` can never produce a fetch: it plans no Engram layer (a pass without
    Engram), or its placement keeps every row of every table in HBM (`bytes_per_tier` puts bytes
    in HBM and none in any other tier), so no row misses, no speculative guess survives (guesses
    are cut to rows outside HBM) and no waiting request's row is staged (the same). Anything else
    (another planner type, a placement that does not say) is decided by `takes_fast_path`."""
    if not isinstance(planner, Planner):
        return False
    if not planner.layers:
        return True
    try:
        per_tier = planner.placement.bytes_per_tier()
    except NotImplementedError:
        return False
    return per_tier.get(Tier.HBM, 0) > 0 and all(size <= 0 for tier, size in per_tier.items() if tier != Tier.HBM)


def takes_fast_path(engine: Engine, planner: object) -> bool:
    """Whether the pass of `engine` and `planner` qualifies for the fast path (the module's docstring)."""
    if never_fetches(planner):
        return True
    if not isinstance(planner, Planner) or engine.seat is not None or planner.prefetch.deadline:
        return False
    transport = engine.transport
    return keeps_order(transport) and not transport.batches_layers and not engine.interferes and not engine.tiered


def keeps_order(transport: Transport) -> bool:
    """`Transport.in_order`, as promised by the class that wrote the transport's legs or one below
    it: a subclass that writes its own `stages` does not inherit its parent's promise."""
    mro = type(transport).__mro__
    promised = next(cls for cls in mro if "in_order" in vars(cls))
    wrote = next(cls for cls in mro if "stages" in vars(cls))
    return transport.in_order and issubclass(promised, wrote)


Leg = tuple[StageKind, float, float, int]
"""A leg priced: its kind, then a gather's seconds or a DMA's (all copies') or a zero-copy read's
latency, then the seconds its bytes hold the link (0 for a gather), then its bytes."""


def leg_seconds(cost: CostModel, kind: StageKind, rows: Any, nbytes: Any, copies: Any, row_bytes: int) -> tuple[Any, Any]:
    """A leg's two prices (`Leg`) for rows in host DRAM, the fast paths' only source: of one leg,
    or element-wise of arrays of them (`RooflineCostModel`'s fetch prices take arrays)."""
    if kind == StageKind.GATHER:
        return cost.gather_time(rows, row_bytes), 0.0
    if kind == StageKind.H2D:
        return cost.h2d_latency() * copies, cost.h2d_wire_time(nbytes)
    return cost.zero_copy_latency(), cost.zero_copy_wire_time(rows, row_bytes)


class Resources:
    """When each of the event model's fetch resources is next free: the host's gather threads, each
    copy engine, the link (one GPU's). `run` grants a fetch's legs as the event model would."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.gather = 0.0
        self.copy_engines = [0.0] * int(engine.copy_engines.capacity)
        self.link = 0.0
        self.shape: Shape = None

    def fetch(self, fetch: FetchPlan, now: float) -> tuple[float, int]:
        """Price the fetch's legs and `run` them from `now`, its spans added to the engine's timeline."""
        engine, cost = self.engine, self.engine.cost
        row_bytes = engine.tables[fetch.layer].row_bytes
        stages = [stage for stage in engine.pipeline(fetch) if stage.rows]
        self.shape = in_order_legs(engine.transport, stages, self.shape)
        legs: list[Leg] = [(stage.kind, *leg_seconds(cost, stage.kind, stage.rows, stage.bytes, stage.copies, row_bytes), stage.bytes)
                           for stage in stages]
        spans: list[SpanFields] = []
        landed = self.run(legs, now, fetch.step, fetch.layer, fetch.staging, spans)
        engine.spans.record(spans)
        return landed

    def run(self, legs: list[Leg], at: float, step: int, layer: int, staging: bool, spans: list[SpanFields]) -> tuple[float, int]:
        """Run a fetch's legs one after another from `at`, each granted by its resource as the event
        model grants it, their spans appended to `spans`; (when its last byte landed, the events the
        event model schedules for it)."""
        events = FETCH_EVENTS
        for kind, first, wire, nbytes in legs:
            if kind == StageKind.GATHER:  # the pool's request, the gather's timeout, the release
                start = at if at >= self.gather else self.gather
                end = self.gather = start + first
                events += 3
            else:
                engine_at = -1
                if kind == StageKind.H2D:  # a copy engine's request and release around the link's
                    free = min(self.copy_engines)
                    engine_at = self.copy_engines.index(free)
                    at = at if at >= free else free
                    events += 2
                if first > 0:  # `engine.Link.move`: the latency's timeout, the link's request, the wire's timeout, the release
                    at, events = at + first, events + 1
                start = at if at >= self.link else self.link
                end = self.link = start + wire
                self.engine.link.busy_s += wire
                events += 3
                if engine_at >= 0:
                    self.copy_engines[engine_at] = end
            spans.append((LEGS[kind], start, end, step, layer, nbytes, None, staging))
            at = end
        return at, events


class Fetches:
    """The fetches issued and not yet waited for, as `Engine` keeps them: each Engram layer's own
    (its issue time, when its last byte landed: None for a fetch that moves nothing), and the
    fetches later steps' staged rows came with, until a plan releases them."""

    def __init__(self, engine: Engine) -> None:
        self.resources = Resources(engine)
        self.issued: dict[tuple[int, int], tuple[float, float | None]] = {}
        self.carriers: dict[FetchKey, float | None] = {}


def simulate_fast(engine: Engine, scheduler: Served, planner: Planner, max_steps: int | None = None,
                  progress: Callable[[Step], None] | None = None) -> tuple[StepLog, float]:
    """`engine.simulate` for a pass that `takes_fast_path`: the step records and the makespan."""
    use_schedule_prices(engine.cost, scheduler, planner.layers)
    records = StepLog()
    fetches = Fetches(engine)
    now, events = 0.0, LOOP_EVENTS
    while not scheduler.done and (max_steps is None or len(records) < max_steps):
        step = scheduler.next_step(now)
        if step is None:
            arrival = scheduler.next_arrival()
            if arrival is None:
                break
            now += max(0.0, arrival - now)  # what SimPy's timeout does to the clock
            events += 1
            continue
        record, now, step_events = _run_step(engine, planner.plan(scheduler.view(step, max_steps)), now, fetches)
        events += step_events
        scheduler.finish_step(step, now)
        records.append(record)
        if progress is not None:
            progress(step)
    engine.env.event_count += events
    return records, now


def _flush(engine: Engine, now: float) -> tuple[float, int]:
    """`Engine._flush`: the queued compute as one stretch from `now`; (the clock after it, its events)."""
    total, scale, events = engine.compute.pending_s(), 1.0, 0
    start = now
    if total > 0:  # one timeout of the total (and the condition a slowed compute waits on)
        now = start + total
        events = 2 if engine.interferes else 1
        if engine.interferes:
            scale = stretch(now - start, total)
    engine.compute.lay_out(engine.spans, start, scale)
    return now, events


def _engram_layer(engine: Engine, step: Step, plan: FetchPlan, now: float, fetches: Fetches) -> tuple[float, int, LayerRecord]:
    """`Engine._engram_layer`: flush, wait for the last byte of the layer's own fetch and of those
    that carried its staged rows, run the layer; (the clock after the wait, its events, the record)."""
    issue_s, landed = fetches.issued.pop((plan.step, plan.layer))
    if plan.carries and not plan.misses:
        landed = None  # it moves only speculative rows, which serve the next step: this layer needs none of them
    carried = (fetches.carriers[key] for key in plan.staged_from)
    waits = ([] if landed is None else [landed]) + [at for at in carried if at is not None]
    ready_s, stall_s, events = issue_s, 0.0, 0
    if waits:
        now, events = _flush(engine, now)
        waited_from = now
        for at in waits:  # each wait moves the clock to that fetch's last byte, if it is later
            ready_s = ready_s if ready_s >= at else at
            now = now if now >= at else at
        stall_s = now - waited_from
        if stall_s > 0:
            engine.spans.add(Span(kind=SpanKind.STALL, start_s=waited_from, end_s=now, step=step.index, layer=plan.layer))
    engine.compute.engram(step, plan.layer, int(plan.rows.size))
    return now, events, plan.record(engine.tables[plan.layer].row_bytes, issue_s, ready_s, stall_s, False)


def _run_step(engine: Engine, plan: StepPlan, now: float, fetches: Fetches) -> tuple[StepRecord, float, int]:
    """`Engine.run_step` on the fast path: (the record, the clock at its end, its events)."""
    step, compute = plan.step, engine.compute
    record = StepRecord(index=step.index, kind=step.kind, start_s=now, end_s=now, tokens=step.num_tokens, seqs=step.num_seqs)
    events = 0
    for segment in skeleton(plan, engine.blocks):
        kind = type(segment)
        if kind is Blocks:
            assert isinstance(segment, Blocks)
            compute.blocks(step, segment.start, segment.stop)
        elif kind is EngramLayer:
            assert isinstance(segment, EngramLayer)
            now, waited, layer = _engram_layer(engine, step, segment.plan, now, fetches)
            events += waited
            record.layers.append(layer)
        elif kind is Issue:
            assert isinstance(segment, Issue)
            for fetch in segment.fetches:  # `Engine._issue` and `_issued_as`
                landed = None
                if fetch.fetch.size:
                    now, flushed = _flush(engine, now)
                    landed, moved = fetches.resources.fetch(fetch, now)
                    events += flushed + moved
                if fetch.carries:
                    fetches.carriers[fetch.key] = landed
                if not fetch.staging:
                    fetches.issued[(fetch.step, fetch.layer)] = (now + compute.pending_s(), landed)
        elif kind is Host:
            compute.host(step)
        elif kind is Head:
            compute.head(step)
    now, flushed = _flush(engine, now)
    for key in plan.released:
        fetches.carriers.pop(key, None)
    record.end_s = now
    return record, now, events + flushed

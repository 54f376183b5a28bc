"""A pass priced in bulk: the fast path's floats (simulator/fast.py) for a whole schedule at once.

A pass qualifies (`takes_bulk_path`) when it takes the fast path with compute that no leg slows,
and besides: its steps are a replayed schedule (engramsim/schedule.py), so all are known before
the first runs; its cost model priced them all at once (`RooflineCostModel.price`); and its
planner's plan of a step depends on that step alone (`Planner.stateless`: a cache of no rows,
every row in one tier, each fetch issued in its own step, no speculative rows, no staging, no
deadline). Every step's plan is then read off its lookups (rows looked up, references, rows
fetched) and the block its prefetch policy issues each fetch at (asked as the planner asks it);
every compute segment's seconds off the prices; each fetch's legs priced by the cost model when
it is planned. Only the clock is carried from step to step, in one loop of the float additions and
comparisons `fast._run_step` makes, in the same order: the step's compute flushed where a fetch
is issued, an Engram layer waits, or the step ends; each leg granted by its FIFO resource. Records
are built as columns, spans as fields (`Timeline.record`).

The passes of a paper-4B run all qualify (all-host placement, no cache, layer-ahead prefetch,
staged transport; the all-HBM baseline; the no-Engram reference). tests/test_fast_path.py runs
passes every way, against the fast path and the event model, to the bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from engramsim.plan import HBM, Planner
from engramsim.records import KINDS, LAYER_DTYPE, STEP_DTYPE, SpanFields, SpanKind, StepLog
from engramsim.schedule import Replay, Served
from engramsim.simulator.compute import add_up
from engramsim.simulator.cost import RooflineCostModel, use_schedule_prices
from engramsim.simulator.fast import LOOP_EVENTS, Leg, Resources, Shape, in_order_legs, leg_seconds, takes_fast_path
from engramsim.steps import Step

if TYPE_CHECKING:
    from engramsim.simulator.engine import Engine

COMPUTE, ISSUE, WAIT = 0, 1, 2  # a step program's operations


def takes_bulk_path(engine: Engine, scheduler: Served, planner: object) -> bool:
    """Whether the pass qualifies for the bulk path (the module's docstring); its cost model must
    price steps at once (`RooflineCostModel.price`: no roofline exponent)."""
    if not isinstance(scheduler, Replay) or not scheduler.schedule.steps or not isinstance(planner, Planner):
        return False
    cost = engine.cost
    if not isinstance(cost, RooflineCostModel) or cost.exponent is not None:
        return False
    return not engine.interferes and takes_fast_path(engine, planner) and planner.stateless() is not None


class Program:
    """One step's segments (engramsim/skeleton.py) for Engram layers whose fetches are issued at
    `issue_blocks`: a list of operations, each compute segment with its seconds in every step."""

    def __init__(self, cost: RooflineCostModel, blocks: int, layers: list[int], issue_blocks: tuple[int, ...],
                 engram_s: dict[int, list[float]]) -> None:
        prices = cost.prices
        assert prices is not None
        issues: dict[int, list[int]] = {}
        for at, block in enumerate(issue_blocks):
            issues.setdefault(block, []).append(at)
        waits = {layer: at for at, layer in enumerate(layers)}
        ops: list[tuple] = [(COMPUTE, prices.host, SpanKind.HOST, None, None)]
        cuts = sorted({0, blocks, *issues, *layers})
        for start, stop in zip(cuts, cuts[1:]):
            if start in issues:
                ops.append((ISSUE, issues[start]))
            if start in waits:
                ops.append((WAIT, waits[start]))
                ops.append((COMPUTE, engram_s[start], SpanKind.ENGRAM, start, None))
            ops.append((COMPUTE, cost.priced_blocks(start, stop), SpanKind.BLOCKS, None, (start, stop - 1)))
        ops.append((COMPUTE, prices.head, SpanKind.HEAD, None, None))
        self.ops = ops


def _legs(engine: Engine, counts: np.ndarray, row_bytes: int, shape: Shape) -> tuple[dict[int, list[Leg]], Shape]:
    """The legs (`fast.Leg`) of a fetch of each of `counts` rows (distinct, > 0), priced at once as
    `fast.Resources.fetch` prices each (the rows in host DRAM, their only source here); and their
    kinds, checked the same for every fetch of the pass (`shape`: the kinds so far, None at first)."""
    cost = engine.cost
    pipelines = [[stage for stage in engine.transport.stages(count, row_bytes) if stage.rows] for count in counts.tolist()]
    for pipeline in pipelines:
        shape = in_order_legs(engine.transport, pipeline, shape)
    kinds = list(shape or ())
    priced = []
    for leg, kind in enumerate(kinds):
        rows, nbytes, copies = (np.array([getattr(pipeline[leg], name) for pipeline in pipelines], dtype=np.int64)
                                for name in ("rows", "bytes", "copies"))
        first, wire = (np.broadcast_to(price, rows.shape).tolist() for price in leg_seconds(cost, kind, rows, nbytes, copies, row_bytes))
        priced.append(list(zip([kind] * rows.size, first, wire, nbytes.tolist(), strict=True)))
    return {count: [legs[at] for legs in priced] for at, count in enumerate(counts.tolist())}, shape


def simulate_bulk(engine: Engine, scheduler: Replay, planner: Planner, max_steps: int | None = None,
                  progress: Callable[[Step], None] | None = None) -> tuple[StepLog, float]:
    """`engine.simulate` for a pass that `takes_bulk_path`: the step records and the makespan."""
    cost = engine.cost
    use_schedule_prices(cost, scheduler, planner.layers)
    assert isinstance(cost, RooflineCostModel) and cost.prices is not None
    steps, layers, tier = scheduler.schedule.steps, planner.layers, planner.stateless()
    n = len(steps)
    # ---- every step's plan: rows looked up, references, rows fetched, the block each fetch is issued at
    looked_up = scheduler.schedule.lookups(layers)
    rows = {layer: looked_up[layer][0] for layer in layers}
    references = {layer: looked_up[layer][1] for layer in layers}
    issue_blocks: list[tuple[int, ...]] = []
    for step in steps:
        view = scheduler.view(step, max_steps)
        issue_blocks.append(tuple(planner.issue_at(layer, view, step.index)[1] for layer in layers))
    fetched = {layer: np.zeros(n, dtype=np.int64) if tier == HBM else rows[layer] for layer in layers}
    engram_s = {layer: [cost.prices.engram[(i, r)] for i, r in enumerate(rows[layer].tolist())] for layer in layers}
    programs = {blocks: Program(cost, engine.blocks, layers, blocks, engram_s) for blocks in set(issue_blocks)}
    row_bytes = [engine.tables[layer].row_bytes for layer in layers]
    legs: list[list[list[Leg] | None]] = []
    shape: Shape = None
    for at, layer in enumerate(layers):
        counts = fetched[layer]
        priced: dict[int, list[Leg]] = {}
        if counts.any():
            priced, shape = _legs(engine, np.unique(counts[counts > 0]), row_bytes[at], shape)
        legs.append([priced.get(count) for count in counts.tolist()])

    # ---- the clock, step by step
    spans: list[SpanFields] = []  # in the order the fast path records them (each kind's in time order)
    record = spans.append
    resources = Resources(engine)
    now, events = 0.0, LOOP_EVENTS
    starts, ends = [], []
    issue_s = [[0.0] * n for _ in layers]
    ready_s = [[0.0] * n for _ in layers]
    stall_s = [[0.0] * n for _ in layers]
    for i in range(n):
        starts.append(now)
        queued: list[tuple] = []  # compute enqueued, not yet flushed: (seconds, kind, layer, blocks)
        landed: list[float | None] = [None] * len(layers)
        for op in programs[issue_blocks[i]].ops:
            code = op[0]
            if code == COMPUTE:
                queued.append((op[1][i], op[2], op[3], op[4]))
                continue
            if code == ISSUE:
                for at in op[1]:
                    fetch = legs[at][i]
                    if fetch is None:  # nothing to move: issued when the compute queued so far would end
                        issue_s[at][i] = now + add_up(segment[0] for segment in queued)
                        continue
                    now, flushed = _flush(record, queued, now, i)
                    issue_s[at][i] = now
                    landed[at], moved = resources.run(fetch, now, i, layers[at], False, spans)
                    events += flushed + moved
                continue
            at = op[1]  # WAIT: the Engram layer waits for its fetch's last byte
            ready, done = issue_s[at][i], landed[at]
            if done is not None:
                now, flushed = _flush(record, queued, now, i)
                events += flushed
                waited_from = now
                ready = ready if ready >= done else done
                now = now if now >= done else done
                stall = stall_s[at][i] = now - waited_from
                if stall > 0:
                    record((SpanKind.STALL, waited_from, now, i, layers[at], 0, None, False))
            ready_s[at][i] = ready
        now, flushed = _flush(record, queued, now, i)
        events += flushed
        ends.append(now)
        scheduler.finish_step(steps[i], now)
        if progress is not None:
            progress(steps[i])
    engine.env.event_count += events
    engine.spans.record(spans)

    # ---- the records, as columns
    out = np.zeros(n, dtype=STEP_DTYPE)
    out["index"] = [step.index for step in steps]
    out["kind"] = [KINDS.index(step.kind) for step in steps]
    out["start_s"], out["end_s"] = starts, ends
    out["tokens"] = [step.num_tokens for step in steps]
    out["seqs"] = [step.num_seqs for step in steps]
    out["first_layer"] = np.arange(n, dtype=np.int64) * len(layers)
    per_layer = np.zeros((n, len(layers)), dtype=LAYER_DTYPE)
    for at, layer in enumerate(layers):
        column = per_layer[:, at]
        column["layer"] = layer
        column["rows_unique"], column["references"] = rows[layer], references[layer]
        column["rows_placed_hbm"] = rows[layer] - fetched[layer]
        column["rows_missed"] = fetched[layer]
        column["bytes_fetched"] = fetched[layer] * row_bytes[at]
        column["issue_step"] = np.arange(n)
        column["issue_s"], column["ready_s"], column["stall_s"] = issue_s[at], ready_s[at], stall_s[at]
    log = StepLog()
    log.extend(out, per_layer.reshape(-1))
    return log, now


def _flush(record: Callable[[SpanFields], None], queued: list[tuple], now: float, step: int) -> tuple[float, int]:
    """`fast._flush` of compute no leg slows: the queued segments back to back from `now`, their
    spans recorded; (the clock after them, the events: one timeout, if they take any time)."""
    total, start = 0.0, now
    for seconds, kind, layer, blocks in queued:  # the total as `add_up` adds it; the spans as `ComputeQueue.lay_out` lays them out
        total += seconds
        record((kind, start, start + seconds, step, layer, 0, blocks, False))
        start += seconds
    queued.clear()
    return (now + total, 1) if total > 0 else (now, 0)

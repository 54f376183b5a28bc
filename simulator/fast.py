"""Passes that move no rows, simulated without the event machinery.

The all-HBM baseline and the no-Engram reference never fetch: each step is its compute segments
(engramsim/skeleton.py) back to back, and the only waits are for arrivals. `simulate` (engine.py)
runs such a pass here when the planner can never produce a fetch (`never_fetches`): the same
scheduler calls in the same order (`next_step`, `next_arrival`, `view`, `finish_step`), the same
plans, the segments priced by the same `ComputeQueue` and its spans laid out by the same code, and
the clock advanced by the same float additions as the event model's timeouts (one per step's
compute, one per idle wait), so records, spans and makespan are identical to the last bit
(tests/test_fast_path.py runs every shipped scenario family through both).

`events`: the fast path adds to the engine's event count the events the event model schedules
for the same pass (the loop's start and end, one timeout per idle wait and per step with compute,
plus the slowed-compute condition per step for a transport whose legs slow compute), so a
results file does not depend on the path taken.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from engramsim.plan import FetchPlan, Planner, StepPlan
from engramsim.records import StepLog, StepRecord
from engramsim.scheduler import Scheduler
from engramsim.simulator.compute import stretch
from engramsim.skeleton import Blocks, EngramLayer, Head, Host, Issue, skeleton
from engramsim.steps import Step
from engramsim.strategies import Tier

if TYPE_CHECKING:
    from engramsim.simulator.engine import Engine

LOOP_EVENTS = 2
"""Events the event model's loop schedules whatever the steps: its process starting and ending."""


def never_fetches(planner: object) -> bool:
    """Whether `planner` can never produce a fetch: it plans no Engram layer (a pass without
    Engram), or its placement keeps every row of every table in HBM (`bytes_per_tier` puts bytes
    in HBM and none in any other tier), so no row misses, no speculative guess survives (guesses
    are cut to rows outside HBM) and no waiting request's row is staged (the same). Anything else
    (another planner type, a placement that does not say) takes the event path."""
    if not isinstance(planner, Planner):
        return False
    if not planner.layers:
        return True
    try:
        per_tier = planner.placement.bytes_per_tier()
    except NotImplementedError:
        return False
    return per_tier.get(Tier.HBM, 0) > 0 and all(size <= 0 for tier, size in per_tier.items() if tier != Tier.HBM)


def _moves_nothing(fetch: FetchPlan, planner: Planner) -> None:
    if fetch.fetch.size or fetch.staging or fetch.carries or fetch.staged.size:
        raise RuntimeError(f"placement {planner.placement.name!r} says it keeps every row in HBM (bytes_per_tier), but "
                           f"step {fetch.step} fetches rows of layer {fetch.layer}")


def simulate_without_fetches(engine: Engine, scheduler: Scheduler, planner: Planner, max_steps: int | None = None,
                             progress: Callable[[Step], None] | None = None) -> tuple[StepLog, float]:
    """`engine.simulate` for a planner that `never_fetches`: the step records and the makespan."""
    records = StepLog()
    issued: dict[tuple[int, int], float] = {}  # (step, layer) -> issue time, for fetches issued ahead of their step
    now, events = 0.0, LOOP_EVENTS
    per_flush = 2 if engine.interferes else 1  # the compute's timeout (and, where legs slow compute, the condition it waits on)
    while not scheduler.done and (max_steps is None or len(records) < max_steps):
        step = scheduler.next_step(now)
        if step is None:
            arrival = scheduler.next_arrival()
            if arrival is None:
                break
            now += max(0.0, arrival - now)  # what SimPy's timeout does to the clock
            events += 1
            continue
        record, now, computed = _run_step(engine, planner, planner.plan(scheduler.view(step, max_steps)), now, issued)
        if computed:
            events += per_flush
        scheduler.finish_step(step, now)
        records.append(record)
        if progress is not None:
            progress(step)
    engine.env.event_count += events
    return records, now


def _run_step(engine: Engine, planner: Planner, plan: StepPlan, now: float,
              issued: dict[tuple[int, int], float]) -> tuple[StepRecord, float, bool]:
    """`Engine.run_step` for a plan that moves no rows: (the record, the clock at its end, whether
    it had compute to simulate)."""
    step, compute = plan.step, engine.compute
    record = StepRecord(index=step.index, kind=step.kind, start_s=now, end_s=now, tokens=step.num_tokens, seqs=step.num_seqs)
    for segment in skeleton(plan, engine.blocks):
        kind = type(segment)
        if kind is Blocks:
            assert isinstance(segment, Blocks)
            compute.blocks(step, segment.start, segment.stop)
        elif kind is EngramLayer:
            assert isinstance(segment, EngramLayer)
            layer = segment.plan
            _moves_nothing(layer, planner)
            issue_s = issued.pop((layer.step, layer.layer))
            compute.engram(step, layer.layer, int(layer.rows.size))
            record.layers.append(layer.record(engine.tables[layer.layer].row_bytes, issue_s, issue_s, 0.0, False))
        elif kind is Issue:
            assert isinstance(segment, Issue)
            for fetch in segment.fetches:
                _moves_nothing(fetch, planner)
                issued[(fetch.step, fetch.layer)] = now + compute.pending_s()
        elif kind is Host:
            compute.host(step)
        elif kind is Head:
            compute.head(step)
    start, total, scale = now, compute.pending_s(), 1.0
    if total > 0:  # the event model's `_flush`: one timeout of the total
        now = start + total
        if engine.interferes:
            scale = stretch(now - start, total)
    compute.lay_out(engine.spans, start, scale)
    record.end_s = now
    return record, now, total > 0

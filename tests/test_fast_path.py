"""The simulator's three ways through a pass give the same pass: the bulk path (simulator/bulk.py)
and the fast path (simulator/fast.py) give what the event model gives, and a replayed schedule
(engramsim/schedule.py) what the scheduler itself gives. Every pass of every shipped scenario
family, and of the strategies around the paths' boundaries (timed arrivals, fetches planned steps
ahead, speculation, staging, caches, a transport that slows compute, one that batches layers,
several Engram layers whose fetches queue for the gather threads, the copy engines and the link),
run each way, has identical step and layer records, spans (every float to the bit), busy time by
kind, link time, makespan, event count, token counts and request latencies."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest

import engramsim.runner as runner
from engramsim.records import RunOutcome
from engramsim.runner import passes, simulate_run
from engramsim.scenario_io import load_scenario
from engramsim.schedule import Replay
from engramsim.session import Prepared, prepare
from engramsim.simulator import engine
from engramsim.simulator.bulk import takes_bulk_path
from engramsim.simulator.fast import never_fetches, takes_fast_path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted([*ROOT.glob("scenarios/*.yaml"), *ROOT.glob("scenarios/validation/*.yaml"), *ROOT.glob("scenarios/compare/*.yaml")])
SMALL = ("workload.requests=8", "run.max_steps=400", "run.baseline=true")
QUICKSTART = ROOT / "scenarios" / "quickstart.yaml"
TIMED = ("workload.arrival={kind: poisson, rate_per_s: 5}", "workload.output_len={dist: uniform, low: 4, high: 16}")  # idle waits
VARIANTS = {
    "poisson-arrivals": TIMED,
    "lead-steps": ("strategies.prefetch={name: layer-ahead, params: {lead_steps: 1}}",),
    "speculative-decode": ("strategies.prefetch=speculative-decode", *TIMED),
    "prefill-ahead": ("strategies.prefetch=prefill-ahead", *TIMED),
    "lru-cache": ("strategies.cache={name: lru, params: {rows: 100000}}",),
    "zero-copy-sm": ("strategies.transport=zero-copy-sm",),
    "staged-batched": ("strategies.transport=staged-batched",),
    "max-steps": ("run.max_steps=5",),
    "three-layers-queueing": ("model.engram.layers=[1,2,4]", "hardware.link=pcie-gen3-x16"),
    "lead-blocks": ("model.engram.layers=[2,5]", "strategies.prefetch={name: layer-ahead, params: {lead_blocks: 2}}"),
    "on-demand": ("strategies.prefetch=on-demand", *TIMED),
    "zero-copy": ("strategies.transport=zero-copy", "model.engram.layers=[1,3]"),
    "row-copy": ("strategies.transport=row-copy",),
    "row-copy-three-layers": ("strategies.transport=row-copy", "model.engram.layers=[1,2,4]"),  # a later fetch may take the link first
    "lookahead-row-copy": ("strategies.prefetch=lookahead", "strategies.transport=row-copy"),
    "static-hot": ("strategies.cache={name: static-hot, params: {rows: 5000}}",),
}
CASES = [pytest.param(path, (), id=str(path.relative_to(ROOT / "scenarios"))) for path in SHIPPED] + [
    pytest.param(QUICKSTART, extra, id=f"quickstart+{name}") for name, extra in VARIANTS.items()]


def _columns(outcome: RunOutcome) -> tuple[bytes, bytes]:
    blocks = list(outcome.steps.blocks())
    steps = np.concatenate([b.steps for b in blocks]) if blocks else np.empty(0)
    layers = np.concatenate([b.layers for b in blocks]) if blocks else np.empty(0)
    return steps.tobytes(), layers.tobytes()


def _assert_identical(fast: RunOutcome, slow: RunOutcome) -> None:
    assert len(fast.steps) == len(slow.steps) > 0
    assert _columns(fast) == _columns(slow)
    assert [record for record in fast.steps] == [record for record in slow.steps]
    assert list(fast.spans) == list(slow.spans)
    assert fast.spans.busy_s == slow.spans.busy_s and fast.spans.dropped == slow.spans.dropped
    assert fast.makespan_s == slow.makespan_s
    assert fast.events == slow.events
    assert fast.link_busy_s == slow.link_busy_s
    assert (fast.output_tokens, fast.prompt_tokens, fast.serving) == (slow.output_tokens, slow.prompt_tokens, slow.serving)
    assert fast.ttft_s.tobytes() == slow.ttft_s.tobytes() and fast.tpot_s.tobytes() == slow.tpot_s.tobytes()


def _live(prepared: Prepared, engram: bool = True):
    """The pass's scheduler itself, never a replay of its schedule."""
    return prepared.scheduler(engram)


@pytest.mark.parametrize(("path", "extra"), CASES)
def test_every_way_through_a_pass_gives_the_same_pass(path, extra, monkeypatch):
    scenario = load_scenario(path, [*SMALL, *extra])
    prepared = prepare(scenario, path)
    taken = []
    real_simulate = engine.simulate

    def spy(engine_, scheduler, planner, *args, **kwargs):
        taken.append("bulk" if takes_bulk_path(engine_, scheduler, planner) else "fast" if takes_fast_path(engine_, planner) else "event")
        return real_simulate(engine_, scheduler, planner, *args, **kwargs)

    for _, kwargs in passes(scenario):
        monkeypatch.setattr(runner, "simulate", spy)
        chosen = simulate_run(prepared, **kwargs)
        monkeypatch.setattr(runner, "simulate", partial(real_simulate, bulk=False))
        step_by_step = simulate_run(prepared, **kwargs)
        monkeypatch.setattr(runner, "simulate", partial(real_simulate, fast=False))
        event = simulate_run(prepared, **kwargs)
        with monkeypatch.context() as live:
            live.setattr(Prepared, "served", _live)
            scheduled = simulate_run(prepared, **kwargs)
        for other in (step_by_step, event, scheduled):
            _assert_identical(chosen, other)
    assert taken[1:] != ["event", "event"], "the references should never take the event model"
    if prepared.scenario.workload.arrival.kind == "offline" and not extra:
        assert taken[1:] == ["bulk", "bulk"], "an offline run's references should take the bulk path"


def test_a_paper_run_takes_the_bulk_path_in_every_pass(monkeypatch):
    path = ROOT / "scenarios" / "paper-table4-4b.yaml"
    prepared = prepare(load_scenario(path, SMALL), path)
    taken = []
    real_simulate = engine.simulate

    def spy(engine_, scheduler, planner, *args, **kwargs):
        taken.append(takes_bulk_path(engine_, scheduler, planner))
        return real_simulate(engine_, scheduler, planner, *args, **kwargs)

    monkeypatch.setattr(runner, "simulate", spy)
    for _, kwargs in passes(prepared.scenario):
        simulate_run(prepared, **kwargs)
    assert taken == [True, True, True]
    kv = prepared.kv
    assert len(prepared.workload.schedules) == len({kv.blocks, kv.blocks_without_engram}), "passes with one KV cache share one schedule"


@pytest.mark.parametrize(("extra", "fast"), [
    ((), True), (("model.engram.layers=[1,2,4]",), True), (("strategies.transport=zero-copy",), True),
    (("strategies.cache={name: lru, params: {rows: 1000}}",), True),
    (("strategies.prefetch={name: layer-ahead, params: {lead_steps: 1}}",), True), (("strategies.prefetch=speculative-decode",), True),
    (("strategies.prefetch=prefill-ahead", *TIMED), True), (("strategies.prefetch=deadline",), False),
    (("strategies.transport=staged-batched",), False), (("strategies.transport=zero-copy-sm",), False),
    (("strategies.transport=row-copy",), False),
], ids=["staged", "three-layers", "zero-copy", "lru", "lead-steps", "speculative", "prefill-ahead", "deadline", "batched", "zero-copy-sm",
        "row-copy"])
def test_which_fetching_passes_take_the_fast_path(extra, fast):
    from engramsim.session import planner

    scenario = load_scenario(QUICKSTART, [*SMALL, *extra])
    prepared = prepare(scenario, QUICKSTART)
    assert not never_fetches(planner(prepared))
    assert never_fetches(planner(prepared, engram=False))
    assert takes_fast_path(runner._engine(prepared, None, True), planner(prepared)) is fast
    assert simulate_run(prepared).link_busy_s > 0


@pytest.mark.parametrize(("extra", "bulk"), [
    ((), True), (("model.engram.layers=[1,2,4]",), True), (("strategies.transport=zero-copy",), True),
    (("strategies.placement=all-hbm",), True),
    (("strategies.cache={name: lru, params: {rows: 1000}}",), False), (("strategies.placement={name: hot-rows, params: {hbm_rows: 1000}}",), False),
    (("strategies.prefetch={name: layer-ahead, params: {lead_steps: 1}}",), False), (TIMED, False),
], ids=["staged", "three-layers", "zero-copy", "all-hbm", "lru", "hot-rows", "lead-steps", "timed-arrivals"])
def test_which_passes_take_the_bulk_path(extra, bulk):
    """The bulk path needs every step known before the first (a replayed schedule) and plans that
    depend on their own step alone."""
    from engramsim.session import planner

    scenario = load_scenario(QUICKSTART, [*SMALL, *extra])
    prepared = prepare(scenario, QUICKSTART)
    assert takes_bulk_path(runner._engine(prepared, None, True), prepared.served(), planner(prepared)) is bulk
    assert isinstance(prepared.served(), Replay) is (extra != TIMED)


def test_a_transport_keeps_its_fetches_in_order_only_where_its_own_legs_promise_it():
    """A subclass that writes its own legs does not inherit its parent's `in_order`; one that
    promises it and breaks it is stopped on the fetch that breaks it."""
    from engramsim.plugins.transport.staged import Staged
    from engramsim.simulator.fast import in_order_legs, keeps_order
    from engramsim.strategies import Stage, StageKind

    class TwoChunks(Staged):
        def stages(self, rows, row_bytes):
            half = rows // 2
            return [Stage(StageKind.GATHER, half, half * row_bytes), Stage(StageKind.H2D, half, half * row_bytes),
                    Stage(StageKind.GATHER, rows - half, (rows - half) * row_bytes), Stage(StageKind.H2D, rows - half, (rows - half) * row_bytes)]

    class Promising(TwoChunks):
        in_order = True

    prepared = prepare(load_scenario(QUICKSTART, SMALL), QUICKSTART)
    setup = prepared.setup()
    staged, chunks, promising = Staged(Staged.Params(), setup), TwoChunks(TwoChunks.Params(), setup), Promising(Promising.Params(), setup)
    assert keeps_order(staged) and not keeps_order(chunks) and keeps_order(promising)
    assert in_order_legs(staged, staged.stages(8, 64), None) == (StageKind.GATHER, StageKind.H2D)
    with pytest.raises(RuntimeError, match="says its fetches keep their order"):
        in_order_legs(promising, promising.stages(8, 64), None)
    with pytest.raises(RuntimeError, match="after \\[zero_copy\\]"):
        in_order_legs(staged, staged.stages(8, 64), (StageKind.ZERO_COPY,))

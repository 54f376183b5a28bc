"""The event model against hand-computed values, and its invariants (DESIGN.md)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from engramsim.plan import Planner
from engramsim.records import RunOutcome, SpanKind, Timeline
from engramsim.simulator.engine import Engine, simulate
from engramsim.steps import LayerLookup, Step
from engramsim.strategies import Cache, Placement, Prefetch, Stage, StageKind, StepView, Tier, Transport

MS = 1e-3


class ToyCost:
    """Fixed costs: every block `block_s`, a fetch `latency_s` + bytes / `gbps`."""

    def __init__(self, block_s=1 * MS, latency_s=0.2 * MS, gbps=1.0, gather_s=0.0, engram_s=0.0):
        self.block_s, self.latency_s, self.bw, self.gather_s, self.engram_s = block_s, latency_s, gbps * 1e9, gather_s, engram_s

    def blocks_time(self, step, start, stop):
        return (stop - start) * self.block_s

    def engram_time(self, step, hbm_rows):
        return self.engram_s

    def head_time(self, step):
        return 0.0

    def host_time(self, step):
        return 0.0

    def gather_time(self, rows, row_bytes):
        return self.gather_s

    def h2d_latency(self):
        return self.latency_s

    def h2d_wire_time(self, nbytes):
        return nbytes / self.bw

    def zero_copy_latency(self):
        return self.latency_s

    def zero_copy_wire_time(self, rows, row_bytes):
        return rows * row_bytes / self.bw


class Everywhere(Placement):
    name = "everywhere"

    def __init__(self, tier):
        self.tier = tier

    def tier_of(self, layer, rows):
        return np.full(rows.shape, self.tier, dtype=np.uint8)


class NoCache(Cache):
    def __init__(self):
        pass


class IssueAt(Prefetch):
    def __init__(self, block):
        self.block = block

    def issue_layer(self, layer, view):
        return layer if self.block is None else self.block


class Pipe(Transport):
    def __init__(self, *kinds):
        self.kinds = [StageKind(k) for k in kinds]

    def stages(self, rows, row_bytes):
        return [Stage(k, rows, rows * row_bytes) for k in self.kinds]


class ListScheduler:
    def __init__(self, steps):
        self.steps, self.i = steps, 0

    @property
    def done(self):
        return self.i >= len(self.steps)

    def next_step(self, now):
        self.i += 1
        return self.steps[self.i - 1]

    def next_arrival(self):
        return None

    def finish_step(self, step, end):
        pass

    def view(self, step, max_steps=None):
        return StepView(step)


def make_step(index, rows_per_layer):
    lookups = {layer: LayerLookup(layer, np.arange(n, dtype=np.int64), 2 * n) for layer, n in rows_per_layer.items()}
    one = np.ones(1, dtype=np.int64)
    return Step(index, "decode", one, one, one, np.zeros(1, dtype=np.int64), lookups)


def run(cost, steps, layers=(1,), blocks=3, tier=Tier.HOST, issue=None, transport=("zero_copy",), row_bytes=100):
    tables = {layer: SimpleNamespace(row_bytes=row_bytes) for layer in layers}
    engine = Engine(cost, tables, blocks, Pipe(*transport), copy_engines=2)
    planner = Planner(Everywhere(tier), NoCache(), IssueAt(issue), dict.fromkeys(layers, 10**9), blocks)
    records, makespan = simulate(engine, ListScheduler(steps), planner)
    return RunOutcome(steps=records, spans=engine.spans, events=engine.env.event_count, link_busy_s=engine.link.busy_s,
                      makespan_s=makespan, output_tokens=0, prompt_tokens=0, ttft_s=np.empty(0), tpot_s=np.empty(0))


@pytest.mark.parametrize("rows", [0, 1_000, 20_000, 50_000])
def test_on_demand_and_layer_ahead_stalls_match_hand_values(rows):
    cost = ToyCost(block_s=1 * MS, latency_s=0.2 * MS, gbps=1.0)
    fetch = (0.2 * MS + rows * 100 / 1e9) if rows else 0.0
    on_demand = run(cost, [make_step(0, {1: rows})], issue=None)
    ahead = run(cost, [make_step(0, {1: rows})], issue=0)
    assert on_demand.steps[0].layers[0].stall_s == pytest.approx(fetch, abs=1e-12)
    assert ahead.steps[0].layers[0].stall_s == pytest.approx(max(0.0, fetch - 1 * MS), abs=1e-12)
    assert on_demand.makespan_s == pytest.approx(3 * MS + fetch)
    assert ahead.makespan_s == pytest.approx(3 * MS + max(0.0, fetch - 1 * MS))


def test_staged_pipeline_adds_gather_then_dma():
    cost = ToyCost(block_s=1 * MS, latency_s=0.1 * MS, gbps=2.0, gather_s=0.5 * MS)
    out = run(cost, [make_step(0, {2: 10_000})], layers=(2,), issue=0, transport=("gather", "h2d"))
    fetch = 0.5 * MS + 0.1 * MS + 10_000 * 100 / 2e9
    assert out.steps[0].layers[0].stall_s == pytest.approx(max(0.0, fetch - 2 * MS))
    lanes = {s.kind.lane for s in out.spans}
    assert {"gather", "copy", "compute"} <= lanes


def test_all_hbm_has_no_stall_and_no_bytes():
    out = run(ToyCost(), [make_step(i, {1: 5000}) for i in range(4)], tier=Tier.HBM)
    assert all(lr.stall_s == 0 and lr.bytes_fetched == 0 and lr.rows_hbm == lr.rows_unique for s in out.steps for lr in s.layers)
    assert out.link_busy_s == 0 and not [s for s in out.spans if s.kind.lane in ("copy", "zero-copy", "gather")]


def test_two_layers_share_the_link_in_order():
    cost = ToyCost(block_s=0.1 * MS, latency_s=0.0, gbps=1.0)
    out = run(cost, [make_step(0, {1: 10_000, 2: 10_000})], layers=(1, 2), blocks=4, issue=0)
    wire = sorted((s.start_s, s.end_s) for s in out.spans if s.kind is SpanKind.ZERO_COPY)
    assert len(wire) == 2 and wire[1][0] >= wire[0][1] - 1e-15  # one transfer at a time
    layer1, layer2 = out.steps[0].layers
    assert layer1.stall_s == pytest.approx(1 * MS - 0.1 * MS)
    assert layer2.stall_s == pytest.approx(2 * MS - (1 * MS + 0.1 * MS))


def check_invariants(out, bandwidth_bps, tier=Tier.HOST):
    prev_end = 0.0
    for step in out.steps:
        assert step.start_s >= prev_end - 1e-15, "the clock never goes back"
        prev_end = step.end_s
        for rec in step.layers:
            served = rec.rows_hbm + rec.rows_fetched
            assert served == rec.rows_unique, "every row served exactly once"
            engram = [s for s in out.spans if s.step == step.index and s.kind is SpanKind.ENGRAM and s.layer == rec.layer]
            arrivals = [s.end_s for s in out.spans if s.step == step.index and s.layer == rec.layer and s.kind.on_link]
            for span in engram:
                assert all(span.start_s >= a - 1e-15 for a in arrivals), "Engram layer starts after its rows arrive"
    link = sorted((s.start_s, s.end_s, s.bytes) for s in out.spans if s.kind.on_link)
    for (s0, e0, _), (s1, _, _) in zip(link, link[1:]):
        assert s1 >= e0 - 1e-15, "the link carries one transfer at a time"
    for start, end, nbytes in link:
        assert nbytes <= bandwidth_bps * (end - start) * (1 + 1e-9), "no more bytes than the bandwidth allows"
    for span in out.spans:
        assert span.end_s >= span.start_s


def test_invariants_hold_on_random_toys():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=60, deadline=None)
    @given(
        layers=st.lists(st.integers(0, 5), min_size=1, max_size=3, unique=True),
        rows=st.lists(st.integers(0, 30_000), min_size=1, max_size=6),
        issue=st.one_of(st.none(), st.integers(0, 5)),
        staged=st.booleans(),
        gbps=st.floats(0.1, 50),
    )
    def check(layers, rows, issue, staged, gbps):
        cost = ToyCost(block_s=0.3 * MS, latency_s=0.05 * MS, gbps=gbps, gather_s=0.1 * MS, engram_s=0.01 * MS)
        steps = [make_step(i, {layer: n for layer in layers}) for i, n in enumerate(rows)]
        out = run(cost, steps, layers=tuple(layers), blocks=6, issue=issue, transport=("gather", "h2d") if staged else ("zero_copy",))
        check_invariants(out, gbps * 1e9)
        assert len(out.steps) == len(rows)

    check()


def test_a_timeline_past_its_bound_keeps_the_first_steps_spans_and_every_second():
    """Spans of steps past the timeline's bound are not kept, but the busy time by kind still
    counts every span: it equals the link's own counter and the totals of a full timeline."""
    steps = [make_step(i, {1: 2_000 + 500 * i}) for i in range(6)]
    full = run(ToyCost(), steps, issue=0)
    tables = {1: SimpleNamespace(row_bytes=100)}
    engine = Engine(ToyCost(), tables, 3, Pipe("zero_copy"), copy_engines=2)
    engine.spans = Timeline(limit=2)
    planner = Planner(Everywhere(Tier.HOST), NoCache(), IssueAt(0), {1: 10**9}, 3)
    simulate(engine, ListScheduler(steps), planner)
    assert {s.step for s in engine.spans} == {0, 1} and engine.spans.dropped > 0
    assert engine.spans.link_s == pytest.approx(engine.link.busy_s) == pytest.approx(full.link_busy_s)
    assert engine.spans.busy_s == pytest.approx(full.spans.busy_s)
    assert full.spans.busy_s[SpanKind.BLOCKS] == pytest.approx(sum(s.seconds for s in full.spans if s.kind is SpanKind.BLOCKS))

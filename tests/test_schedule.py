"""Served schedules (engramsim/schedule.py) and the prices of a schedule's steps at once
(`RooflineCostModel.price`): a replay hands out what the scheduler served, kept once per KV cache
and only while small; every step's price, computed for all steps together, is the float pricing
that step alone gives."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import engramsim.schedule as schedule_module
from engramsim.records import Span, SpanKind, Timeline
from engramsim.runner import simulate_run
from engramsim.scenario_io import load_scenario
from engramsim.schedule import Replay, Schedule
from engramsim.session import prepare
from engramsim.simulator.cost import RooflineCostModel

ROOT = Path(__file__).resolve().parents[1]
SMALL = ("workload.requests=8", "run.max_steps=300")


def _prepared(name: str, *extra: str):
    path = ROOT / "scenarios" / name
    return prepare(load_scenario(path, [*SMALL, *extra]), path)


@pytest.mark.parametrize("name", ["quickstart.yaml", "validation/v11-moe.yaml", "validation/v13-mhc-mla.yaml",
                                  "validation/v16-chunked-prefill.yaml", "validation/v15-preemption.yaml", "paper-table4-8b.yaml"])
@pytest.mark.parametrize("sms", [True, False], ids=["waves", "hockney"])
def test_a_schedule_priced_at_once_is_priced_as_each_step_alone(name, sms):
    prepared = _prepared(name)
    profile = prepared.profile
    if not sms:
        profile = profile.model_copy(update={"gpu": profile.gpu.model_copy(update={"sms": None})})
    served = prepared.served()
    assert isinstance(served, Replay)
    steps = list(served.schedule.steps)
    layers = sorted(prepared.tables)
    rows = {layer: counts[0] for layer, counts in served.schedule.lookups(layers).items()}
    bulk = RooflineCostModel(prepared.scenario.model, profile)
    prices = bulk.price(steps, rows)
    assert prices is not None
    bulk.prices = prices
    alone = RooflineCostModel(prepared.scenario.model, profile)
    kinds = {step.kind for step in steps}
    assert "prefill" in kinds and "decode" in kinds
    blocks = prepared.scenario.model.backbone.layers
    for step in steps:
        assert bulk.host_time(step) == alone.host_time(step)
        assert bulk.head_time(step) == alone.head_time(step)
        for block in range(blocks):
            assert bulk.block_time(step, block) == alone.block_time(step, block)
        assert bulk.blocks_time(step, 1, blocks) == alone.blocks_time(step, 1, blocks)
        for layer in layers:
            count = int(rows[layer][step.index])
            assert (step.index, count) in prices.engram
            assert bulk.engram_time(step, count) == alone.engram_time(step, count)
    assert bulk.priced_blocks(1, blocks) == [alone.blocks_time(step, 1, blocks) for step in steps]


def test_a_profile_with_a_roofline_exponent_is_priced_step_by_step():
    prepared = _prepared("quickstart.yaml")
    profile = prepared.profile.model_copy(update={"gpu": prepared.profile.gpu.model_copy(update={"roofline_exponent": 2.0})})
    served = prepared.served()
    assert RooflineCostModel(prepared.scenario.model, profile).price(list(served.schedule.steps), {}) is None


def test_a_schedule_is_served_once_per_kv_cache_and_replayed_as_served():
    prepared = _prepared("quickstart.yaml", "run.baseline=true")
    first, again = prepared.served(), prepared.served()
    assert isinstance(first, Replay) and again.schedule is first.schedule
    live = prepared.scheduler()
    for index, step in enumerate(first.schedule.steps):
        made = live.next_step(0.0)
        assert made is not None and made.index == step.index == index and made.kind == step.kind
        assert np.array_equal(made.seq_ids, step.seq_ids) and np.array_equal(made.positions, step.positions)
        live.finish_step(made, float(index))
    assert live.done and first.schedule.output_tokens == live.output_tokens


def test_a_large_workload_is_served_step_by_step(monkeypatch):
    monkeypatch.setattr(schedule_module, "SCHEDULE_TOKENS", 10)
    prepared = _prepared("quickstart.yaml")
    assert not isinstance(prepared.served(), Replay)
    assert not prepared.workload.schedules


def test_a_workload_keeps_its_two_latest_schedules():
    prepared = _prepared("quickstart.yaml")
    for blocks in (40, 50, 60):
        served = prepared.served()
        assert isinstance(served, Replay)
        prepared = replace(prepared, kv=replace(prepared.kv, blocks=blocks))
    assert len(prepared.workload.schedules) == schedule_module.SCHEDULES_KEPT == 2
    assert [key[1] for key in prepared.workload.schedules] == [40, 50]


def test_a_replay_runs_under_the_step_limit_it_was_served_for():
    from engramsim.runner import _engine
    from engramsim.session import planner
    from engramsim.simulator.engine import simulate

    prepared = _prepared("quickstart.yaml")  # run.max_steps=300, more than the pass needs
    served = prepared.served()
    assert isinstance(served, Replay) and served.schedule.complete
    assert served.schedule.covers(None) and served.schedule.covers(10_000) and not served.schedule.covers(5)
    with pytest.raises(ValueError, match="cannot be replayed under max_steps=5"):
        simulate(_engine(prepared, None, True), served, planner(prepared), 5)
    cut = _prepared("quickstart.yaml", "run.max_steps=5").served()
    assert len(cut.schedule.steps) == 5 and cut.schedule.covers(5) and not cut.schedule.covers(6) and not cut.schedule.covers(None)


def test_timed_arrivals_are_scheduled_pass_by_pass():
    prepared = _prepared("quickstart.yaml", "workload.arrival={kind: poisson, rate_per_s: 5}")
    assert not isinstance(prepared.served(), Replay)
    with pytest.raises(ValueError, match="every request has arrived"):
        Schedule.served(prepared.scheduler())


@pytest.mark.parametrize("name", ["validation/v15-preemption.yaml", "validation/v16-chunked-prefill.yaml", "quickstart.yaml"])
def test_a_replay_shows_the_schedulers_future_and_waiting_queue_at_every_step(name):
    prepared = _prepared(name, "workload.requests=24", "workload.batching={max_num_seqs: 4, max_num_batched_tokens: 2048}")
    served, live = prepared.served(), prepared.scheduler()
    assert isinstance(served, Replay)
    waited = 0
    for step in served.schedule.steps:
        made = live.next_step(0.0)
        assert made is not None and made.index == step.index
        top = served.schedule.max_steps
        for limit in (top, step.index + 3 if top is None else min(top, step.index + 3)):  # the limit it was served under, and a nearer one
            mine, theirs = served.view(step, limit), live.view(made, limit)
            assert [s.index for s in mine.future(4)] == [s.index for s in theirs.future(4)]
            a, b = mine.waiting(), theirs.waiting()
            assert a.seqs.tolist() == b.seqs.tolist() and a.tokens.tolist() == b.tokens.tolist()
            for seq in a.seqs.tolist()[:2]:
                assert np.array_equal(a.lookups(seq)[1].rows, b.lookups(seq)[1].rows)
        waited += int(mine.waiting().seqs.size)
        live.finish_step(made, float(step.index))
    assert waited > 0, "the case should have requests waiting"


def test_replayed_latencies_are_the_schedulers():
    prepared = _prepared("quickstart.yaml")
    outcome = simulate_run(prepared)
    live = prepared.scheduler()
    ends = outcome.steps.step_column("end_s")
    while not live.done:
        step = live.next_step(0.0)
        assert step is not None
        live.finish_step(step, float(ends[step.index]))
    ttft, tpot = live.latencies()
    assert outcome.ttft_s.tobytes() == ttft.tobytes() and outcome.tpot_s.tobytes() == tpot.tobytes()


def test_a_timeline_reads_in_timeline_order_whatever_order_it_recorded():
    spans = [Span(kind=SpanKind.H2D, start_s=1.0, end_s=3.0, step=0, layer=1, bytes=8),
             Span(kind=SpanKind.HOST, start_s=0.0, end_s=0.5, step=0),
             Span(kind=SpanKind.BLOCKS, start_s=0.5, end_s=2.0, step=0, blocks=(0, 0)),
             Span(kind=SpanKind.GATHER, start_s=0.5, end_s=1.0, step=0, layer=1, bytes=8)]
    one, other = Timeline(spans), Timeline()
    other.record([(s.kind, s.start_s, s.end_s, s.step, s.layer, s.bytes, s.blocks, s.staging) for s in reversed(spans)])
    assert list(one) == list(other) == sorted(spans, key=lambda s: (s.start_s, s.end_s))
    assert one.busy_s == other.busy_s and len(one) == len(other) == 4
    late = Timeline(limit=1)
    late.record([(SpanKind.HEAD, 0.0, 1.0, 1, None, 0, None, False)])
    assert (len(late), late.dropped, late.busy_s[SpanKind.HEAD]) == (0, 1, 1.0)

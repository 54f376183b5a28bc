"""Deadline mode (prefetch `deadline`): an Engram layer whose rows have not landed goes ahead
without them (no stall); the references that would have read them are dropped, and
`lookups_dropped_pct` counts them. The real backends refuse it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from engramsim import registry
from engramsim.cli import main
from engramsim.metrics import METRICS, MetricContext
from engramsim.plan import Planner
from engramsim.plugins.prefetch.deadline import Deadline
from engramsim.plugins.prefetch.layer_ahead import LayerAhead, LayerAheadParams
from engramsim.records import LayerRecord, RunOutcome, SpanKind, StepRecord
from engramsim.runner import simulate_run
from engramsim.scenario_io import load_scenario
from engramsim.session import planner, prepare
from engramsim.simulator.engine import Engine, simulate
from engramsim.strategies import Placement, StepView, Tier
from tests.test_engine import MS, IssueAt, ListScheduler, NoCache, Pipe, ToyCost, make_step

ROOT = Path(__file__).resolve().parents[1]
BLOCK_1 = ROOT / "scenarios" / "compare" / "engram-at-block-1.yaml"


class DeadlineAt(IssueAt):
    deadline = True


class HalfInHbm(Placement):
    """Even rows in HBM, odd rows in host DRAM."""

    name = "half"

    def __init__(self) -> None:
        pass

    def tier_of(self, layer, rows):
        return np.where(rows % 2 == 0, Tier.HBM, Tier.HOST).astype(np.uint8)


class EverywhereHost(Placement):
    name = "host"

    def __init__(self) -> None:
        pass

    def tier_of(self, layer, rows):
        return np.full(rows.shape, Tier.HOST, dtype=np.uint8)


def run(steps, prefetch, placement=None, references_to=None, row_bytes=100):
    cost = ToyCost(block_s=1 * MS, latency_s=0.2 * MS, gbps=1.0)
    engine = Engine(cost, {1: SimpleNamespace(row_bytes=row_bytes)}, 3, Pipe("zero_copy"), copy_engines=2)
    plans = Planner(placement or EverywhereHost(), NoCache(), prefetch, {1: 10**9}, 3, references_to)
    records, makespan = simulate(engine, ListScheduler(steps), plans)
    return RunOutcome(steps=records, spans=engine.spans, events=engine.env.event_count, link_busy_s=engine.link.busy_s,
                      makespan_s=makespan, output_tokens=0, prompt_tokens=0, ttft_s=np.empty(0), tpot_s=np.empty(0))


def test_a_late_fetch_is_dropped_and_the_layer_goes_ahead_without_a_stall():
    # issued at the step's start; the layer is at block 1 (1 ms of compute before it)
    # 20,000 rows x 100 B at 1 GB/s + 0.2 ms = 2.2 ms: late, so dropped at 1 ms
    out = run([make_step(0, {1: 20_000})], DeadlineAt(0))
    layer = out.steps[0].layers[0]
    assert layer.stall_s == 0.0 and layer.rows_dropped == 20_000 and layer.references_dropped == 40_000
    assert layer.ready_s == pytest.approx(1 * MS) and layer.issue_s == 0.0
    assert out.makespan_s == pytest.approx(3 * MS), "no stall: three blocks back to back"
    assert not [s for s in out.spans if s.kind is SpanKind.STALL]
    # the fetch still completes on the link: its bytes are spent
    link = [s for s in out.spans if s.kind is SpanKind.ZERO_COPY]
    assert sum(s.bytes for s in link) == 20_000 * 100 and link[-1].end_s == pytest.approx(2.2 * MS)
    assert out.link_busy_s == pytest.approx(2 * MS)
    # without a deadline the same step stalls 1.2 ms and drops nothing
    waited = run([make_step(0, {1: 20_000})], IssueAt(0)).steps[0].layers[0]
    assert waited.stall_s == pytest.approx(1.2 * MS) and waited.rows_dropped == waited.references_dropped == 0


def test_a_fetch_that_lands_in_time_drops_nothing():
    out = run([make_step(0, {1: 5_000})], DeadlineAt(0))  # 0.7 ms < 1 ms
    layer = out.steps[0].layers[0]
    assert layer.stall_s == 0.0 and layer.rows_dropped == 0 and layer.references_dropped == 0
    assert layer.ready_s == pytest.approx(0.7 * MS)
    assert out.makespan_s == pytest.approx(3 * MS)


def test_on_demand_with_a_deadline_drops_every_fetched_row():
    out = run([make_step(0, {1: 10})], DeadlineAt(None))
    assert out.steps[0].layers[0].rows_dropped == 10 and out.steps[0].stall_s == 0.0


def test_only_the_references_to_missed_rows_are_dropped():
    """Rows placed in HBM are served; the references of the missed (odd) rows are counted by references_to."""
    asked = []

    def references_to(step, layer, rows):
        asked.append(rows.copy())
        return 3 * int(rows.size)

    out = run([make_step(0, {1: 40_000})], DeadlineAt(0), placement=HalfInHbm(), references_to=references_to)
    layer = out.steps[0].layers[0]
    assert layer.rows_placed_hbm == 20_000 and layer.rows_missed == layer.rows_dropped == 20_000
    assert layer.references_dropped == 60_000
    assert np.array_equal(asked[0], np.arange(1, 40_000, 2))
    with pytest.raises(RuntimeError, match="references_to"):
        run([make_step(0, {1: 40_000})], DeadlineAt(0), placement=HalfInHbm())


def test_a_record_cannot_drop_rows_without_a_deadline():
    out = run([make_step(0, {1: 10})], IssueAt(0))
    assert out.steps[0].layers[0].rows_dropped == 0
    plans = Planner(EverywhereHost(), NoCache(), IssueAt(0), {1: 10**9}, 3)
    plan = plans.plan(StepView(make_step(0, {1: 10}))).layers[1]
    with pytest.raises(ValueError, match="without a deadline"):
        plan.record(100, 0.0, 0.0, 0.0, dropped=True)


def _record(references, dropped):
    layer = LayerRecord(layer=1, rows_unique=10, references=references, rows_placed_hbm=0, cache_hits=0, rows_missed=10,
                        rows_speculative=0, rows_dropped=10 if dropped else 0, references_dropped=dropped, bytes_fetched=1000,
                        issue_step=0, issue_s=0.0, ready_s=0.0)
    return layer


def test_lookups_dropped_pct_by_hand():
    steps = [StepRecord(index=0, kind="prefill", start_s=0.0, end_s=1.0, tokens=1, seqs=1, layers=[_record(300, 300)]),
             StepRecord(index=1, kind="decode", start_s=1.0, end_s=2.0, tokens=1, seqs=1, layers=[_record(100, 0)]),
             StepRecord(index=2, kind="decode", start_s=2.0, end_s=3.0, tokens=1, seqs=1, layers=[_record(600, 50)])]
    outcome = RunOutcome(steps=steps, spans=[], events=0, link_busy_s=0.0, makespan_s=3.0, output_tokens=0, prompt_tokens=0,
                         ttft_s=np.empty(0), tpot_s=np.empty(0))
    metric = METRICS["lookups_dropped_pct"]
    assert metric.group == "quality"
    assert metric.compute(MetricContext(outcome=outcome, seed=0, link_gbps=1.0)) == pytest.approx(350 / 1000 * 100)
    empty = RunOutcome(steps=[StepRecord(index=0, kind="decode", start_s=0.0, end_s=1.0, tokens=1, seqs=1)], spans=[],
                       events=0, link_busy_s=0.0, makespan_s=1.0, output_tokens=0, prompt_tokens=0,
                       ttft_s=np.empty(0), tpot_s=np.empty(0))
    assert metric.compute(MetricContext(outcome=empty, seed=0, link_gbps=1.0)) is None


def test_conservation_on_a_scenario_every_row_served_once_or_dropped():
    """Gen3 link, one-block window: some layers are late. Every needed row is placed, a hit or
    missed; a layer drops all of its misses or none; without a deadline the same steps drop nothing."""
    sets = ["workload.requests=48", "hardware.link=pcie-gen3-x16"]
    deadline = simulate_run(prepare(load_scenario(BLOCK_1, [*sets, "strategies.prefetch=deadline"]), str(BLOCK_1)))
    waited = simulate_run(prepare(load_scenario(BLOCK_1, sets), str(BLOCK_1)))
    dropped = 0
    for step, other in zip(deadline.steps, waited.steps, strict=True):
        assert step.stall_s == 0.0
        for layer, twin in zip(step.layers, other.layers, strict=True):
            assert layer.rows_unique == layer.rows_placed_hbm + layer.cache_hits + layer.rows_missed
            assert layer.rows_dropped in (0, layer.rows_missed)
            assert layer.references_dropped == (layer.references if layer.rows_dropped else 0)  # all-host: every reference reads a miss
            assert (layer.rows_unique, layer.references, layer.bytes_fetched) == (twin.rows_unique, twin.references, twin.bytes_fetched)
            assert twin.rows_dropped == 0
            dropped += layer.rows_dropped
    assert dropped > 0 and deadline.steps.layer_column("bytes_fetched").sum() == waited.steps.layer_column("bytes_fetched").sum()


def test_the_sessions_references_to_counts_the_references_that_read_the_rows():
    prep = prepare(load_scenario(BLOCK_1, ["workload.requests=8", "strategies.prefetch=deadline"]), str(BLOCK_1))
    references_to = planner(prep).references_to
    assert references_to is not None
    step = prep.scheduler(True).next_step(0.0)
    lookup = step.lookups[1]
    assert references_to(step, 1, lookup.rows) == lookup.references
    some = lookup.rows[::3]
    every = prep.workload.token_rows(step.positions)[1].ravel().tolist()
    chosen = set(some.tolist())
    assert references_to(step, 1, some) == sum(1 for row in every if row in chosen)


def test_the_deadline_prefetch_is_layer_ahead_with_a_deadline():
    prefetch = Deadline(LayerAheadParams(), None)  # type: ignore[arg-type]  (no setup needed)
    assert isinstance(prefetch, LayerAhead) and prefetch.deadline and not LayerAhead(LayerAheadParams(), None).deadline  # type: ignore[arg-type]
    assert registry.names("prefetch").count("deadline") == 1
    assert prefetch.issue_layer(5, None) == 0


@pytest.mark.parametrize("verb", ["run", "check"])
def test_the_real_backends_refuse_deadline_mode_in_one_line(verb, tmp_path, capsys):
    out = tmp_path / "out"
    args = [verb, str(BLOCK_1), "--backend", "cpu", "--set", "strategies.prefetch=deadline"]
    code = main(args + (["--out", str(out)] if verb == "run" else []))
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "strategies.prefetch" in err and "deadline" in err, err
    assert not out.exists()

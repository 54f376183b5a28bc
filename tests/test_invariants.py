"""The invariants of docs/design.md, checked on real scenarios, with the strategies that exercise
them: a cache with a capacity, a prefetch that leads by a step, a speculative prefetch, a fetch
issued at a block that is not otherwise a cut, both transports. Each test names the bug it guards
against; docs/design.md lists them."""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engramsim.plan import Planner
from engramsim.records import RunOutcome, SpanKind
from engramsim.runner import simulate_run
from engramsim.scenario_io import load_scenario
from engramsim.session import ALL_HBM, prepare
from engramsim.steps import LayerLookup, Step
from engramsim.strategies import Cache, Placement, Prefetch, StepView, Tier
from tests.test_backends import TINY

sys.path.insert(0, str(Path(__file__).parent / "plugin_pkg"))
import demo_guess  # noqa: E402,F401  (registers demo-guess)
import demo_lru  # noqa: E402,F401  (registers demo-lru)
import demo_next_step  # noqa: E402,F401  (registers demo-next-step)

GOLDEN = Path(__file__).parent / "golden"
VARIANTS = {
    "two-layers": [],
    "lead-blocks": [],
    "zero-copy": [],
    "lru-next-step": ["strategies.cache={name: demo-lru, params: {rows: 3000}}", "strategies.prefetch={name: demo-next-step, params: {block: 5}}"],
    "speculative": ['strategies.prefetch={name: demo-guess, params: {budget: 400}}'],
    "waiting-prefill": ["strategies.prefetch={name: prefill-ahead, params: {max_lead_steps: 2, max_staged_rows: 6000}}",
                        "workload.arrival={kind: poisson, rate_per_s: 300}", "workload.batching.max_num_seqs=2"],
    "next-step-zero-copy": ["strategies.prefetch=demo-next-step", "strategies.transport=zero-copy"],
    "next-step-cut-short": ["strategies.prefetch=demo-next-step", "run.max_steps=20"],
    "lead-steps": [],
    "two-steps-lead-zero-copy": ["strategies.prefetch={name: layer-ahead, params: {lead_steps: 2}}", "strategies.transport=zero-copy"],
}


def golden_for(variant: str) -> Path:
    return GOLDEN / (f"{variant}.yaml" if (GOLDEN / f"{variant}.yaml").exists() else "two-layers.yaml")


@pytest.fixture(scope="module")
def outcomes() -> dict[str, tuple[RunOutcome, int]]:
    out = {}
    for variant, overrides in VARIANTS.items():
        path = golden_for(variant)
        prepared = prepare(load_scenario(path, overrides), str(path))
        out[variant] = (simulate_run(prepared), prepared.scenario.model.engram.row_bytes)
    return out


def link_bytes(outcome: RunOutcome, kinds: tuple[SpanKind, ...]) -> dict[tuple[int, int | None], int]:
    moved: dict[tuple[int, int | None], int] = defaultdict(int)
    for span in outcome.spans:
        if span.kind in kinds:
            moved[(span.step, span.layer)] += span.bytes
    return moved


@pytest.mark.parametrize("variant", VARIANTS)
def test_bytes_moved_equal_bytes_planned(outcomes, variant):
    """Guards: a fetch issued at a block that is not otherwise a cut (lead_blocks) or in an earlier
    step is dropped, and the run reports bytes fetched that never crossed the link."""
    outcome, row_bytes = outcomes[variant]
    on_link = link_bytes(outcome, (SpanKind.H2D, SpanKind.ZERO_COPY))
    gathered = link_bytes(outcome, (SpanKind.GATHER,))
    staged = any(s.kind is SpanKind.GATHER for s in outcome.spans)
    total = 0
    for step in outcome.steps:
        for rec in step.layers:
            assert rec.bytes_fetched == rec.rows_fetched * row_bytes
            assert on_link.pop((step.index, rec.layer), 0) == rec.bytes_fetched
            if staged:
                assert gathered.pop((step.index, rec.layer), 0) == rec.bytes_fetched
            total += rec.bytes_fetched
    assert total > 0
    assert not any(on_link.values()), "bytes moved for no step that ran"


@pytest.mark.parametrize("variant", VARIANTS)
def test_link_busy_time_is_its_spans_and_moves_at_bandwidth(outcomes, variant):
    """Guards: the link's busy time counting DMA latency (it is paid before a transfer takes the
    link), and transfers overlapping on the one link."""
    outcome, _ = outcomes[variant]
    link = sorted((s.start_s, s.end_s, s.bytes) for s in outcome.spans if s.kind.on_link)
    assert outcome.link_busy_s == pytest.approx(sum(e - s for s, e, _ in link), rel=1e-12)
    for (_, e0, _), (s1, _, _) in zip(link, link[1:]):
        assert s1 >= e0 - 1e-15


def test_h2d_spans_move_at_the_links_bandwidth(outcomes):
    path = golden_for("lead-blocks")
    prepared = prepare(load_scenario(path), str(path))
    outcome, _ = outcomes["lead-blocks"]
    gbps = prepared.profile.link.h2d_gbps * 1e9
    spans = [s for s in outcome.spans if s.kind is SpanKind.H2D]
    assert spans
    for span in spans:
        assert span.seconds == pytest.approx(span.bytes / gbps, rel=1e-9)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gathers_queue_for_the_gather_pool(outcomes, variant):
    """Guards: gathers running concurrently although the host has one gather pool."""
    outcome, _ = outcomes[variant]
    gathers = sorted((s.start_s, s.end_s) for s in outcome.spans if s.kind is SpanKind.GATHER)
    for (_, e0), (s1, _) in zip(gathers, gathers[1:]):
        assert s1 >= e0 - 1e-15


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_row_served_once_and_speculation_never_counts(outcomes, variant):
    """Guards: cache hits fetched anyway or not counted, speculative rows counted as served."""
    outcome, _ = outcomes[variant]
    for step in outcome.steps:
        for rec in step.layers:
            assert rec.rows_placed_hbm + rec.cache_hits + rec.rows_missed == rec.rows_unique
            assert 0 <= rec.rows_staged <= rec.rows_missed
            assert rec.rows_fetched == rec.rows_missed - rec.rows_staged + rec.rows_speculative + rec.rows_waiting
            assert rec.issue_step <= step.index


def test_cache_hits_are_exactly_the_bytes_not_moved(outcomes):
    """Guards: a cache whose hits are fetched all the same, or invented. Counted on the link's
    spans, against the same steps run without a cache."""
    lru, row_bytes = outcomes["lru-next-step"]
    plain, _ = outcomes["two-layers"]
    hits = {(s.index, r.layer): r.cache_hits for s in lru.steps for r in s.layers}
    assert sum(hits.values()) > 0 and len(lru.steps) == len(plain.steps)
    with_cache, without = link_bytes(lru, (SpanKind.H2D,)), link_bytes(plain, (SpanKind.H2D,))
    for key, n in hits.items():
        assert without.get(key, 0) - with_cache.get(key, 0) == n * row_bytes


def test_cross_step_fetches_happen_and_overlap_the_step_before(outcomes):
    outcome, _ = outcomes["lru-next-step"]
    starts = {s.index: s.start_s for s in outcome.steps}
    ahead = [(step, rec) for step in outcome.steps for rec in step.layers if rec.issue_step < step.index and rec.rows_fetched]
    assert len(ahead) > len(outcome.steps)  # both layers, nearly every step
    ends = {s.index: s.end_s for s in outcome.steps}
    for step, rec in ahead:
        assert rec.issue_s < starts[step.index], "issued during an earlier step"
        assert starts[rec.issue_step] <= rec.issue_s <= ends[rec.issue_step]


def test_a_run_cut_short_fetches_nothing_for_steps_it_never_runs(outcomes):
    """Guards: the future shown past `run.max_steps`, so the last step fetches for a step that never runs."""
    outcome, _ = outcomes["next-step-cut-short"]
    assert len(outcome.steps) == 20
    assert max(s.step for s in outcome.spans) == 19


def test_a_cache_over_its_capacity_is_an_error():
    """Guards: a cache plugin outgrowing the HBM it reserved."""
    class Hoarder(SetCache):
        def lookup(self, layer, rows, view):
            self.held.update(int(r) for r in rows)
            return np.zeros(rows.shape, dtype=bool)

    planner = Planner(EvenRowsInHBM(), Hoarder(4, 0), Guessing(0, 0, 0), {3: 400}, blocks=8)
    with pytest.raises(RuntimeError, match="over its capacity of 4"):
        planner.plan(StepView(toy_step(0, list(range(1, 40, 2)))))


def test_a_cache_reporting_hits_it_does_not_hold_is_an_error():
    class Liar(SetCache):
        def lookup(self, layer, rows, view):
            return np.ones(rows.shape, dtype=bool)

    planner = Planner(EvenRowsInHBM(), Liar(4, 0), Guessing(0, 0, 0), {3: 400}, blocks=8)
    with pytest.raises(RuntimeError, match="does not hold"):
        planner.plan(StepView(toy_step(0, [1, 3, 5])))


def test_speculative_rows_keep_the_policys_order_and_stay_in_the_table():
    class Ranked(Guessing):
        def speculative_rows(self, layer, view):
            return np.array([399, 7, 399, 5, 3, 101], dtype=np.int64)

    plan = Planner(EvenRowsInHBM(), SetCache(1, 0), Ranked(0, 3, 0), {3: 400}, blocks=8).plan(StepView(toy_step(0, [5])))
    assert plan.layers[3].fetch[plan.layers[3].misses :].tolist() == [399, 7, 3]
    out_of_range = Planner(EvenRowsInHBM(), SetCache(1, 0), Ranked(0, 3, 0), {3: 300}, blocks=8)
    with pytest.raises(ValueError, match="outside layer 3's table of 300 rows"):
        out_of_range.plan(StepView(toy_step(0, [5])))


def test_speculative_rows_are_fetched_once_and_within_budget(outcomes):
    outcome, _ = outcomes["speculative"]
    spec = [r.rows_speculative for s in outcome.steps for r in s.layers]
    assert max(spec) == 400 and sum(spec) > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_causality_and_a_clock_that_never_goes_back(outcomes, variant):
    """Guards: an Engram layer starting before its rows arrived, steps overlapping."""
    outcome, _ = outcomes[variant]
    arrived: dict[tuple[int, int | None], float] = defaultdict(float)
    for span in outcome.spans:
        if span.kind in (SpanKind.H2D, SpanKind.ZERO_COPY) and not span.staging:  # a staging fetch serves later steps
            arrived[(span.step, span.layer)] = max(arrived[(span.step, span.layer)], span.end_s)
    previous = 0.0
    for step in outcome.steps:
        assert step.start_s >= previous - 1e-15
        previous = step.end_s
        for rec in step.layers:
            own = arrived.get((step.index, rec.layer), rec.issue_s) if rec.rows_missed > rec.rows_staged else rec.issue_s
            if rec.rows_staged:  # it also waited for the earlier fetches that carried its staged rows
                assert rec.ready_s >= own - 1e-15
            else:  # a fetch of speculative rows alone, served to the next step, is not waited for
                assert rec.ready_s == pytest.approx(own, abs=1e-15)
    for span in outcome.spans:
        assert span.end_s >= span.start_s
        if span.kind is SpanKind.ENGRAM:
            assert span.start_s >= arrived.get((span.step, span.layer), 0.0) - 1e-15


def test_the_baseline_pass_fetches_nothing(outcomes):
    path = golden_for("lru-next-step")
    prepared = prepare(load_scenario(path, VARIANTS["lru-next-step"]), str(path))
    base = simulate_run(prepared, placement=ALL_HBM)
    assert base.link_busy_s == 0 and not [s for s in base.spans if not s.kind.is_compute and s.kind is not SpanKind.STALL]
    assert all(r.rows_placed_hbm == r.rows_unique for s in base.steps for r in s.layers)


# ---- the planner alone: a set-based cache, a speculative prefetch, a split placement ------------------
class EvenRowsInHBM(Placement):
    name = "even-rows-in-hbm"

    def __init__(self) -> None:
        pass

    def tier_of(self, layer, rows):
        return np.where(rows % 2 == 0, Tier.HBM, Tier.HOST).astype(np.uint8)


class SetCache(Cache):
    """Admits misses at random, evicts at random, within `capacity` rows."""

    name = "set"

    def __init__(self, capacity: int, seed: int) -> None:
        self.capacity, self.held, self.rng = capacity, set(), np.random.default_rng(seed)

    def capacity_rows(self, layer):
        return self.capacity

    def lookup(self, layer, rows, view):
        hit = np.array([int(r) in self.held for r in rows], dtype=bool)
        for row in rows[~hit]:
            if self.rng.random() < 0.5:
                self.held.add(int(row))
        while len(self.held) > self.capacity:
            self.held.remove(sorted(self.held)[int(self.rng.integers(len(self.held)))])
        return hit

    def contents(self, layer):
        return np.array(sorted(self.held), dtype=np.int64)


class Guessing(Prefetch):
    """Leads by `lead` steps; guesses random rows (with duplicates, some needed, some in HBM)."""

    name = "guessing"

    def __init__(self, lead: int, budget: int, seed: int) -> None:
        self.lead, self.budget, self.rng = lead, budget, np.random.default_rng(seed)
        self.horizon = lead

    def issue_layer(self, layer, view):
        return int(self.rng.integers(0, 8))

    def lead_steps(self, layer, view):
        return self.lead

    def speculative_rows(self, layer, view):
        return self.rng.integers(0, 400, size=int(self.rng.integers(0, 60)))

    def speculative_budget(self, layer):
        return self.budget


def toy_step(index: int, rows: list[int]) -> Step:
    unique = np.unique(np.array(rows, dtype=np.int64))
    one = np.ones(1, dtype=np.int64)
    return Step(index, "decode", one, one, one, np.zeros(1, dtype=np.int64), {3: LayerLookup(3, unique, 2 * len(rows))})


@settings(max_examples=80, deadline=None)
@given(steps=st.lists(st.lists(st.integers(0, 399), min_size=0, max_size=80), min_size=1, max_size=12),
       capacity=st.integers(1, 60), lead=st.integers(0, 3), budget=st.integers(0, 30), seed=st.integers(0, 1000))
def test_planner_properties(steps, capacity, lead, budget, seed):
    all_steps = [toy_step(i, rows) for i, rows in enumerate(steps)]
    cache = SetCache(capacity, seed)
    planner = Planner(EvenRowsInHBM(), cache, Guessing(lead, budget, seed), {3: 400}, blocks=8)
    issued = defaultdict(list)
    guessed_before = np.empty(0, dtype=np.int64)
    for step in all_steps:
        plan = planner.plan(StepView(step, lambda k, i=step.index: all_steps[i + 1 : i + 1 + k]))
        for block, fetches in plan.issues.items():
            for f in fetches:
                issued[f.step].append((step.index, block))
        f = plan.layers[3]
        assert len(issued[step.index]) == 1 and issued[step.index][0] == (f.issue_step, f.issue_block)
        assert step.index - min(lead, step.index) <= f.issue_step <= step.index
        if f.issue_step == step.index:
            assert f.issue_block <= 3
        rows = step.lookups[3].rows
        outside = rows[rows % 2 == 1]
        assert f.placed_hbm == int((rows % 2 == 0).sum())
        assert f.placed_hbm + f.cache_hits + f.misses + f.staged.size == rows.size, "served once: placed, hit, fetched or staged"
        needed = f.fetch[: f.misses]
        assert np.array_equal(needed, np.sort(needed)) and np.isin(needed, outside).all()
        assert not np.isin(needed, f.staged).any() and np.isin(f.staged, outside).all()
        assert np.array_equal(f.staged, np.intersect1d(np.union1d(needed, f.staged), guessed_before)), "right guesses served, not fetched"
        assert f.staged_from == (((step.index - 1, 3, False),) if f.staged.size else ())
        extra = f.fetch[f.misses :]
        guessed_before = extra
        assert np.unique(f.fetch).size == f.fetch.size, "fetched once"
        assert not np.isin(extra, rows).any() and (extra % 2 == 1).all() and extra.size <= budget
        assert np.isin(f.admitted, np.union1d(needed, f.staged)).all()
        assert cache.contents(3).size <= capacity
        if lead == 0:  # with a lead, later steps were planned since: the cache has moved on
            assert not np.isin(extra, cache.contents(3)).any(), "a cached row is not fetched again"


# ---- parity: the simulator and the real CPU backend walk the same segments -------------------------


def segments(outcome: RunOutcome) -> list[tuple]:
    return [(s.step, s.kind.value, s.layer, s.blocks) for s in outcome.spans
            if s.kind in (SpanKind.HOST, SpanKind.BLOCKS, SpanKind.ENGRAM, SpanKind.HEAD)]


def fetched(outcome: RunOutcome) -> list[tuple]:
    return sorted((s.step, s.layer, s.kind.value, s.bytes) for s in outcome.spans if s.kind in (SpanKind.GATHER, SpanKind.H2D, SpanKind.ZERO_COPY))


@pytest.mark.parametrize("overrides", [
    [],
    ["strategies.cache={name: demo-lru, params: {rows: 500}}", "strategies.prefetch={name: demo-next-step, params: {block: 2}}"],
    ["strategies.transport=zero-copy", "strategies.prefetch={name: demo-guess, params: {budget: 50, serve: false}}"],
    ["strategies.prefetch={name: layer-ahead, params: {lead_steps: 2, lead_blocks: 1}}"],
], ids=["layer-ahead", "lru-next-step", "zero-copy-speculative", "two-steps-lead"])
def test_simulator_and_cpu_backend_run_the_same_segments(tmp_path, overrides):
    """Guards: the two executors drifting apart (a cut, an issue or an Engram layer one has and the
    other has not); the same steps, records and fetches, in the same order."""
    from engramsim.runner import run_real

    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    prepared = prepare(load_scenario(path, ["model.engram.layers=[1, 3]", *overrides]), str(path))
    sim, real = simulate_run(prepared), run_real(prepared, "cpu")
    assert segments(sim) == segments(real)
    assert fetched(sim) == fetched(real)
    for a, b in zip(sim.steps, real.steps, strict=True):
        assert [(r.layer, r.rows_unique, r.rows_placed_hbm, r.cache_hits, r.rows_missed, r.rows_speculative, r.issue_step)
                for r in a.layers] == [(r.layer, r.rows_unique, r.rows_placed_hbm, r.cache_hits, r.rows_missed, r.rows_speculative,
                                        r.issue_step) for r in b.layers]


@pytest.mark.parametrize("overrides", [
    ["strategies.cache={name: demo-lru, params: {rows: 500}}", "strategies.prefetch=demo-next-step"],
    ["strategies.placement=all-hbm"],
], ids=["lru-next-step", "all-hbm"])
def test_the_real_backend_allocates_what_the_hbm_budget_counts(tmp_path, overrides):
    """Guards: engramsim/hbm.py and the real backend disagreeing on staging slots and caches."""
    from engramsim.backends.executor import RealSession

    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    prepared = prepare(load_scenario(path, overrides), str(path))
    with RealSession(prepared, "cpu") as session:
        device = session.footprint(resident=False).device
        assert device["landing buffers"] == prepared.hbm["Engram staging buffers"]
        assert device["Engram caches"] == prepared.hbm["Engram caches"]
        landing = sum(t.numel() * t.element_size() for mem in session.layers.values() for t in mem.landing)
        assert landing == prepared.hbm["Engram staging buffers"]


def test_the_cache_mirror_serves_the_rows_the_table_holds():
    """Guards: a real backend reading a cache hit from the wrong slot (counts alone would not show it)."""
    from engramsim.backends.cpu import CpuDevice
    from engramsim.backends.engram_memory import CacheBuffer, LayerMemory

    class AllOutside(EvenRowsInHBM):
        def tier_of(self, layer, rows):
            return np.full(rows.shape, Tier.HOST, dtype=np.uint8)

    table = torch.arange(400 * 4, dtype=torch.float32).view(400, 4)
    cache = CacheBuffer(40, 4, torch.float32, CpuDevice("test"))
    mem = LayerMemory(None, table, [torch.empty(400, 4) for _ in range(2)], None, None, None, cache, None)  # type: ignore[arg-type]
    guessing = Guessing(1, 5, 1)
    guessing.serve_speculative = False  # what the real backends run: each step fetches its own misses
    planner = Planner(AllOutside(), SetCache(40, 1), guessing, {3: 400}, blocks=8)
    rng = np.random.default_rng(0)
    steps = [toy_step(i, rng.integers(0, 400, size=60).tolist()) for i in range(30)]
    served = 0
    for step in steps:
        plan = planner.plan(StepView(step, lambda k, i=step.index: steps[i + 1 : i + 1 + k])).layers[3]
        landing = mem.buffers(plan.step).landing
        landing[: plan.fetch.size] = table[torch.from_numpy(plan.fetch)]
        rows = mem.rows(plan, plan.rows[:, None])
        hits = np.setdiff1d(plan.rows, rows.fetched)
        assert hits.size == plan.cache_hits
        if hits.size:
            assert rows.resident is cache.rows
            assert torch.equal(cache.rows[torch.from_numpy(rows.resident_index)], table[torch.from_numpy(hits)])
            served += hits.size
        cache.update(plan, landing)
    assert served > 50

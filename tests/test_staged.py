"""Staged rows: rows an earlier step fetched into the HBM staging area serve a later step's misses,
which that step does not fetch again (engramsim/plan.py). Two kinds: the prompt rows of requests
waiting to be admitted (`prefill-ahead`'s `fetch_waiting`) and the previous step's speculative rows."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramsim.plan import FetchPlan, Planner, StepPlan
from engramsim.records import SpanKind
from engramsim.registry import register
from engramsim.runner import simulate_run
from engramsim.simulator.engine import Engine, simulate
from engramsim.skeleton import skeleton
from engramsim.steps import LayerLookup, Step
from engramsim.strategies import Cache, Placement, Prefetch, StepView, Tier, Waiting
from tests.test_engine import MS, Everywhere, ListScheduler, NoCache, Pipe, ToyCost
from tests.test_prefetch_policies import prepared, small

LAYER = 3


# ---- the planner alone: toy steps and a toy waiting queue ----------------------------------------------
class SomeInHBM(Placement):
    name = "every-fifth-in-hbm-toy"

    def __init__(self) -> None:
        pass

    def tier_of(self, layer, rows):
        return np.where(rows % 5 == 0, Tier.HBM, Tier.HOST).astype(np.uint8)


class HeldCache(Cache):
    """Holds a fixed set of rows (hits on them), never admits."""

    name = "held-toy"

    def __init__(self, held=()) -> None:
        self.held = np.array(sorted(set(held)), dtype=np.int64)

    def capacity_rows(self, layer):
        return int(self.held.size)

    def lookup(self, layer, rows, view):
        return np.isin(rows, self.held)

    def contents(self, layer):
        return self.held


class Ahead(Prefetch):
    """prefill-ahead's staging alone: layer-ahead issue, waiting requests staged within a bound."""

    name = "ahead-toy"
    horizon = 2

    def __init__(self, bound: int, fetch_waiting: bool = True) -> None:
        self.bound, self.fetch_waiting = bound, fetch_waiting

    def issue_layer(self, layer, view):
        return 0

    def lead_steps(self, layer, view):
        return self.horizon if view.step.kind == "prefill" else 0

    def max_staged_rows(self, layer):
        return self.bound


def step_of(index: int, kind: str, seqs: list[int], tokens: list[int], rows, layer: int = LAYER) -> Step:
    unique = np.unique(np.asarray(rows, dtype=np.int64))
    ids, n = np.asarray(seqs, dtype=np.int64), np.asarray(tokens, dtype=np.int64)
    return Step(index, kind, ids, n, n, np.zeros(int(n.sum()), dtype=np.int64), {layer: LayerLookup(layer, unique, max(1, unique.size))})


def queue(prompts: dict[int, list[int]], seqs: list[int], layer: int = LAYER) -> Waiting:
    return Waiting(np.asarray(seqs, dtype=np.int64), np.asarray([len(prompts[s]) for s in seqs], dtype=np.int64),
                   lambda seq: {layer: LayerLookup(layer, np.unique(np.asarray(prompts[seq], dtype=np.int64)), len(prompts[seq]))})


def run_planner(planner: Planner, steps: list[Step], waiting: list[Waiting], known_from: int | None = None) -> list[StepPlan]:
    plans = []
    for step, w in zip(steps, waiting, strict=True):
        known = known_from is not None and step.index >= known_from
        future = (lambda k, i=step.index: steps[i + 1: i + 1 + k]) if known else (lambda k: [])
        plans.append(planner.plan(StepView(step, future, lambda w=w: w)))
    return plans


PROMPTS = {0: [1, 2, 3], 1: [4, 6, 7, 8, 10], 2: [11, 12, 13, 14, 16, 17], 3: [2, 21]}


def test_waiting_prompts_are_staged_and_served_by_hand():
    # Step 0 prefills request 0 while 1 and 2 wait; 1 decodes 0; 2 prefills 1 (3 arrives); 3 decodes; 4 prefills 2 and 3.
    steps = [step_of(0, "prefill", [0], [3], PROMPTS[0]), step_of(1, "decode", [0], [4], [30, 31]),
             step_of(2, "prefill", [1], [5], PROMPTS[1]), step_of(3, "decode", [0, 1], [5, 6], [32]),
             step_of(4, "prefill", [2, 3], [6, 2], PROMPTS[2] + PROMPTS[3])]
    waiting = [queue(PROMPTS, [1, 2]), queue(PROMPTS, [1, 2]), queue(PROMPTS, [2, 3]), queue(PROMPTS, [2, 3]), queue(PROMPTS, [])]
    planner = Planner(SomeInHBM(), HeldCache([17]), Ahead(bound=6), {LAYER: 100}, blocks=8)
    plans = run_planner(planner, steps, waiting)
    staging = {p.step.index: [f.fetch.tolist() for fetches in p.issues.values() for f in fetches if f.staging] for p in plans}
    # Step 0 stages 1 (4, 6, 7, 8; 10 is in HBM) and not 2 (11 .. 16 less the HBM row and the cached row: 5 rows, over the
    # 2 left); nothing at steps 1 and 2 (1's rows are held until its prefill, step 2, has run); at step 3, 2 fits and 3
    # (2, 21) does not.
    assert staging == {0: [[4, 6, 7, 8]], 1: [], 2: [], 3: [[11, 12, 13, 14, 16]], 4: []}
    layer = {p.step.index: p.layers[LAYER] for p in plans}
    assert [layer[i].waiting for i in range(5)] == [4, 0, 0, 5, 0]
    assert layer[2].staged.tolist() == [4, 6, 7, 8] and layer[2].staged_from == ((0, LAYER, True),)
    assert layer[2].fetch.size == 0 and layer[2].missed == 4, "the prefill fetches none of them again"
    assert layer[4].staged.tolist() == [11, 12, 13, 14, 16] and layer[4].fetch.tolist() == [2, 21], "3 was not staged: fetched"
    assert [p.released for p in plans] == [(), (), ((0, LAYER, True),), (), ((3, LAYER, True),)]
    record = layer[2].record(row_bytes=10, issue_s=0.0, ready_s=0.0, stall_s=0.0)
    assert (record.rows_missed, record.rows_staged, record.rows_fetched, record.bytes_fetched) == (4, 4, 0, 0)
    record = layer[3].record(row_bytes=10, issue_s=0.0, ready_s=0.0, stall_s=0.0)
    assert (record.rows_missed, record.rows_waiting, record.rows_fetched, record.bytes_fetched) == (1, 5, 6, 60)


def test_without_fetch_waiting_nothing_is_staged():
    steps = [step_of(0, "prefill", [0], [3], PROMPTS[0]), step_of(1, "prefill", [1], [5], PROMPTS[1])]
    waiting = [queue(PROMPTS, [1]), queue(PROMPTS, [])]
    plans = run_planner(Planner(SomeInHBM(), HeldCache(), Ahead(100, fetch_waiting=False), {LAYER: 100}, blocks=8), steps, waiting)
    assert all(not f.staging for p in plans for fetches in p.issues.values() for f in fetches)
    assert plans[1].layers[LAYER].fetch.tolist() == [4, 6, 7, 8] and not plans[1].layers[LAYER].staged.size


def test_with_a_known_future_the_waiting_queue_is_not_staged():
    """The future-based lead covers it (and the offline goldens stay as they were)."""
    steps = [step_of(0, "prefill", [0], [3], PROMPTS[0]), step_of(1, "prefill", [1], [5], PROMPTS[1])]
    waiting = [queue(PROMPTS, [1]), queue(PROMPTS, [])]
    plans = run_planner(Planner(SomeInHBM(), HeldCache(), Ahead(100), {LAYER: 100}, blocks=8), steps, waiting, known_from=0)
    assert all(not f.staging for p in plans for fetches in p.issues.values() for f in fetches)
    assert plans[1].layers[LAYER].issue_step == 0 and not plans[1].layers[LAYER].staged.size


@st.composite
def workloads(draw):
    """Requests arriving over the steps; each step prefills some waiting ones (whole prompts) or decodes."""
    n = draw(st.integers(1, 8))
    prompts = {s: draw(st.lists(st.integers(0, 79), min_size=1, max_size=25)) for s in range(n)}
    arrive = sorted(draw(st.lists(st.integers(0, 6), min_size=n, max_size=n)))
    steps, waiting, waited, index = [], [], [], 0
    pending = list(range(n))
    while pending or index < 3:
        waited += [s for s in pending if arrive[s] <= index and s not in waited]
        take = draw(st.integers(0, len(waited)))
        run, waited = waited[:take], waited[take:]
        pending = [s for s in pending if s not in run]
        if run:
            steps.append(step_of(index, "prefill", run, [len(prompts[s]) for s in run], [r for s in run for r in prompts[s]]))
        else:
            steps.append(step_of(index, "decode", [0], [1], draw(st.lists(st.integers(0, 79), max_size=6))))
        waiting.append(queue(prompts, list(waited)))
        index += 1
        if index > 20:
            break
    return steps, waiting


class AheadGuessing(Ahead):
    """Also guesses random rows (some needed next, some staged already)."""

    def __init__(self, bound: int, budget: int, seed: int) -> None:
        super().__init__(bound)
        self.budget, self.rng = budget, np.random.default_rng(seed)

    def speculative_rows(self, layer, view):
        return self.rng.integers(0, 80, size=int(self.rng.integers(0, 12)))

    def speculative_budget(self, layer):
        return self.budget


@settings(max_examples=120, deadline=None)
@given(workload=workloads(), bound=st.integers(0, 40), budget=st.integers(0, 8), cached=st.lists(st.integers(0, 79), max_size=10),
       seed=st.integers(0, 100))
def test_staged_rows_are_served_once_never_fetched_twice_and_within_the_bound(workload, bound, budget, cached, seed):
    steps, waiting = workload
    planner = Planner(SomeInHBM(), HeldCache(cached), AheadGuessing(bound, budget, seed), {LAYER: 80}, blocks=8)
    carried: dict[tuple, np.ndarray] = {}  # fetch key -> the rows it moved for later steps
    for step, w in zip(steps, waiting, strict=True):
        held_before = np.concatenate([e.rows for e in planner.staged_rows(LAYER)] or [np.empty(0, dtype=np.int64)])
        plan = planner.plan(StepView(step, lambda k: [], lambda w=w: w))
        f = plan.layers[LAYER]
        assert not np.isin(f.fetch[: f.misses], held_before).any(), "a row held in the staging area is never fetched again"
        held = np.concatenate([e.rows for e in planner.staged_rows(LAYER)] or [np.empty(0, dtype=np.int64)])
        waiting_held = sum(e.rows.size for e in planner.staged_rows(LAYER) if e.seq is not None)
        assert waiting_held <= bound, "the staging area stays within max_staged_rows"
        assert np.unique(held).size == held.size, "a row is held once"
        f = plan.layers[LAYER]
        rows = step.lookups[LAYER].rows
        outside = rows[rows % 5 != 0]
        misses = outside[~np.isin(outside, planner.cache.contents(LAYER))]
        assert f.placed_hbm + f.cache_hits + f.misses + f.staged.size == rows.size, "every row served once"
        assert np.array_equal(np.union1d(f.fetch[: f.misses], f.staged), misses) and not np.isin(f.fetch[: f.misses], f.staged).any()
        for key in f.staged_from:
            assert key[0] < step.index, "served only by fetches of earlier steps"
        served_by = np.concatenate([carried[key] for key in f.staged_from]) if f.staged_from else np.empty(0, dtype=np.int64)
        assert np.isin(f.staged, served_by).all(), "staged rows are rows the fetches it waits for carried"
        for fetches in plan.issues.values():
            for g in fetches:
                assert np.unique(g.fetch).size == g.fetch.size
                if g.staging:
                    assert g.step == step.index and g.issue_block == 0
                    carried[g.key] = g.fetch
                elif g.carries:
                    carried[g.key] = g.fetch[g.misses:]
        extra = f.fetch[f.misses:]
        staging = [g for fetches in plan.issues.values() for g in fetches if g.staging]
        before = np.concatenate([e.rows for e in planner.staged_rows(LAYER) if e.key[0] < step.index]
                                or [np.empty(0, dtype=np.int64)])
        assert not np.isin(extra, before).any(), "a held row is not fetched again as a guess"
        for g in staging:
            assert not np.isin(g.fetch, before).any(), "nor by a staging fetch"
            assert not np.isin(g.fetch, planner.cache.contents(LAYER)).any() and (g.fetch % 5 != 0).all()


# ---- speculation: a right guess is served from where it landed --------------------------------------------
@register("prefetch", "test-oracle-guess")
class OracleGuess(Prefetch):
    """A perfect predictor: guesses exactly the next step's rows (from the known future of an offline run)."""

    def issue_layer(self, layer, view):
        return 0

    def speculative_rows(self, layer, view):
        after = view.future(1)
        return after[0].lookups[layer].rows if after else np.empty(0, dtype=np.int64)

    def speculative_budget(self, layer):
        return 1 << 16


def test_a_perfect_predictor_fetches_nothing_it_guessed_and_stalls_less():
    decode_heavy = {"prompt_len": {"dist": "uniform", "low": 8, "high": 16}, "output_len": {"dist": "uniform", "low": 40, "high": 60}}

    def run(prefetch):  # one wide Engram layer at block 1 over a Gen3 link: layer-ahead stalls
        data = small(prefetch, **decode_heavy)
        data["hardware"] = {"profile": "h100-pcie", "link": "pcie-gen3-x16"}
        data["model"]["engram"] |= {"layers": [1], "head_dim": 512}
        return simulate_run(prepared(data))

    base, oracle = run("layer-ahead"), run("test-oracle-guess")
    assert [s.kind for s in base.steps] == [s.kind for s in oracle.steps], "the same steps"
    staged = missed = 0
    for a, b in zip(base.steps, oracle.steps, strict=True):
        for ra, rb in zip(a.layers, b.layers, strict=True):
            assert (ra.rows_unique, ra.rows_missed) == (rb.rows_unique, rb.rows_missed)
            assert rb.rows_guessed == rb.rows_staged, "every right guess served from staging"
            assert rb.bytes_fetched == (rb.rows_missed - rb.rows_staged + rb.rows_speculative) * ra.bytes_fetched // ra.rows_fetched
            if b.index > 0:  # a guess leaves out the rows the guessing step needs itself: those are fetched again
                staged, missed = staged + rb.rows_staged, missed + rb.rows_missed
    assert staged > 0.9 * missed
    stall = [sum(s.stall_s for s in run.steps if s.index > 0) for run in (base, oracle)]
    assert stall[0] > 0 and stall[1] < 0.5 * stall[0]


def test_speculative_decode_serves_its_right_guesses_and_can_be_told_not_to():
    spec = {"name": "speculative-decode", "params": {"k": 3, "budget_rows": 600}}
    serve = simulate_run(prepared(small(spec)))
    again = simulate_run(prepared(small(spec | {"params": spec["params"] | {"serve_guesses": False}})))
    staged = [r.rows_staged for s in serve.steps for r in s.layers]
    assert sum(staged) > 0 and staged == [r.rows_guessed for s in serve.steps for r in s.layers]
    assert all(r.rows_staged == 0 for s in again.steps for r in s.layers)
    moved = [sum(r.bytes_fetched for s in run.steps for r in s.layers) for run in (serve, again)]
    assert moved[0] < moved[1], "right guesses are not fetched twice"


# ---- prefill-ahead under timed arrivals -----------------------------------------------------------------
POISSON = {"arrival": {"kind": "poisson", "rate_per_s": 3000}, "requests": 24,
           "batching": {"max_num_seqs": 1, "max_num_batched_tokens": 160}}


@pytest.fixture(scope="module")
def poisson_plans():
    """prefill-ahead and layer-ahead under Poisson arrivals, with every StepPlan the simulator ran."""
    out = {}
    for name, choice in {"ahead": {"name": "prefill-ahead", "params": {"max_lead_steps": 4, "max_staged_rows": 4000}},
                         "off": {"name": "prefill-ahead", "params": {"max_lead_steps": 4, "fetch_waiting": False}},
                         "layer-ahead": "layer-ahead"}.items():
        plans: list[StepPlan] = []
        original = Planner.plan

        def plan(self, view, plans=plans, original=original):
            made = original(self, view)
            plans.append(made)
            return made

        Planner.plan = plan  # type: ignore[method-assign]
        try:
            outcome = simulate_run(prepared(small(choice, **POISSON)))
        finally:
            Planner.plan = original  # type: ignore[method-assign]
        out[name] = (outcome, [p for p in plans if p.layers])
    return out


def test_prefill_ahead_fetches_waiting_prompts_in_an_earlier_step_and_not_again(poisson_plans):
    outcome, plans = poisson_plans["ahead"]
    staging: dict[tuple, FetchPlan] = {}
    served = 0
    for plan in plans:
        for fetches in plan.issues.values():
            staging |= {f.key: f for f in fetches if f.staging}
        for layer, f in plan.layers.items():
            if not f.staged.size:
                continue
            for key in f.staged_from:
                assert key[0] < f.step and key[1] == layer, "fetched in a step before the step that needs them"
            carried = np.concatenate([staging[k].fetch if k[2] else np.empty(0, dtype=np.int64) for k in f.staged_from])
            assert np.isin(f.staged, carried).all() and not np.isin(f.staged, f.fetch).any(), "and not fetched again"
            if plan.step.kind != "decode":
                served += f.staged.size
    assert served > 0, "prompt rows of waiting requests served prefill steps"
    records = [r for s in outcome.steps for r in s.layers]
    assert sum(r.rows_staged for r in records) == served and sum(r.rows_waiting for r in records) >= served
    assert sum(r.bytes_fetched for r in records) == sum(s.bytes for s in outcome.spans if s.kind is SpanKind.H2D)


def test_without_fetch_waiting_prefill_ahead_is_layer_ahead_until_the_future_is_known(poisson_plans):
    off, base = poisson_plans["off"][0], poisson_plans["layer-ahead"][0]
    last = max(float(a) for a in prepared(small("layer-ahead", **POISSON)).workload.requests.arrival_s)
    compared = 0
    for a, b in zip(base.steps, off.steps, strict=True):
        assert all(r.rows_staged == r.rows_waiting == 0 for r in b.layers)
        if b.start_s < last:
            assert [(r.issue_step, r.rows_missed, r.bytes_fetched) for r in a.layers] == \
                   [(r.issue_step, r.rows_missed, r.bytes_fetched) for r in b.layers]
            compared += 1
    assert compared > 5


def test_staging_fetches_are_issued_at_the_steps_start_after_its_own_fetches(poisson_plans):
    for plan in poisson_plans["ahead"][1]:
        for block, fetches in plan.issues.items():
            kinds = [f.staging for f in fetches]
            assert kinds == sorted(kinds), "own fetches first"
            assert block == 0 or not any(kinds)
        assert skeleton(plan, 8)  # the skeleton takes them as any other issue


# ---- the engine: a layer waits for the staging fetch that carried its rows ------------------------------
class QueueScheduler(ListScheduler):
    """Toy steps with a toy waiting queue at each step's start."""

    def __init__(self, steps, waiting):
        super().__init__(steps)
        self.waiting = waiting

    def view(self, step, max_steps=None):
        return StepView(step, lambda k: [], lambda w=self.waiting[step.index]: w)


def test_a_layer_waits_for_a_late_staging_fetch():
    """Step 0 (3 blocks of 1 ms) stages request 1's 50,000 rows (5 MB at 1 GB/s, after 0.2 ms of DMA
    latency): they land at 5.2 ms, after step 1, which prefills request 1, reached its Engram layer
    at 4 ms. Step 1 fetches none of them and stalls until the staging fetch lands."""
    prompt = list(range(50_000))
    prompts = {0: [60_000], 1: prompt}
    steps = [step_of(0, "prefill", [0], [1], prompts[0], layer=1), step_of(1, "prefill", [1], [len(prompt)], prompt, layer=1)]
    waiting = [queue(prompts, [1], layer=1), queue(prompts, [], layer=1)]
    engine = Engine(ToyCost(), {1: SimpleNamespace(row_bytes=100)}, 3, Pipe("h2d"), copy_engines=2)
    planner = Planner(Everywhere(Tier.HOST), NoCache(), Ahead(1 << 20), {1: 1 << 20}, blocks=3)
    records, _ = simulate(engine, QueueScheduler(steps, waiting), planner)
    staging = [s for s in engine.spans if s.kind is SpanKind.H2D and s.staging]
    assert [(s.step, s.layer, s.bytes) for s in staging] == [(0, 1, 5_000_000)]
    landed = staging[0].end_s
    assert landed == pytest.approx(0.2 * MS + 100 / 1e9 + 5 * MS), "after step 0's own fetch on the one link"
    first, second = records[0].layers[0], records[1].layers[0]
    assert (first.rows_missed, first.rows_waiting, first.bytes_fetched) == (1, 50_000, 100 * 50_001)
    assert (second.rows_missed, second.rows_staged, second.rows_fetched, second.bytes_fetched) == (50_000, 50_000, 0, 0)
    assert records[1].start_s == pytest.approx(3 * MS) and landed > 4 * MS
    assert second.ready_s == pytest.approx(landed) and second.stall_s == pytest.approx(landed - 4 * MS)
    engram = next(s for s in engine.spans if s.kind is SpanKind.ENGRAM and s.step == 1)
    assert engram.start_s == pytest.approx(landed)
    assert records[1].end_s == pytest.approx(landed + 2 * MS)
    assert not engine._carriers, "released once the prefill ran"


def test_a_staging_fetch_that_landed_costs_no_stall():
    prompts = {0: [60_000], 1: list(range(1_000))}  # 0.1 MB: lands at 0.3 ms, long before step 1
    steps = [step_of(0, "prefill", [0], [1], prompts[0], layer=1), step_of(1, "prefill", [1], [1_000], prompts[1], layer=1)]
    engine = Engine(ToyCost(), {1: SimpleNamespace(row_bytes=100)}, 3, Pipe("h2d"), copy_engines=2)
    planner = Planner(Everywhere(Tier.HOST), NoCache(), Ahead(1 << 20), {1: 1 << 20}, blocks=3)
    records, _ = simulate(engine, QueueScheduler(steps, [queue(prompts, [1], layer=1), queue(prompts, [], layer=1)]), planner)
    second = records[1].layers[0]
    assert second.rows_staged == 1_000 and second.stall_s == 0 and second.ready_s == second.issue_s == pytest.approx(3 * MS)


def test_deadline_mode_drops_rows_whose_staging_fetch_is_late():
    plan = FetchPlan(step=2, layer=1, rows=np.arange(4), references=4, placed_hbm=0, cache_hits=0, fetch=np.empty(0, dtype=np.int64),
                     misses=0, issue_step=2, issue_block=0, staged=np.arange(4), staged_from=((0, 1, True),), deadline=True,
                     missed_references=4)
    record = plan.record(row_bytes=8, issue_s=0.0, ready_s=0.0, stall_s=0.0, dropped=True)
    assert (record.rows_dropped, record.references_dropped, record.rows_missed, record.rows_staged) == (4, 4, 4, 4)
    assert math.isclose(record.bytes_fetched, 0)



# ---- the real backends refuse staged rows ------------------------------------------------------------------
@pytest.mark.parametrize("verb", ["run", "check"])
@pytest.mark.parametrize("prefetch", [
    "{name: speculative-decode, params: {k: 2, budget_rows: 64}}",
    "{name: prefill-ahead, params: {max_lead_steps: 2}}",  # timed arrivals: the waiting requests would be staged
], ids=["speculative-decode", "prefill-ahead"])
def test_the_real_backends_refuse_staged_rows_in_one_line(verb, prefetch, tmp_path, capsys):
    from engramsim.cli import main
    from tests.test_deadline import BLOCK_1

    out = tmp_path / "out"
    args = [verb, str(BLOCK_1), "--backend", "cpu", "--set", f"strategies.prefetch={prefetch}",
            "--set", "workload.arrival={kind: poisson, rate_per_s: 50}"]
    code = main(args + (["--out", str(out)] if verb == "run" else []))
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "strategies.prefetch.name" in err and "staged" in err, err
    assert not out.exists()


def test_the_real_backends_run_what_stages_nothing(tmp_path):
    """Offline prefill-ahead (nothing waits once the future is known) and speculative-decode with serve_guesses false."""
    from engramsim.backends.executor import SessionLayout
    from engramsim.scenario_io import load_scenario
    from engramsim.session import prepare
    from tests.test_deadline import BLOCK_1

    for prefetch in ("{name: prefill-ahead, params: {max_lead_steps: 2}}",
                     "{name: speculative-decode, params: {k: 2, budget_rows: 64, serve_guesses: false}}"):
        SessionLayout(prepare(load_scenario(BLOCK_1, [f"strategies.prefetch={prefetch}"]), str(BLOCK_1)))


def test_hbm_counts_the_staging_area_only_for_a_policy_that_stages():
    """"Engram staged rows": a right guess's room (budget_rows per layer) when guesses are served,
    max_staged_rows per layer for prefill-ahead while requests still arrive; nothing offline or
    when guesses are fetched again. Guards: a staging area the KV cache's budget never heard of."""
    def staged(choice: dict, **workload) -> tuple[int, int]:
        p = prepared(small(choice, **workload))
        return p.hbm["Engram staged rows"], sum(t.row_bytes for t in p.tables.values())

    spec = {"name": "speculative-decode", "params": {"k": 3, "budget_rows": 600}}
    held, row_bytes = staged(spec)
    assert held == 600 * row_bytes
    assert staged(spec | {"params": spec["params"] | {"serve_guesses": False}})[0] == 0
    ahead = {"name": "prefill-ahead", "params": {"max_staged_rows": 4000}}
    assert staged(ahead)[0] == 0, "offline: nothing waits once the future is known"
    assert staged(ahead, **POISSON)[0] == 4000 * row_bytes

"""The prefetch policies beyond the baselines: cross-step prefill prefetch (`prefill-ahead`), k-step
lookahead within a staging budget (`lookahead`), speculative decode prefetch with an n-gram
predictor trained on unserved tokens (`speculative-decode`), and the speculation metrics
(precision, recall, wasted bytes). Hand-checked cases through the planner, properties, and the
policies on small scenarios in the simulator."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from engramsim.cli import main
from engramsim.errors import InputError
from engramsim.metrics import LAYER_FIELDS, Speculation
from engramsim.plan import Planner
from engramsim.plugins.prefetch.layer_ahead import LayerAhead, LayerAheadParams
from engramsim.plugins.prefetch.lookahead import Lookahead, LookaheadParams
from engramsim.plugins.prefetch.prefill_ahead import PrefillAhead, PrefillAheadParams
from engramsim.plugins.prefetch.speculative_decode import NgramPredictor, SpeculativeDecode, range_mask, served_mask
from engramsim.records import LayerRecord, RunOutcome, StepRecord
from engramsim.registry import build
from engramsim.results import summarize
from engramsim.runner import simulate_run
from engramsim.scenario import StrategyChoice
from engramsim.scenario_io import scenario_from_dict
from engramsim.session import prepare
from engramsim.steps import LayerLookup, Step
from engramsim.strategies import Cache, Placement, Prefetch, SetupContext, StepView, Tier

SMALL = {
    "name": "small",
    "model": {
        "backbone": {"layers": 8, "hidden": 1024, "intermediate": 2816, "attention": {"heads": 8, "kv_heads": 2, "head_dim": 128},
                     "vocab": 32000},
        "engram": {"layers": [1, 5], "rows_per_head": 500000, "head_dim": 64, "hc_mult": 1},
    },
    "hardware": "h100-pcie",
    "workload": {"trace": "cpython-docs", "requests": 12, "prompt_len": {"dist": "uniform", "low": 16, "high": 96},
                 "output_len": {"dist": "uniform", "low": 4, "high": 24},
                 "batching": {"max_num_seqs": 4, "max_num_batched_tokens": 160}},
    "strategies": {"prefetch": "layer-ahead", "transport": "staged"},
    "run": {"seed": 3},
}


def small(prefetch: dict | str, **workload) -> dict:
    data = yaml.safe_load(yaml.safe_dump(SMALL))
    data["strategies"]["prefetch"] = prefetch
    data["workload"] |= workload
    return data


def prepared(data: dict):
    return prepare(scenario_from_dict(data, source="small.yaml"), "small.yaml")


# ---- the planner alone: toy steps, every row in host memory, no cache ------------------------------
class AllHost(Placement):
    name = "all-host-toy"

    def __init__(self) -> None:
        pass

    def tier_of(self, layer, rows):
        return np.full(rows.shape, Tier.HOST, dtype=np.uint8)


class NoCache(Cache):
    name = "none-toy"

    def __init__(self) -> None:
        pass


def toy(index: int, kind: str, rows: list[int]) -> Step:
    unique = np.unique(np.array(rows, dtype=np.int64))
    one = np.ones(1, dtype=np.int64)
    return Step(index, kind, one, one, one, np.zeros(1, dtype=np.int64), {3: LayerLookup(3, unique, len(rows))})  # type: ignore[arg-type]


def plan_all(prefetch: Prefetch, steps: list[Step], known: bool = True) -> dict[int, object]:
    """Plan every step in order (the future known or not); the FetchPlan of layer 3 of each step."""
    planner = Planner(AllHost(), NoCache(), prefetch, {3: 1000}, blocks=8)
    plans = {}
    for step in steps:
        future = (lambda k, i=step.index: steps[i + 1: i + 1 + k]) if known else (lambda k: [])
        plans[step.index] = planner.plan(StepView(step, future)).layers[3]
    return plans


def issued(plans) -> list[tuple[int, int]]:
    return [(p.issue_step, p.issue_block) for p in plans.values()]


def prefill_ahead(lead: int) -> PrefillAhead:
    return PrefillAhead(PrefillAheadParams(max_lead_steps=lead), None)  # type: ignore[arg-type]  (needs no setup)


def layer_ahead() -> LayerAhead:
    return LayerAhead(LayerAheadParams(), None)  # type: ignore[arg-type]


def lookahead(steps: int, budget: int) -> Lookahead:
    return Lookahead(LookaheadParams(steps=steps, budget_rows=budget), None)  # type: ignore[arg-type]


STEPS = [toy(0, "prefill", [1, 2, 3]), toy(1, "prefill", [4, 5]), toy(2, "decode", [6]), toy(3, "prefill", [7, 8]),
         toy(4, "decode", [9]), toy(5, "decode", [10])]


def test_prefill_ahead_by_hand():
    # Each prefill step is planned (and its fetch issued) at the start of the first step that sees it
    # within max_lead_steps; decodes at their own start. Step 0 has no earlier step.
    assert issued(plan_all(prefill_ahead(8), STEPS)) == [(0, 0), (0, 0), (2, 0), (0, 0), (4, 0), (5, 0)]
    assert issued(plan_all(prefill_ahead(1), STEPS)) == [(0, 0), (0, 0), (2, 0), (2, 0), (4, 0), (5, 0)]
    assert issued(plan_all(prefill_ahead(2), STEPS)) == [(0, 0), (0, 0), (2, 0), (1, 0), (4, 0), (5, 0)]


def test_prefill_ahead_is_layer_ahead_without_a_known_future():
    assert issued(plan_all(prefill_ahead(8), STEPS, known=False)) == issued(plan_all(layer_ahead(), STEPS, known=False))
    assert issued(plan_all(layer_ahead(), STEPS)) == [(i, 0) for i in range(6)]


@pytest.fixture(scope="module")
def runs() -> dict[str, RunOutcome]:
    """The small scenario (offline: the future is known from the first step), several prefetches."""
    choices = {"layer-ahead": "layer-ahead", "prefill-ahead": {"name": "prefill-ahead", "params": {"max_lead_steps": 4}},
               "lookahead": {"name": "lookahead", "params": {"steps": 3, "budget_rows": 3000}},
               "speculative": {"name": "speculative-decode", "params": {"k": 3, "budget_rows": 600}}}
    return {name: simulate_run(prepared(small(choice))) for name, choice in choices.items()}


def test_prefill_prefetch_issues_strictly_earlier_than_layer_ahead_when_the_future_is_known(runs):
    base, ahead = runs["layer-ahead"], runs["prefill-ahead"]
    assert [s.kind for s in base.steps] == [s.kind for s in ahead.steps], "the same steps"
    prefills = 0
    for a, b in zip(base.steps, ahead.steps, strict=True):
        for ra, rb in zip(a.layers, b.layers, strict=True):
            assert ra.issue_step == a.index
            if b.kind == "prefill" and b.index > 0:
                assert rb.issue_step < ra.issue_step and rb.issue_s < ra.issue_s
                prefills += 1
            else:
                assert rb.issue_step == ra.issue_step and rb.issue_s == pytest.approx(ra.issue_s - a.start_s + b.start_s)
            assert (rb.rows_missed, rb.bytes_fetched) == (ra.rows_missed, ra.bytes_fetched)
    assert prefills >= 4
    stall = [sum(s.stall_s for s in run.steps if s.kind == "prefill") for run in (base, ahead)]
    assert stall[1] <= stall[0]


def test_prefill_prefetch_matches_layer_ahead_with_timed_arrivals():
    """While a request has yet to arrive the future is unknown: every fetch as layer-ahead issues it.
    (The arrival rate here is so low that one request arrives after each other ends.)"""
    poisson = {"arrival": {"kind": "poisson", "rate_per_s": 0.001}}
    base = simulate_run(prepared(small("layer-ahead", **poisson)))
    ahead = simulate_run(prepared(small({"name": "prefill-ahead", "params": {"max_lead_steps": 4}}, **poisson)))
    last_arrival = max(float(a) for a in prepared(small("layer-ahead", **poisson)).workload.requests.arrival_s)
    compared = 0
    for a, b in zip(base.steps, ahead.steps, strict=True):
        if b.start_s < last_arrival:
            assert [(r.issue_step, r.rows_missed) for r in a.layers] == [(r.issue_step, r.rows_missed) for r in b.layers]
            assert all(r.issue_step == b.index for r in b.layers)
            compared += 1
    assert compared > 10


# ---- lookahead -------------------------------------------------------------------------------------
def test_lookahead_by_hand():
    five = [toy(i, "decode", list(range(10 * i, 10 * i + 5))) for i in range(4)]
    # budget 10, k 2: leads 0, 1, 2 (steps 0 and 1 then hold 10 rows each), 2 (step 1 full, step 2 has 5)
    assert issued(plan_all(lookahead(2, 10), five)) == [(0, 0), (0, 0), (0, 0), (1, 0)]
    # budget 7: a second step's rows never fit beside the first's: every lead is 1
    assert issued(plan_all(lookahead(2, 7), five)) == [(0, 0), (0, 0), (1, 0), (2, 0)]
    # a step larger than the budget is fetched in its own turn
    big = [*five[:2], toy(2, "decode", list(range(8))), five[3]]
    assert issued(plan_all(lookahead(2, 7), big)) == [(0, 0), (0, 0), (2, 0), (1, 0)], "step 3 spans steps 1 and 2, both empty"
    # no known future: as layer-ahead
    assert issued(plan_all(lookahead(2, 10), five, known=False)) == [(i, 0) for i in range(4)]


def waiting(plans) -> dict[int, int]:
    """Rows fetched for a later step and waiting during each step."""
    held: dict[int, int] = defaultdict(int)
    for p in plans.values():
        for j in range(p.issue_step, p.step):
            held[j] += int(p.fetch.size)
    return held


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 30), min_size=1, max_size=25), k=st.integers(1, 5), budget=st.integers(1, 60),
       known_from=st.integers(0, 10))
def test_lookahead_never_exceeds_its_budget(sizes, k, budget, known_from):
    steps = [toy(i, "decode", list(range(100 * i, 100 * i + n))) for i, n in enumerate(sizes)]
    policy = lookahead(k, budget)
    planner = Planner(AllHost(), NoCache(), policy, {3: 10_000}, blocks=8)
    plans = {}
    for step in steps:  # the future becomes known at step `known_from` (as when the last request arrives)
        future = (lambda n, i=step.index: steps[i + 1: i + 1 + n]) if step.index >= known_from else (lambda n: [])
        plans[step.index] = planner.plan(StepView(step, future)).layers[3]
    assert all(rows <= budget for rows in waiting(plans).values())
    assert all(0 <= p.step - p.issue_step <= k for p in plans.values())
    assert all(rows <= budget for rows in policy.waiting_rows(3).values())


def test_lookahead_leads_steps_in_a_scenario_within_its_budget(runs):
    ahead, base = runs["lookahead"], runs["layer-ahead"]
    led = [r for s in ahead.steps for r in s.layers if r.issue_step < s.index]
    assert len(led) > len(ahead.steps) // 2
    held: dict[tuple[int, int], int] = defaultdict(int)
    for s in ahead.steps:
        for r in s.layers:
            assert s.index - r.issue_step <= 3
            for j in range(r.issue_step, s.index):
                held[(r.layer, j)] += r.rows_fetched
    assert max(held.values()) <= 3000
    assert sum(s.stall_s for s in ahead.steps) <= sum(s.stall_s for s in base.steps)


# ---- the predictor and what it may see -------------------------------------------------------------
def test_served_and_range_masks_by_hand():
    assert served_mask(10, np.array([2, 8]), np.array([3, 4])).nonzero()[0].tolist() == [0, 1, 2, 3, 4, 8, 9]  # the second wraps
    assert served_mask(5, np.array([1]), np.array([9])).all()
    assert not served_mask(5, np.array([], dtype=np.int64), np.array([], dtype=np.int64)).any()
    assert range_mask(10, (0.25, 0.75)).nonzero()[0].tolist() == [2, 3, 4, 5, 6, 7]


def test_predictor_by_hand():
    ids = np.array([1, 2, 3, 1, 2, 4, 1, 2, 3, 5, 2, 3, 7])
    p = NgramPredictor.train(ids, np.ones(ids.size, dtype=bool), k=3)
    # after (1, 2): 3 twice, 4 once; then back off to after 2 (3 x3, 4 x1: nothing new); then the commonest
    # tokens (2 four times, then 1 and 3 three times each: 2 is the first not yet listed)
    assert p.predict(np.array([1]), np.array([2])).tolist() == [[3, 4, 2]]
    assert p.predict(np.array([-1]), np.array([3])).tolist() == [[1, 5, 7]], "no token before: after 3, ties by id"
    assert p.predict(np.array([5]), np.array([2])).tolist() == [[3, 4, 2]], "(5, 2) seen once, followed by 3"
    assert p.predict(np.array([9]), np.array([99])).tolist() == [[2, 1, 3]], "unseen ids: the commonest tokens, ties by id"
    half = NgramPredictor.train(ids, np.arange(ids.size) < 6, k=2)  # sees 1 2 3 1 2 4 only
    assert half.predict(np.array([1]), np.array([2])).tolist() == [[3, 4]]
    assert half.predict(np.array([2]), np.array([3])).tolist() == [[1, 2]], "after 3: 1; then the commonest"


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(3, 300), k=st.integers(1, 5))
def test_the_predictor_never_sees_tokens_outside_its_training_mask(seed, n, k):
    """Property: changing every token the predictor may not see changes nothing it predicts."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 12, size=n)
    allowed = rng.random(n) < 0.6
    other = np.where(allowed, ids, rng.integers(0, 40, size=n))
    a, b = NgramPredictor.train(ids, allowed, k), NgramPredictor.train(other, allowed, k)
    before, last = rng.integers(-1, 45, size=50), rng.integers(0, 45, size=50)
    assert np.array_equal(a.predict(before, last), b.predict(before, last))


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), requests=st.integers(1, 40), start=st.floats(0, 0.9), exclude=st.booleans())
def test_the_predictor_is_never_trained_on_the_served_tokens(seed, requests, start, exclude):
    """Property: on the served trace, the predictor's training tokens and every served window are
    disjoint, or the scenario is refused naming the field."""
    data = small({"name": "speculative-decode", "params": {"train_range": [start, 1.0], "exclude_served": exclude}}, requests=requests)
    data["run"]["seed"] = seed
    scenario = scenario_from_dict(data, source="small.yaml")
    try:
        policy = build("prefetch", scenario.strategies.prefetch, SetupContext(scenario, {}, None, seed))  # type: ignore[arg-type]
    except InputError as exc:
        assert not exclude and exc.field == "strategies.prefetch.params.train_range"
        return
    assert isinstance(policy, SpeculativeDecode) and policy.same_trace
    from engramsim.traces.format import load_trace
    from engramsim.workload import make_requests

    trace = load_trace("cpython-docs")
    served = make_requests(scenario.workload, trace, seed)
    inside = served_mask(int(np.asarray(trace.tokens).size), served.trace_start, served.window_len)
    assert not (policy.trained_on & inside).any()
    assert policy.trained_on.any()


def test_training_on_the_served_tokens_is_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(small({"name": "speculative-decode", "params": {"exclude_served": False}})))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "strategies.prefetch.params.train_range" in err and "served" in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name != "small.yaml"]
    bad_trace = small({"name": "speculative-decode", "params": {"train_trace": "no-such-trace"}})
    with pytest.raises(InputError) as exc:
        prepared(bad_trace)
    assert exc.value.field == "strategies.prefetch.params.train_trace"


def test_another_trace_trains_the_predictor_whole():
    policy = build("prefetch", StrategyChoice(name="speculative-decode", params={"train_trace": "english-prose"}),
                   prepared(small("layer-ahead")).setup())
    assert isinstance(policy, SpeculativeDecode) and not policy.same_trace and policy.trained_on.all()
    assert policy.describe() == "trace english-prose [0, 1)"


# ---- speculative rows: what is guessed, and that it is never served ------------------------------------
def offline_steps(prep) -> list[Step]:
    scheduler = prep.scheduler()
    steps = []
    while not scheduler.done:
        step = scheduler.next_step(math.inf)
        scheduler.finish_step(step, 0.0)
        steps.append(step)
    return steps


class Oracle:
    """A predictor that knows the next token (the rows a right guess must give)."""

    def __init__(self, truth: np.ndarray) -> None:
        self.truth = truth

    def predict(self, before, last):
        return self.truth[:, None]


def test_a_right_guess_fetches_exactly_the_rows_the_next_step_needs():
    prep = prepared(small({"name": "speculative-decode", "params": {"k": 1}}))
    policy = build("prefetch", prep.scenario.strategies.prefetch, prep.setup())
    assert isinstance(policy, SpeculativeDecode)
    workload, hashing, vocab, _ = policy._setup()
    for step in offline_steps(prep)[:12]:
        reqs = prep.workload.requests
        nxt = step.context_lens
        keep = (nxt >= reqs.prompt_len[step.seq_ids]) & (nxt <= reqs.window_len[step.seq_ids] - 2)
        positions = prep.workload.window_offsets[step.seq_ids[keep]] + nxt[keep]
        truth = prep.workload.tokens(positions)
        policy._ready = (workload, hashing, vocab, Oracle(vocab.compress(truth) if vocab is not None else truth))  # type: ignore[assignment]
        policy._memo = (-1, {})
        expected = prep.workload.token_rows(positions)  # the workload's own hashing of those windows
        for layer in prep.tables:
            assert np.array_equal(policy.speculative_rows(layer, StepView(step)), expected[layer].reshape(-1))


def test_guesses_are_ranked_and_within_the_table():
    prep = prepared(small({"name": "speculative-decode", "params": {"k": 3}}))
    policy = build("prefetch", prep.scenario.strategies.prefetch, prep.setup())
    heads = prep.scenario.model.engram.heads_per_layer
    decode = next(s for s in offline_steps(prep) if s.kind == "decode")
    for layer, table in prep.tables.items():
        rows = policy.speculative_rows(layer, StepView(decode))
        assert rows.size == 3 * decode.num_seqs * heads  # every sequence samples, three guesses each
        assert rows.min() >= 0 and rows.max() < table.rows
        top = rows[: decode.num_seqs * heads].reshape(decode.num_seqs, heads)  # rank-major: the best guesses first
        assert ((top >= table.offsets) & (top < table.offsets + table.head_sizes)).all(), "each head in its own table"


def test_speculative_rows_are_fetched_but_never_served(runs):
    spec, base = runs["speculative"], runs["layer-ahead"]
    assert sum(r.rows_speculative for s in spec.steps for r in s.layers) > 0
    for a, b in zip(base.steps, spec.steps, strict=True):
        for ra, rb in zip(a.layers, b.layers, strict=True):
            assert rb.rows_placed_hbm + rb.cache_hits + rb.rows_missed == rb.rows_unique
            assert (rb.rows_unique, rb.rows_missed, rb.cache_hits) == (ra.rows_unique, ra.rows_missed, ra.cache_hits)
            assert rb.rows_staged == rb.rows_guessed, "a right guess is served from where it landed"
            assert rb.rows_fetched == rb.rows_missed - rb.rows_staged + rb.rows_speculative and rb.rows_speculative <= 600
            assert rb.bytes_fetched == rb.rows_fetched * (ra.bytes_fetched // max(ra.rows_fetched, 1) or rb.bytes_fetched // max(rb.rows_fetched, 1))
    assert sum(r.rows_staged for s in spec.steps for r in s.layers) > 0


# ---- precision, recall and wasted bytes -------------------------------------------------------------
class Guess(Prefetch):
    """Guesses the given rows at each step."""

    name = "guess"

    def __init__(self, guesses: dict[int, list[int]], budget: int = 100) -> None:
        self.guesses, self.budget = guesses, budget

    def issue_layer(self, layer, view):
        return 0

    def speculative_rows(self, layer, view):
        return np.array(self.guesses.get(view.step.index, []), dtype=np.int64)

    def speculative_budget(self, layer):
        return self.budget


def test_guessed_rows_precision_and_recall_by_hand():
    steps = [toy(0, "decode", [1, 2]), toy(1, "decode", [11, 13, 20]), toy(2, "decode", [30, 31]), toy(3, "decode", [11])]
    plans = plan_all(Guess({0: [11, 13, 15], 1: [30, 99], 2: [50]}), steps)
    assert [p.speculative for p in plans.values()] == [3, 2, 1, 0]
    assert [p.guessed for p in plans.values()] == [0, 2, 1, 0], "step 3 needs 11, guessed two steps before: not counted"
    scores = Speculation.of(6, 3, 2 + 3 + 2 + 1, row_bytes=128)
    assert (scores.precision, scores.recall, scores.wasted_bytes) == (0.5, 3 / 8, 3 * 128)
    with pytest.raises(ValueError):
        Speculation.of(2, 3, 10, 128)


class Everywhere(Placement):
    name = "half-in-hbm"

    def __init__(self) -> None:
        pass

    def tier_of(self, layer, rows):
        return np.where(rows % 3 == 0, Tier.HBM, Tier.HOST).astype(np.uint8)


@settings(max_examples=80, deadline=None)
@given(needs=st.lists(st.lists(st.integers(0, 60), max_size=20), min_size=1, max_size=10),
       guesses=st.lists(st.lists(st.integers(0, 60), max_size=20), min_size=1, max_size=10), budget=st.integers(1, 15))
def test_precision_and_recall_stay_within_zero_and_one(needs, guesses, budget):
    steps = [toy(i, "decode", rows) for i, rows in enumerate(needs)]
    planner = Planner(Everywhere(), NoCache(), Guess(dict(enumerate(guesses)), budget), {3: 100}, blocks=8)
    plans = [planner.plan(StepView(s)).layers[3] for s in steps]
    for before, plan in zip([None, *plans], plans):
        previous = set() if before is None else set(before.fetch[before.misses:].tolist())
        missed = set(plan.fetch[: plan.misses].tolist()) | set(plan.staged.tolist())
        assert plan.guessed == len(previous & missed) == plan.staged.size, "every right guess served from where it landed"
        assert not previous & set(plan.fetch[: plan.misses].tolist()), "and not fetched again"
    speculative, guessed, missed = (sum(getattr(p, a) for p in plans) for a in ("speculative", "guessed", "missed"))
    if speculative:
        scores = Speculation.of(speculative, guessed, missed, 64)
        assert 0 <= scores.precision <= 1 and 0 <= scores.recall <= 1 and 0 <= scores.wasted_bytes <= speculative * 64


def test_speculation_metrics_are_null_without_speculative_rows(runs):
    for name in ("layer-ahead", "prefill-ahead", "lookahead"):
        s = summarize(runs[name], None, 0, 53.0)
        assert s["speculative_precision"] is s["speculative_recall"] is s["speculative_wasted_bytes"] is None


def test_speculation_metrics_read_the_guessed_rows_from_the_records():
    layer = dict(layer=1, rows_unique=10, references=10, rows_placed_hbm=0, cache_hits=0, issue_step=0, issue_s=0.0, ready_s=0.0)
    records = [StepRecord(index=i, kind="decode", start_s=i, end_s=i + 1.0, tokens=1, seqs=1, layers=[
        LayerRecord(**layer, rows_missed=10, rows_speculative=spec, bytes_fetched=100 * (10 + spec),
                    **({"rows_guessed": guessed} if "rows_guessed" in LAYER_FIELDS else {}))])
        for i, (spec, guessed) in enumerate([(8, 0), (4, 6), (0, 1)])]
    outcome = RunOutcome(steps=records, spans=[], events=0, link_busy_s=0.0, makespan_s=3.0, output_tokens=3, prompt_tokens=0,
                         ttft_s=np.zeros(1), tpot_s=np.zeros(1))
    s = summarize(outcome, None, 0, 53.0)
    if "rows_guessed" not in LAYER_FIELDS:  # the records do not count the guessed rows yet: no number rather than a wrong one
        assert s["speculative_precision"] is s["speculative_recall"] is s["speculative_wasted_bytes"] is None
        return
    assert (s["speculative_precision"], s["speculative_recall"], s["speculative_wasted_bytes"]) == (7 / 12, 7 / 30, 5 * 100)


# ---- both executors honour the policies -------------------------------------------------------------
@pytest.mark.parametrize("prefetch", [
    "{name: prefill-ahead, params: {max_lead_steps: 2}}",
    "{name: lookahead, params: {steps: 2, budget_rows: 2000}}",
    "{name: speculative-decode, params: {k: 2, budget_rows: 300, serve_guesses: false}}",
], ids=["prefill-ahead", "lookahead", "speculative-decode"])
def test_the_simulator_and_the_cpu_backend_run_the_same_plans(tmp_path, prefetch):
    from engramsim.runner import run_real
    from engramsim.scenario_io import load_scenario
    from tests.test_backends import TINY
    from tests.test_invariants import fetched, segments

    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    prep = prepare(load_scenario(path, ["model.engram.layers=[1, 3]", "workload.batching.max_num_batched_tokens=128",
                                        f"strategies.prefetch={prefetch}"]), str(path))
    sim, real = simulate_run(prep), run_real(prep, "cpu")
    assert segments(sim) == segments(real) and fetched(sim) == fetched(real)
    records = [[(r.layer, r.rows_missed, r.rows_speculative, r.issue_step) for r in s.layers] for s in sim.steps]
    assert records == [[(r.layer, r.rows_missed, r.rows_speculative, r.issue_step) for r in s.layers] for s in real.steps]
    assert any(r.issue_step < s.index or r.rows_speculative for s in sim.steps for r in s.layers), "the policy did something"

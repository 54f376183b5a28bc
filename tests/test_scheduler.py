"""Continuous batching: limits, token accounting, hand-counted step sequences, arrivals, metrics."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramsim.scheduler import Scheduler
from engramsim.steps import Step
from tests.test_workload import assert_same_lookups, make_workload, tiny_hashing

HASHING = tiny_hashing()


def run(scheduler: Scheduler, durations=None, max_steps: int = 100_000) -> list[Step]:
    """Drive a scheduler like an executor: steps back to back, idling until the next arrival."""
    now, steps = 0.0, []
    while not scheduler.done and len(steps) < max_steps:
        step = scheduler.next_step(now)
        if step is None:
            arrival = scheduler.next_arrival()
            assert arrival is not None and arrival > now
            now = arrival
            continue
        now += durations(step) if durations else 1.0
        scheduler.finish_step(step, now)
        steps.append(step)
    return steps


def shape(steps: list[Step]) -> list[tuple[str, list[int]]]:
    return [(s.kind, s.seq_ids.tolist()) for s in steps]


# ---- hand-counted cases ---------------------------------------------------------------------
def test_generous_limits_one_prefill_then_decodes():
    w = make_workload(prompt=4, output=3, requests=3)
    steps = run(Scheduler(w))
    assert shape(steps) == [("prefill", [0, 1, 2]), ("decode", [0, 1, 2]), ("decode", [0, 1, 2])]
    assert [s.index for s in steps] == [0, 1, 2]
    starts = w.window_offsets[:-1]
    prefill, d1, d2 = steps
    assert prefill.positions.tolist() == [int(s) + k for s in starts for k in range(4)]
    assert prefill.new_tokens.tolist() == [4, 4, 4] and prefill.context_lens.tolist() == [4, 4, 4]
    assert d1.positions.tolist() == (starts + 4).tolist() and d1.context_lens.tolist() == [5, 5, 5]
    assert d2.positions.tolist() == (starts + 5).tolist() and d2.context_lens.tolist() == [6, 6, 6]
    assert d1.new_tokens.tolist() == [1, 1, 1]


def test_max_num_seqs_two():
    steps = run(Scheduler(make_workload(prompt=4, output=3, requests=3, max_num_seqs=2)))
    assert shape(steps) == [
        ("prefill", [0, 1]), ("decode", [0, 1]), ("decode", [0, 1]),
        ("prefill", [2]), ("decode", [2]), ("decode", [2]),
    ]


def test_token_budget_splits_prefills_which_come_first():
    steps = run(Scheduler(make_workload(prompt=4, output=3, requests=3, max_num_batched_tokens=8)))
    assert shape(steps) == [("prefill", [0, 1]), ("prefill", [2]), ("decode", [0, 1, 2]), ("decode", [0, 1, 2])]


def test_output_len_one_finishes_at_prefill():
    sched = Scheduler(make_workload(prompt=4, output=1, requests=3))
    steps = run(sched)
    assert shape(steps) == [("prefill", [0, 1, 2])]
    assert sched.done and sched.output_tokens == 3 and sched.prompt_tokens == 12
    ttft, tpot = sched.latencies()
    assert ttft.tolist() == [1.0, 1.0, 1.0] and tpot.size == 0


def test_ttft_and_tpot_hand_case():
    sched = Scheduler(make_workload(prompt=4, output=3, requests=3, max_num_seqs=2))
    durations = iter([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # steps end at 1, 3, 6, 10, 15, 21
    run(sched, lambda step: next(durations))
    metrics = sched.request_metrics()
    assert metrics.ttft_s.tolist() == [1.0, 1.0, 10.0]
    assert metrics.tpot_s.tolist() == [2.5, 2.5, 5.5]  # (6-1)/2, (21-10)/2
    ttft, tpot = sched.latencies()
    assert ttft.tolist() == [1.0, 1.0, 10.0] and tpot.tolist() == [2.5, 2.5, 5.5]
    assert sched.output_tokens == 9 and sched.prompt_tokens == 12


# ---- arrivals --------------------------------------------------------------------------------
def test_poisson_waits_for_the_first_arrival():
    w = make_workload(prompt=4, output=2, requests=4, rate=10.0)
    sched = Scheduler(w)
    first = w.requests[0].arrival_s
    assert first > 0
    assert sched.next_step(0.0) is None and not sched.done
    assert sched.next_arrival() == first
    assert sched.next_step(first / 2) is None
    step = sched.next_step(first)
    assert step is not None and step.kind == "prefill" and step.seq_ids.tolist() == [0]
    sched.finish_step(step, first + 1e-3)
    assert sched.next_arrival() == w.requests[1].arrival_s
    run_steps = run(sched)
    assert sched.done and sched.next_arrival() is None
    metrics = sched.request_metrics()
    arrivals = np.array([r.arrival_s for r in w.requests])
    assert np.all(metrics.ttft_s > 0)
    assert np.allclose(metrics.ttft_s + arrivals, sched.first_token_s)
    assert run_steps, "the remaining requests were served"


def test_offline_steps_do_not_depend_on_timing():
    w = make_workload(prompt=(2, 30), output=(1, 12), requests=25, max_num_seqs=5, max_num_batched_tokens=60)
    fast = run(Scheduler(w), lambda s: 1e-3)
    slow = run(Scheduler(w), lambda s: 1.0 + s.num_tokens)
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow):
        assert a.kind == b.kind
        np.testing.assert_array_equal(a.positions, b.positions)
        assert_same_lookups(a, b)


@pytest.mark.parametrize("arrival", ["offline", "poisson"])
def test_lookahead_equals_the_steps_that_then_run(arrival):
    """`view.future(k)` shows the steps exactly as they will run once every request has arrived,
    and nothing before (the order would depend on timing)."""
    w = make_workload(prompt=(2, 30), output=(1, 12), requests=25, max_num_seqs=5, max_num_batched_tokens=60,
                      rate=20.0 if arrival == "poisson" else None)
    sched = Scheduler(w)
    shown: dict[int, list[Step]] = {}
    ran: list[Step] = []
    now = 0.0
    while not sched.done:
        step = sched.next_step(now)
        if step is None:
            now = sched.next_arrival()
            continue
        future = sched.view(step, max_steps=60).future(4)
        if sched.next_arrival() is not None:
            assert future == []
        shown[step.index] = future
        assert all(f.index < 60 for f in future)
        now += 0.5
        sched.finish_step(step, now)
        ran.append(step)
    checked = 0
    for index, future in shown.items():
        for f in future:
            actual = ran[f.index]
            assert (f.kind, f.seq_ids.tolist(), f.context_lens.tolist()) == (actual.kind, actual.seq_ids.tolist(), actual.context_lens.tolist())
            np.testing.assert_array_equal(f.positions, actual.positions)
            assert_same_lookups(f, actual)
            checked += 1
    assert checked > 20


def test_prompt_larger_than_the_token_budget_is_refused():
    w = make_workload(prompt=4, output=3, requests=2)
    with pytest.raises(ValueError, match="exceeds max_num_batched_tokens"):
        Scheduler(replace(w, max_num_batched_tokens=3))


def test_misuse_is_an_error():
    sched = Scheduler(make_workload(prompt=4, output=3, requests=2))
    step = sched.next_step(0.0)
    with pytest.raises(RuntimeError, match="not been finished"):
        sched.next_step(0.0)
    sched.finish_step(step, 1.0)
    with pytest.raises(RuntimeError, match="not the step in flight"):
        sched.finish_step(step, 2.0)


# ---- properties over small random workloads --------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    requests=st.integers(1, 10),
    prompt=st.tuples(st.integers(1, 6), st.integers(0, 6)),
    output=st.tuples(st.integers(1, 5), st.integers(0, 4)),
    max_num_seqs=st.integers(1, 5),
    extra_tokens=st.integers(0, 20),
    rate=st.sampled_from([None, 2.0, 50.0]),
    seed=st.integers(0, 1000),
)
def test_limits_and_token_accounting(requests, prompt, output, max_num_seqs, extra_tokens, rate, seed):
    p_lo, p_hi = prompt[0], prompt[0] + prompt[1]
    o_lo, o_hi = output[0], output[0] + output[1]
    w = make_workload(hashing=HASHING, prompt=(p_lo, p_hi), output=(o_lo, o_hi), requests=requests,
                      max_num_seqs=max_num_seqs, max_num_batched_tokens=p_hi + extra_tokens, rate=rate, seed=seed)
    durations = np.random.default_rng(seed).uniform(0.01, 0.5, size=10_000)
    sched = Scheduler(w)
    steps = run(sched, lambda s: float(durations[s.index]))
    assert sched.done
    assert [s.index for s in steps] == list(range(len(steps)))

    fed: dict[int, list[int]] = {r.id: [] for r in w.requests}
    kinds: dict[int, list[str]] = {r.id: [] for r in w.requests}
    for s in steps:
        assert s.num_seqs <= max_num_seqs
        assert len(set(s.seq_ids.tolist())) == s.num_seqs
        assert s.positions.size == s.num_tokens
        if s.kind == "prefill":
            assert s.num_tokens <= w.max_num_batched_tokens
        else:
            assert s.new_tokens.tolist() == [1] * s.num_seqs
        cursor = 0
        for sid, n, ctx in zip(s.seq_ids.tolist(), s.new_tokens.tolist(), s.context_lens.tolist()):
            fed[sid].extend((s.positions[cursor:cursor + n] - w.window_offsets[sid]).tolist())
            kinds[sid].extend([s.kind] * n)
            cursor += n
            assert ctx == len(fed[sid]), "context = every token fed so far"
    admitted = [sid for s in steps if s.kind == "prefill" for sid in s.seq_ids.tolist()]
    assert admitted == list(range(requests)), "FIFO admission, each request prefilled once"
    for r in w.requests:
        prompt, output = r.prompt_len, r.output_len
        assert fed[r.id] == list(range(prompt + output - 1)), "prompt 0..P-1, then the real continuation"
        assert kinds[r.id] == ["prefill"] * prompt + ["decode"] * (output - 1)
    metrics = sched.request_metrics()
    assert np.all(metrics.ttft_s > 0)
    tpot = metrics.tpot_s[[r.output_len > 1 for r in w.requests]]
    assert np.all(tpot > 0) and not any(math.isnan(t) for t in tpot)
    assert sched.output_tokens == w.total_output_tokens and sched.prompt_tokens == w.total_prompt_tokens

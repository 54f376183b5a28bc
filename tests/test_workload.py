"""Workload: requests drawn from the scenario, windows cut from the trace, hashed lookups per step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramsim import workload as workload_module
from engramsim.errors import InputError
from engramsim.plugins.hashing.engram import EngramHashing, EngramHashSpec
from engramsim.registry import build_scheduler, scheduler_params
from engramsim.scenario import Scenario, StrategyChoice
from engramsim.scheduler import Scheduler
from engramsim.steps import Requests, Step
from engramsim.workload import StepLookups, Workload, build_workload, make_requests, unique_sorted, window_offsets

TINY = EngramHashSpec(layer_ids=(1,), rows_per_head=(1009, 1013), max_ngram=3, heads=2, seed=3)
TINY_VOCAB = 50


@dataclass
class FakeTrace:
    """The two attributes the workload reads; ids are already compressed (no meta)."""

    tokens: np.ndarray
    doc_offsets: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    meta: dict[str, Any] = field(default_factory=dict)


def synthetic_trace(n: int = 2000, seed: int = 0, vocab: int = TINY_VOCAB) -> FakeTrace:
    return FakeTrace(np.random.default_rng(seed).integers(0, vocab, size=n).astype(np.uint32))


def tiny_hashing(spec: EngramHashSpec = TINY) -> EngramHashing:
    return EngramHashing(spec, TINY_VOCAB, pad_id=0)


def scenario(prompt: int | tuple[int, int] = 4, output: int | tuple[int, int] = 3, requests: int = 3,
             max_num_seqs: int = 64, max_num_batched_tokens: int = 4096, rate: float | None = None,
             seed: int = 0) -> Scenario:
    def dist(v: int | tuple[int, int]) -> dict:
        return {"dist": "fixed", "value": v} if isinstance(v, int) else {"dist": "uniform", "low": v[0], "high": v[1]}

    arrival = {"kind": "poisson", "rate_per_s": rate} if rate else {"kind": "offline"}
    return Scenario.model_validate({
        "name": "t",
        "model": {"engram": {"layers": list(TINY.layer_ids), "heads": TINY.heads, "rows_per_head": list(TINY.rows_per_head)}},
        "workload": {
            "requests": requests, "prompt_len": dist(prompt), "output_len": dist(output), "arrival": arrival,
            "batching": {"max_num_seqs": max_num_seqs, "max_num_batched_tokens": max_num_batched_tokens},
        },
        "run": {"seed": seed},
    })


def make_workload(trace: FakeTrace | None = None, hashing: EngramHashing | None = None, **kwargs: Any):
    return build_workload(scenario(**kwargs), trace or synthetic_trace(), hashing or tiny_hashing())


def make_scheduler(w: Workload, name: str = "nano-vllm", kv_blocks: int | None = None, **params: Any) -> Scheduler:
    """A fresh serving engine over `w`; by default with blocks for every window at once (it never preempts)."""
    choice = StrategyChoice(name=name, params=params)
    block = scheduler_params(choice).block_size
    return build_scheduler(choice, w, kv_blocks or int(np.sum(-(-w.requests.window_len // block))))


def window(w: Workload, request: int) -> np.ndarray:
    """The flat positions of one request's window."""
    return np.arange(w.window_offsets[request], w.window_offsets[request + 1])


def hashed_whole(w: Workload, hashing: EngramHashing, layer: int) -> np.ndarray:
    """Every window's rows, each window hashed whole on its own (the reference), end to end."""
    return np.concatenate([hashing.hash(w.tokens(window(w, r)))[layer] + hashing.offsets[layer] for r in range(len(w.requests))])


def columns_of(requests: Requests) -> list[np.ndarray]:
    return [requests.arrival_s, requests.prompt_len, requests.output_len, requests.trace_start]


def columns(requests: Requests) -> list[list]:
    return [column.tolist() for column in columns_of(requests)]


def assert_same_lookups(a: Step, b: Step) -> None:
    """Two steps need the same rows, layer by layer."""
    assert sorted(a.lookups) == sorted(b.lookups)
    for layer in a.lookups:
        np.testing.assert_array_equal(a.lookups[layer].rows, b.lookups[layer].rows)
        assert a.lookups[layer].references == b.lookups[layer].references


def offline_steps(w: Workload) -> list[Step]:
    """Every step of an offline workload, in order (run at t = 0: timing cannot change them)."""
    sched, steps = make_scheduler(w), []
    while not sched.done:
        step = sched.next_step(0.0)
        assert step is not None
        sched.finish_step(step, 0.0)
        steps.append(step)
    return steps


# ---- requests ---------------------------------------------------------------------------------
def test_requests_reproducible_and_within_bounds():
    cfg = scenario(prompt=(100, 1024), output=(5, 9), requests=400).workload
    trace = synthetic_trace(5000)
    a, b = make_requests(cfg, trace, 7), make_requests(cfg, trace, 7)
    assert columns(a) == columns(b)
    assert columns(a) != columns(make_requests(cfg, trace, 8))
    prompts = np.array([r.prompt_len for r in a])
    outputs = np.array([r.output_len for r in a])
    assert prompts.min() >= 100 and prompts.max() <= 1024
    assert set(outputs.tolist()) == set(range(5, 10)), "uniform includes both ends"
    assert all(r.arrival_s == 0.0 for r in a)
    assert [r.id for r in a] == list(range(400))


def test_fixed_lengths():
    reqs = make_requests(scenario(prompt=6, output=2, requests=5).workload, synthetic_trace(), 0)
    assert {(r.prompt_len, r.output_len) for r in reqs} == {(6, 2)}


def test_poisson_arrivals_increase_and_keep_the_windows():
    trace = synthetic_trace()
    offline = make_requests(scenario(prompt=(2, 9), output=(1, 5), requests=2000).workload, trace, 1)
    poisson = make_requests(scenario(prompt=(2, 9), output=(1, 5), requests=2000, rate=50.0).workload, trace, 1)
    arrivals = np.array([r.arrival_s for r in poisson])
    assert arrivals[0] > 0 and np.all(np.diff(arrivals) > 0)
    assert np.mean(np.diff(arrivals)) == pytest.approx(1 / 50.0, rel=0.1)
    strip = lambda rs: [(r.prompt_len, r.output_len, r.trace_start) for r in rs]  # noqa: E731
    assert strip(offline) == strip(poisson), "the arrival process does not change the windows"


def test_windows_are_cut_from_the_trace():
    trace = synthetic_trace(3000)
    w = make_workload(trace, prompt=(10, 200), output=(10, 200), requests=50)
    for r in w.requests:
        end = r.trace_start + r.prompt_len + r.output_len
        assert end <= trace.tokens.size
        np.testing.assert_array_equal(w.tokens(window(w, r.id)), trace.tokens[r.trace_start:end])


def test_short_trace_wraps_around():
    trace = synthetic_trace(25)
    w = make_workload(trace, prompt=20, output=15, requests=6)
    for r in w.requests:
        assert 0 <= r.trace_start < 25
        idx = (r.trace_start + np.arange(35)) % 25
        np.testing.assert_array_equal(w.tokens(window(w, r.id)), trace.tokens[idx])


def test_window_offsets_layout():
    reqs = make_requests(scenario(prompt=(1, 5), output=(1, 5), requests=9).workload, synthetic_trace(30), 2)
    offsets = window_offsets(reqs)
    assert offsets[0] == 0 and offsets[-1] == sum(r.prompt_len + r.output_len for r in reqs)
    assert np.diff(offsets).tolist() == [r.prompt_len + r.output_len for r in reqs]


# ---- hashing and lookups ----------------------------------------------------------------------
def test_each_window_is_hashed_as_its_own_sequence():
    hashing = tiny_hashing()
    w = make_workload(hashing=hashing, prompt=(3, 30), output=(1, 20), requests=12)
    for r in w.requests:
        expected = hashing.hash(w.tokens(window(w, r.id)))[1] + hashing.offsets[1]
        np.testing.assert_array_equal(w.token_rows(window(w, r.id))[1], expected)


def test_lookups_equal_brute_force_rows():
    hashing = tiny_hashing(EngramHashSpec(layer_ids=(1, 4), rows_per_head=(1009, 1013), max_ngram=3, heads=2))
    w = make_workload(hashing=hashing, prompt=(3, 30), output=(2, 20), requests=20)
    whole = {layer: hashed_whole(w, hashing, layer) for layer in (1, 4)}
    for step in offline_steps(w):
        for layer in (1, 4):
            lookup = step.lookups[layer]
            brute = {int(whole[layer][p, h]) for p in step.positions for h in range(hashing.spec.heads_per_layer)}
            assert lookup.rows.tolist() == sorted(brute)
            assert lookup.rows.dtype == np.int64
            assert lookup.references == step.num_tokens * hashing.spec.heads_per_layer
            assert lookup.rows.max() < hashing.rows_per_layer[layer]


def test_rows_stay_in_their_heads_range():
    hashing = tiny_hashing()
    w = make_workload(hashing=hashing, prompt=(3, 30), output=(2, 20), requests=20)
    lo = hashing.offsets[1]
    hi = lo + hashing.primes[1]
    rows = w.token_rows(np.arange(w.num_tokens))[1]
    assert np.all((rows >= lo) & (rows < hi))


def test_lookups_are_memoized_across_schedulers():
    w = make_workload(prompt=(3, 12), output=(2, 6), requests=10, max_num_seqs=4)
    first, second = make_scheduler(w), make_scheduler(w)
    for _ in range(5):
        a, b = first.next_step(0.0), second.next_step(0.0)
        assert a is not b and all(a.lookups[layer] is b.lookups[layer] for layer in a.lookups)
        assert w.lookups(a.positions.copy()) is w.lookups(a) is w.lookups(b)
        first.finish_step(a, 0.0)
        second.finish_step(b, 0.0)


def test_a_step_hashes_nothing_until_its_lookups_are_read():
    w = make_workload(prompt=(3, 12), output=(2, 6), requests=10)
    steps = offline_steps(w)
    assert all(isinstance(s.lookups, StepLookups) for s in steps)
    assert w._memo.bytes == 0 and w._windows.used == 0, "a pass without Engram layers never hashes"
    assert len(steps[0].lookups) == 1 and w._memo.bytes > 0


def test_held_windows_and_memoized_lookups_stay_within_their_bounds(monkeypatch):
    """Past either bound, windows are hashed again and lookups deduplicated again: the same rows."""
    hashing = tiny_hashing()
    large = make_workload(hashing=hashing, prompt=(3, 30), output=(2, 20), requests=40, max_num_seqs=3)
    monkeypatch.setattr(workload_module, "MEMO_BYTES", 2_000)
    monkeypatch.setattr(workload_module, "WINDOW_BYTES", 0)
    small = make_workload(hashing=hashing, prompt=(3, 30), output=(2, 20), requests=40, max_num_seqs=3)
    longest = int(small.requests.window_len.max())
    assert small.window_capacity == 3 * 3 * longest < small.num_tokens
    for s, big in zip(offline_steps(small), offline_steps(large), strict=True):
        assert_same_lookups(s, big)
        assert small._windows.used <= small.window_capacity
        assert small._memo.bytes <= 2_000 or len(small._memo._entries) == 1, "the newest entry stays"
    positions = np.arange(small.num_tokens)  # more windows than are ever held: hashed for this call only
    np.testing.assert_array_equal(small.token_rows(positions)[1], hashed_whole(small, hashing, 1))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 40), max_size=300))
def test_unique_sorted_matches_numpy(values):
    a = np.array(values, dtype=np.int64)
    np.testing.assert_array_equal(unique_sorted(a), np.unique(a))
    np.testing.assert_array_equal(unique_sorted(a.copy(), overwrite=True), np.unique(a))


# ---- real tokenizer -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_trace(vocab, tokenizer):
    """This module's source, tokenized with the DeepSeek V4 tokenizer, as a format-v1 Trace."""
    from engramsim.traces.format import Trace

    text = open(__file__, encoding="utf-8").read()
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    meta = {"name": "self", "tokenizer": {"file": "tokenizer.json", "sha256": vocab.tokenizer_sha256}}
    return Trace(np.array(ids, dtype=np.uint32), np.array([0]), meta)


def test_real_vocab_compresses_before_hashing(vocab, real_trace):
    trace = real_trace
    hashing = EngramHashing(TINY, vocab.size, int(vocab.table[TINY.pad_id]))
    w = build_workload(scenario(prompt=(5, 50), output=(2, 30), requests=8), trace, hashing, vocab)
    for r in w.requests:
        positions = window(w, r.id)
        np.testing.assert_array_equal(w.tokens(positions), trace.tokens[r.trace_start:r.trace_start + positions.size])
        expected = hashing.hash(vocab.compress(w.tokens(positions)))[1] + hashing.offsets[1]
        np.testing.assert_array_equal(w.token_rows(positions)[1], expected)


def test_trace_of_another_tokenizer_is_an_input_error(vocab, real_trace):
    trace = real_trace
    other = type(trace)(trace.tokens, trace.doc_offsets, {**trace.meta, "tokenizer": {"file": "x.json", "sha256": "0" * 64}})
    hashing = EngramHashing(TINY, vocab.size, int(vocab.table[TINY.pad_id]))
    with pytest.raises(InputError, match="tokenized with x.json"):
        build_workload(scenario(), other, hashing, vocab)


def test_shared_arrays_are_read_only():
    """The offloaded, all-HBM and no-Engram passes share the workload: none may change it."""
    w = make_workload(prompt=(3, 12), output=(2, 6), requests=6)
    step = make_scheduler(w).next_step(0.0)
    shared = [w.trace_tokens, w.window_offsets, *columns_of(w.requests), *(lookup.rows for lookup in step.lookups.values())]
    for array in shared:
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 1

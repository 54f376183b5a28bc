"""The serving engine and its two policies: limits, KV blocks, preemption with recompute, chunked
prefill, CUDA-graph padding, hand-counted step sequences, arrivals, metrics and the lookahead."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramsim.scheduler import Scheduler
from engramsim.steps import Step
from tests.test_workload import assert_same_lookups, make_scheduler, make_workload, tiny_hashing

HASHING = tiny_hashing()
PLUGINS = ["nano-vllm", "vllm"]


def run(scheduler: Scheduler, durations=None, max_steps: int = 100_000, used: list[int] | None = None) -> list[Step]:
    """Drive a scheduler like an executor: steps back to back, idling until the next arrival. Checks
    the block accounting at every step; `used` collects the blocks in use while each step runs."""
    now, steps = 0.0, []
    blocks = scheduler.blocks
    while not scheduler.done and len(steps) < max_steps:
        step = scheduler.next_step(now)
        if step is None:
            arrival = scheduler.next_arrival()
            assert arrival is not None and arrival > now
            now = arrival
            continue
        assert 0 <= blocks.used <= blocks.total and int(blocks.held.sum()) == blocks.used
        if used is not None:
            used.append(blocks.used)
        now += durations(step) if durations else 1.0
        scheduler.finish_step(step, now)
        steps.append(step)
    return steps


def shape(steps: list[Step]) -> list[tuple[str, list[int]]]:
    return [(s.kind, s.seq_ids.tolist()) for s in steps]


# ---- nano-vLLM, hand-counted ---------------------------------------------------------------------
def test_generous_limits_one_prefill_then_decodes():
    w = make_workload(prompt=4, output=3, requests=3)
    steps = run(make_scheduler(w))
    assert shape(steps) == [("prefill", [0, 1, 2]), ("decode", [0, 1, 2]), ("decode", [0, 1, 2])]
    assert [s.index for s in steps] == [0, 1, 2]
    starts = w.window_offsets[:-1]
    prefill, d1, d2 = steps
    assert prefill.positions.tolist() == [int(s) + k for s in starts for k in range(4)]
    assert prefill.new_tokens.tolist() == [4, 4, 4] and prefill.context_lens.tolist() == [4, 4, 4]
    assert d1.positions.tolist() == (starts + 4).tolist() and d1.context_lens.tolist() == [5, 5, 5]
    assert d2.positions.tolist() == (starts + 5).tolist() and d2.context_lens.tolist() == [6, 6, 6]
    assert d1.new_tokens.tolist() == [1, 1, 1]


def test_max_num_seqs_counts_the_steps_sequences_not_the_running_ones():
    """nano-vLLM admits up to max_num_seqs sequences per prefill step, however many run; a decode
    step takes the first max_num_seqs running sequences."""
    steps = run(make_scheduler(make_workload(prompt=4, output=3, requests=3, max_num_seqs=2)))
    assert shape(steps) == [
        ("prefill", [0, 1]), ("prefill", [2]), ("decode", [0, 1]), ("decode", [0, 1]), ("decode", [2]), ("decode", [2]),
    ]


def test_token_budget_splits_prefills_which_come_first():
    steps = run(make_scheduler(make_workload(prompt=4, output=3, requests=3, max_num_batched_tokens=8)))
    assert shape(steps) == [("prefill", [0, 1]), ("prefill", [2]), ("decode", [0, 1, 2]), ("decode", [0, 1, 2])]


def test_output_len_one_finishes_at_prefill():
    sched = make_scheduler(make_workload(prompt=4, output=1, requests=3))
    steps = run(sched)
    assert shape(steps) == [("prefill", [0, 1, 2])]
    assert sched.done and sched.output_tokens == 3 and sched.prompt_tokens == 12
    ttft, tpot = sched.latencies()
    assert ttft.tolist() == [1.0, 1.0, 1.0] and tpot.size == 0


def test_ttft_and_tpot_hand_case():
    sched = make_scheduler(make_workload(prompt=4, output=3, requests=3, max_num_seqs=2))
    durations = iter([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # steps end at 1, 3, 6, 10, 15, 21
    run(sched, lambda step: next(durations))
    metrics = sched.request_metrics()
    assert metrics.ttft_s.tolist() == [1.0, 1.0, 3.0]
    assert metrics.tpot_s.tolist() == [4.5, 4.5, 9.0]  # (10-1)/2, (21-3)/2
    ttft, tpot = sched.latencies()
    assert ttft.tolist() == [1.0, 1.0, 3.0] and tpot.tolist() == [4.5, 4.5, 9.0]
    assert sched.output_tokens == 9 and sched.prompt_tokens == 12


def test_nano_vllm_blocks_admission_and_preemption_by_hand():
    """Blocks of 4 tokens, 5 of them; three requests of prompt 4 and output 6 (10 tokens, 3 blocks each).
    The prefill takes a block each; the first decode needs a second block for each and finds two:
    the last running sequence (2) preempts itself. It cannot come back (its 5 tokens need 2 blocks)
    until a block frees; at the step where 0 and 1 each need a third block, 1 preempts itself. When 0
    finishes, 1 and 2 prefill again (prompt + sampled tokens, recomputing all but the last)."""
    w = make_workload(prompt=4, output=6, requests=3)
    sched = make_scheduler(w, kv_blocks=5, block_size=4)
    used: list[int] = []
    steps = run(sched, used=used)
    assert shape(steps) == [
        ("prefill", [0, 1, 2]), ("decode", [0, 1]), ("decode", [0, 1]), ("decode", [0, 1]), ("decode", [0, 1]), ("decode", [0]),
        ("prefill", [1, 2]), ("decode", [2]), ("decode", [2]), ("decode", [2]), ("decode", [2]),
    ]
    recompute = steps[6]
    assert recompute.new_tokens.tolist() == [9, 5] and recompute.context_lens.tolist() == [9, 5]
    starts = w.window_offsets[:-1]
    assert recompute.positions.tolist() == [int(starts[1]) + k for k in range(9)] + [int(starts[2]) + k for k in range(5)], \
        "window indices 0..len-1: the same Engram rows as the first time"
    assert used == [3, 4, 4, 4, 4, 3, 5, 2, 2, 2, 3]
    assert (sched.preemptions, sched.recomputed_tokens, sched.prompt_tokens, sched.output_tokens) == (2, 12, 12, 18)
    assert sched.generated.tolist() == [6, 6, 6] and sched.blocks.used == 0
    serving = sched.serving()
    assert (serving.kv_blocks, serving.preemptions, serving.recomputed_tokens) == (5, 2, 12)
    assert serving.kv_used_mean == pytest.approx(36 / 55) and serving.kv_used_peak == 1.0


def test_nano_vllm_chunks_a_recomputed_sequence_longer_than_the_token_budget():
    """Blocks of 2 tokens, 7 of them, a budget of 6 tokens; two requests of prompt 6 and output 6.
    Sequence 1 preempts itself at its first decode; back with 7 tokens, more than the budget, it is
    the step's first sequence, so it prefills a chunk of 6 (keeping all 4 blocks, at the head of the
    queue) and then its last token, and only then samples."""
    w = make_workload(prompt=6, output=6, requests=2, max_num_batched_tokens=6)
    sched = make_scheduler(w, kv_blocks=7, block_size=2)
    steps = run(sched)
    assert shape(steps) == [("prefill", [0]), ("prefill", [1])] + [("decode", [0])] * 5 + [("prefill", [1])] * 2 + [("decode", [1])] * 4
    chunk, rest = steps[7], steps[8]
    assert (chunk.new_tokens.tolist(), chunk.context_lens.tolist()) == ([6], [6])
    assert (rest.new_tokens.tolist(), rest.context_lens.tolist()) == ([1], [7])
    assert rest.positions.tolist() == [int(w.window_offsets[1]) + 6]
    assert sched.first_token_s[1] == 2.0 and sched.generated[1] == 6
    assert (sched.preemptions, sched.recomputed_tokens, sched.prompt_tokens) == (1, 6, 12)


# ---- vLLM, hand-counted --------------------------------------------------------------------------
def test_vllm_chunked_prefill_shares_the_budget_with_decodes():
    """A budget of 6 tokens, two prompts of 5: the first prompt and one token of the second, then the
    first's decode beside the rest of the second prompt (mixed), which only then samples."""
    w = make_workload(prompt=5, output=3, requests=2, max_num_batched_tokens=6)
    sched = make_scheduler(w, "vllm")
    steps = run(sched)
    assert [(s.kind, s.seq_ids.tolist(), s.new_tokens.tolist(), s.context_lens.tolist()) for s in steps] == [
        ("prefill", [0, 1], [5, 1], [5, 1]), ("mixed", [0, 1], [1, 4], [6, 5]), ("decode", [0, 1], [1, 1], [7, 6]),
        ("decode", [1], [1], [7]),
    ]
    assert all(s.num_tokens <= 6 for s in steps)
    assert sched.first_token_s.tolist() == [1.0, 2.0], "the second prompt samples when its last chunk is in"
    assert sched.finish_s.tolist() == [3.0, 4.0]
    starts = w.window_offsets[:-1]
    assert steps[1].positions.tolist() == [int(starts[0]) + 5] + [int(starts[1]) + k for k in range(1, 5)]


def test_vllm_preempts_the_last_running_sequence_and_recomputes_it():
    """Blocks of 4 tokens, 3 of them; two requests of prompt 4 and output 6. At the first decode each
    needs a second block and one is free: sequence 0 takes it and 1, the last running, is
    preempted; nothing is admitted that step. 1 comes back (5 tokens, 2 blocks) when 0 finishes."""
    w = make_workload(prompt=4, output=6, requests=2)
    sched = make_scheduler(w, "vllm", kv_blocks=3, block_size=4)
    steps = run(sched)
    assert shape(steps) == [("prefill", [0, 1])] + [("decode", [0])] * 5 + [("prefill", [1])] + [("decode", [1])] * 4
    assert steps[6].new_tokens.tolist() == [5]
    assert (sched.preemptions, sched.recomputed_tokens, sched.output_tokens) == (1, 4, 12)
    assert sched.blocks.used == 0


# ---- CUDA-graph padding --------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "max_num_seqs", "batches", "rows"), [
    ("nano-vllm", 512, [1, 2, 3, 5, 8, 9, 17, 500, 512], [1, 2, 4, 8, 8, 16, 32, 512, 512]),
    ("nano-vllm", 5, [3, 5], [4, 5]),  # the graph for 8 runs over the buffers' 5 rows
    ("nano-vllm", 100, [90, 97], [96, 97]),  # past the largest size (96): eager
    ("nano-vllm", 600, [513], [513]),  # past 512: eager
    ("vllm", 256, [3, 9, 250, 257, 300, 512], [4, 16, 256, 272, 304, 512]),
    ("vllm", 5, [5, 9], [8, 9]),  # sizes up to 2 x max_num_seqs
])
def test_graph_batch_sizes(name, max_num_seqs, batches, rows):
    sched = make_scheduler(make_workload(prompt=4, output=3, requests=1, max_num_seqs=max_num_seqs), name)
    assert [sched.graph_batch(b) for b in batches] == rows


@pytest.mark.parametrize("name", PLUGINS)
def test_decode_steps_are_padded_to_their_graph_and_others_run_eager(name):
    w = make_workload(prompt=(3, 9), output=(2, 6), requests=11, max_num_seqs=6, max_num_batched_tokens=20)
    steps = run(make_scheduler(w, name))
    decodes = [s for s in steps if s.kind == "decode"]
    assert decodes and all(s.pad == make_scheduler(w, name).graph_batch(s.num_seqs) - s.num_seqs for s in decodes)
    assert any(s.pad > 0 for s in decodes)
    assert all(s.pad == 0 for s in steps if s.kind != "decode")
    assert all(s.compute_tokens == s.num_tokens + s.pad for s in steps)
    eager = run(make_scheduler(w, name, cuda_graphs=False))
    assert [s.pad for s in eager] == [0] * len(eager) and shape(eager) == shape(steps)


# ---- arrivals ------------------------------------------------------------------------------------
def test_poisson_waits_for_the_first_arrival():
    w = make_workload(prompt=4, output=2, requests=4, rate=10.0)
    sched = make_scheduler(w)
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


@pytest.mark.parametrize("name", PLUGINS)
def test_offline_steps_do_not_depend_on_timing(name):
    w = make_workload(prompt=(2, 30), output=(1, 12), requests=25, max_num_seqs=5, max_num_batched_tokens=60)
    fast = run(make_scheduler(w, name, kv_blocks=12, block_size=4), lambda s: 1e-3)
    slow = run(make_scheduler(w, name, kv_blocks=12, block_size=4), lambda s: 1.0 + s.num_tokens)
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow):
        assert a.kind == b.kind
        np.testing.assert_array_equal(a.positions, b.positions)
        assert_same_lookups(a, b)


@pytest.mark.parametrize("arrival", ["offline", "poisson"])
@pytest.mark.parametrize("kv_blocks", [None, 12])
@pytest.mark.parametrize("name", PLUGINS)
def test_lookahead_equals_the_steps_that_then_run(name, kv_blocks, arrival):
    """`view.future(k)` shows the steps exactly as they will run once every request has arrived,
    and nothing before (the order would depend on timing); also when sequences are preempted."""
    w = make_workload(prompt=(2, 30), output=(1, 12), requests=25, max_num_seqs=5, max_num_batched_tokens=60,
                      rate=20.0 if arrival == "poisson" else None)
    sched = make_scheduler(w, name, kv_blocks=kv_blocks, block_size=4)
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
    assert (sched.preemptions > 0) == (kv_blocks is not None)
    checked = 0
    for index, future in shown.items():
        for f in future:
            actual = ran[f.index]
            assert (f.kind, f.seq_ids.tolist(), f.new_tokens.tolist(), f.context_lens.tolist(), f.pad) == \
                (actual.kind, actual.seq_ids.tolist(), actual.new_tokens.tolist(), actual.context_lens.tolist(), actual.pad)
            np.testing.assert_array_equal(f.positions, actual.positions)
            assert_same_lookups(f, actual)
            checked += 1
    assert checked > 20


def test_too_few_blocks_for_the_longest_sequence_is_refused():
    w = make_workload(prompt=4, output=6, requests=2)  # 4 + 6 - 1 = 9 tokens cached (the last is never fed): 3 blocks of 4
    with pytest.raises(ValueError, match="cannot hold a sequence of 9 tokens"):
        make_scheduler(w, kv_blocks=2, block_size=4)
    assert make_scheduler(w, kv_blocks=3, block_size=4).blocks.total == 3
    # 4 + 5 - 1 = 8 tokens cached: 2 blocks hold it, and the run completes in them
    sched = make_scheduler(make_workload(prompt=4, output=5, requests=2), kv_blocks=2, block_size=4)
    steps = run(sched)
    assert sched.done and sched.output_tokens == 10 and len(steps) > 5


def test_misuse_is_an_error():
    sched = make_scheduler(make_workload(prompt=4, output=3, requests=2))
    step = sched.next_step(0.0)
    with pytest.raises(RuntimeError, match="not been finished"):
        sched.next_step(0.0)
    sched.finish_step(step, 1.0)
    with pytest.raises(RuntimeError, match="not the step in flight"):
        sched.finish_step(step, 2.0)


# ---- properties over small random workloads ------------------------------------------------------
@settings(max_examples=80, deadline=None)
@given(
    name=st.sampled_from(PLUGINS),
    requests=st.integers(1, 10),
    prompt=st.tuples(st.integers(1, 6), st.integers(0, 6)),
    output=st.tuples(st.integers(1, 5), st.integers(0, 4)),
    max_num_seqs=st.integers(1, 5),
    extra_tokens=st.integers(0, 20),
    block_size=st.integers(1, 4),
    spare_blocks=st.sampled_from([0, 1, 3, None]),
    rate=st.sampled_from([None, 2.0, 50.0]),
    seed=st.integers(0, 1000),
)
def test_limits_blocks_and_token_accounting(name, requests, prompt, output, max_num_seqs, extra_tokens, block_size, spare_blocks,
                                            rate, seed):
    p_lo, p_hi = prompt[0], prompt[0] + prompt[1]
    o_lo, o_hi = output[0], output[0] + output[1]
    w = make_workload(hashing=HASHING, prompt=(p_lo, p_hi), output=(o_lo, o_hi), requests=requests,
                      max_num_seqs=max_num_seqs, max_num_batched_tokens=p_hi + extra_tokens, rate=rate, seed=seed)
    longest = -(-int(w.requests.window_len.max()) // block_size)
    kv_blocks = None if spare_blocks is None else longest + spare_blocks
    durations = np.random.default_rng(seed).uniform(0.01, 0.5, size=10_000)
    sched = make_scheduler(w, name, kv_blocks=kv_blocks, block_size=block_size)
    steps = run(sched, lambda s: float(durations[s.index]))
    assert sched.done and sched.blocks.used == 0, "every block free at the end"
    assert [s.index for s in steps] == list(range(len(steps)))

    cached = np.zeros(requests, dtype=np.int64)  # tokens in each sequence's KV cache
    high = np.zeros(requests, dtype=np.int64)
    generated = np.zeros(requests, dtype=np.int64)
    recomputed = 0
    first_seen: list[int] = []
    for s in steps:
        assert len(set(s.seq_ids.tolist())) == s.num_seqs <= max_num_seqs
        assert s.positions.size == s.num_tokens and np.all(s.new_tokens >= 1)
        if s.kind != "decode" or name == "vllm":
            assert s.num_tokens <= w.max_num_batched_tokens
        cursor = 0
        decodes = []
        for sid, n, ctx in zip(s.seq_ids.tolist(), s.new_tokens.tolist(), s.context_lens.tolist()):
            start = ctx - n
            if start != cached[sid]:
                assert start == 0, "a sequence feeds on from its cache, or from 0 after a preemption"
            if sid not in first_seen:
                first_seen.append(sid)
            decodes.append(generated[sid] > 0 and n == 1 and start == w.requests.prompt_len[sid] + generated[sid] - 1)
            np.testing.assert_array_equal(s.positions[cursor:cursor + n], w.window_offsets[sid] + np.arange(start, ctx))
            recomputed += max(0, min(ctx, high[sid]) - start)
            high[sid] = max(high[sid], ctx)
            cached[sid] = ctx
            if ctx == w.requests.prompt_len[sid] + generated[sid]:
                generated[sid] += 1
            cursor += n
        if name == "vllm":
            assert s.kind == ("decode" if all(decodes) else "prefill" if not any(decodes) else "mixed")
        else:  # a prefill may end a chunked recompute with its one last token; a decode only decodes
            assert s.kind in ("prefill", "decode") and (s.kind == "prefill" or all(decodes))
    assert generated.tolist() == w.requests.output_len.tolist() == sched.generated.tolist()
    if sched.preemptions == 0:
        assert first_seen == list(range(requests)), "FIFO admission"
        assert recomputed == 0
    assert sched.recomputed_tokens == recomputed
    assert sched.output_tokens == w.total_output_tokens and sched.prompt_tokens == w.total_prompt_tokens
    assert all(high[r.id] == r.prompt_len + r.output_len - 1 for r in w.requests), "every token but the last sampled is fed"
    metrics = sched.request_metrics()
    assert np.all(metrics.ttft_s > 0)
    tpot = metrics.tpot_s[[r.output_len > 1 for r in w.requests]]
    assert np.all(tpot > 0) and not any(math.isnan(t) for t in tpot)
    serving = sched.serving()
    assert 0 < serving.kv_used_mean <= serving.kv_used_peak <= 1.0

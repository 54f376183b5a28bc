"""The serving engine: continuous batching over a paged KV cache, one scheduler plugin per policy.

`Scheduler` is the engine every policy shares; a plugin (plugins/scheduler/, `@register("scheduler",
NAME)`) only says which sequences run in the next step and how many tokens each feeds (`schedule`).
The engine keeps what is common to every policy:

- arrivals and the waiting queue: requests wait in FIFO arrival order (ties by request id); a
  preempted sequence goes back to the head of the queue;
- the paged KV cache (`BlockManager`): `kv_blocks` blocks of `block_size` tokens; a sequence holds
  blocks for at least the tokens it caches and those its step writes (nano-vLLM allocates all its
  tokens' blocks at admission);
- sampling: a sequence samples one token in the step that brings every token it has (prompt and
  tokens sampled so far) into the KV cache, so a request with output_len O finishes after O
  samples; it then frees its blocks;
- preemption with recompute: a preempted sequence frees its blocks and later prefills its prompt
  and the tokens it had sampled again, at their window indices 0..len-1 (the same Engram rows as
  the first time);
- CUDA-graph padding: a decode step whose batch fits a captured graph runs that graph's batch size
  (`Step.pad` rows more than it feeds); the plugin says which sizes it captures (`graph_batch`);
- counts: TTFT and TPOT per request, prompt, output and recomputed tokens, preemptions, KV blocks
  in use while each step runs (`serving`).

The executor drives it: `next_step(now)` → run the step → `finish_step(step, end_s)`; when
`next_step` returns None and the run is not `done`, idle until `next_arrival()`. Once every
request has arrived the order of steps no longer depends on timing, so `view` can show a policy
the steps that follow (`StepView.future`), exactly as they will run.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from engramsim.hbm import longest_sequence
from engramsim.records import ServingCounts
from engramsim.steps import Step
from engramsim.strategies import Params, StepView, Waiting
from engramsim.workload import StepLookups, Workload, run_starts

StepKind = Literal["prefill", "decode", "mixed"]
QueueState = tuple[int, tuple[int, ...], tuple[int, ...]]
"""The waiting queue as `Scheduler.queue_state` keeps it: the arrivals admitted so far, and the
preempted sequences (head first) with the tokens each one's prefill feeds."""


class SchedulerParams(Params):
    """What every scheduler takes: the paged KV cache's block size, how its capacity is found (as
    nano-vLLM's `allocate_kv_cache` finds it), and CUDA graphs for decode batches. A plugin's own
    `Params` derives from this."""

    block_size: int = Field(default=256, gt=0, le=1 << 20, description="tokens per KV-cache block (nano-vLLM's kvcache_block_size: 256)")
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1,
        description="fraction of HBM the engine may use; the KV cache gets what weights, Engram, activations and reserved memory leave "
                    "of it (0.9: nano-vLLM's and vLLM's default)")
    reserved_gib: float = Field(
        default=0.5, ge=0, le=1 << 20,
        description="HBM outside the engine's allocations: CUDA context and library workspaces, GiB (a CUDA context takes ~0.29 GB "
                    "with lazy module loading, PyTorch PR 86509; cuBLAS workspaces and allocator slack round it up to 0.5)")
    kv_blocks: int | None = Field(default=None, gt=0, le=1 << 40,
                                  description="KV-cache blocks, overriding the capacity found from HBM (at most that many); "
                                              "a small value makes a small scenario preempt")
    cuda_graphs: bool = Field(default=True, description="decode batches run captured CUDA graphs, padded to the graph's batch size")


@dataclass(frozen=True)
class RequestMetrics:
    """Per request, in request-id order; NaN where not defined (not yet served, or output_len 1)."""

    ttft_s: np.ndarray  # first token (end of the step that sampled it) - arrival
    tpot_s: np.ndarray  # (finish - first token) / (output_len - 1)

    def defined(self) -> tuple[np.ndarray, np.ndarray]:
        """(TTFT, TPOT) of the requests where each is defined, in request-id order."""
        return self.ttft_s[~np.isnan(self.ttft_s)], self.tpot_s[~np.isnan(self.tpot_s)]


def request_metrics(arrival_s: np.ndarray, output_len: np.ndarray, first_token_s: np.ndarray, finish_s: np.ndarray) -> RequestMetrics:
    """Per request, from when it arrived, sampled its first token and its last (NaN: not yet)."""
    ttft = first_token_s - arrival_s
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = (finish_s - first_token_s) / (output_len - 1)
    tpot[output_len <= 1] = np.nan
    return RequestMetrics(ttft, tpot)


class BlockManager:
    """A paged KV cache of `total` blocks of `block_size` tokens. Sequence s holds `held[s]` blocks;
    `hold(s, tokens)` grows it to cover `tokens` tokens, `release` frees a sequence's blocks."""

    def __init__(self, total: int, block_size: int, sequences: int) -> None:
        self.total, self.block_size = total, block_size
        self.free = total
        self.held = np.zeros(sequences, dtype=np.int64)

    @property
    def used(self) -> int:
        return self.total - self.free

    def blocks_for(self, tokens: int | np.ndarray) -> int | np.ndarray:
        """Blocks that hold `tokens` tokens."""
        return -(-tokens // self.block_size)

    def shortfall(self, seqs: int | np.ndarray, tokens: int | np.ndarray) -> int | np.ndarray:
        """New blocks each sequence needs to cover `tokens` tokens."""
        return np.maximum(0, self.blocks_for(tokens) - self.held[seqs])

    def can_hold(self, seq: int, tokens: int) -> bool:
        return int(self.shortfall(seq, tokens)) <= self.free

    def hold(self, seqs: int | np.ndarray, tokens: int | np.ndarray, need: int | np.ndarray | None = None) -> None:
        """Give each sequence the blocks it lacks for `tokens` tokens (an error when they are not
        free); `need` is their `shortfall` when the caller has it already."""
        need = self.shortfall(seqs, tokens) if need is None else need
        total = int(np.sum(need))
        if total > self.free:
            raise RuntimeError(f"{total} KV blocks needed, {self.free} free")
        if total:  # most decode steps cross no block boundary
            self.held[seqs] += need
            self.free -= total

    def release(self, seqs: int | np.ndarray) -> None:
        self.free += int(np.sum(self.held[seqs]))
        self.held[seqs] = 0

    def copy(self) -> BlockManager:
        clone = copy.copy(self)
        clone.held = self.held.copy()
        return clone


class Scheduler:
    """One executor pass's serving engine over a `Workload` (a fresh one per pass). A plugin
    implements `schedule` (the next step's sequences and tokens) and `graph_batch`, with the
    engine's state and tools: the waiting queue (`waiting_head`, `pop_waiting`), the `running`
    sequences (the plugin keeps their order), `length` and `computed` per sequence, the KV cache
    (`blocks`), `preempt`, and `make_step`."""

    kind: ClassVar[str]
    name: ClassVar[str]
    Params: ClassVar[type[SchedulerParams]] = SchedulerParams
    chunks_prompts: ClassVar[bool] = False  # splits a prompt over steps, so a prompt may exceed max_num_batched_tokens

    def __init__(self, params: SchedulerParams, workload: Workload, kv_blocks: int) -> None:
        self.params = params
        self.workload = workload
        reqs = workload.requests
        self.max_num_seqs = workload.max_num_seqs
        self.max_num_batched_tokens = workload.max_num_batched_tokens
        self.arrival_s, self.prompt_len, self.output_len = reqs.arrival_s, reqs.prompt_len, reqs.output_len  # shared, read-only
        self.blocks = BlockManager(kv_blocks, params.block_size, len(reqs))
        longest = longest_sequence(workload)
        if self.blocks.blocks_for(longest) > kv_blocks:
            raise ValueError(f"{kv_blocks} KV blocks of {params.block_size} tokens cannot hold a sequence of {longest} tokens")
        self._window_start = workload.window_offsets[:-1]
        self._arrival_order = np.argsort(self.arrival_s, kind="stable")  # FIFO; ties by request id
        # The waiting queue: the preempted sequences (_preempted, head first), then _arrival_order[_admitted:_arrived].
        self._preempted: deque[int] = deque()
        self._admitted = 0
        self._arrived = 0
        self.running = np.empty(0, dtype=np.int64)  # the running sequences, in the policy's order
        self.generated = np.zeros(len(reqs), dtype=np.int64)  # output tokens sampled so far
        self.computed = np.zeros(len(reqs), dtype=np.int64)  # tokens in the KV cache
        self._high = np.zeros(len(reqs), dtype=np.int64)  # the most tokens ever in the KV cache: re-fed tokens below it are recomputed
        self.first_token_s = np.full(len(reqs), np.nan)
        self.finish_s = np.full(len(reqs), np.nan)
        self._finished = 0
        self._index = 0
        self._pending: Step | None = None
        self._ahead: tuple[Step | None, list[Step], bool] = (None, [], False)  # lookahead of the step in flight
        self.prompt_tokens = 0  # prompt tokens prefilled for the first time
        self.output_tokens = 0  # output tokens sampled
        self.recomputed_tokens = 0  # tokens fed again after a preemption
        self.preemptions = 0
        self._kv_used_sum = 0  # KV blocks in use, summed over the steps made
        self._kv_used_peak = 0

    # ---- what a policy decides --------------------------------------------------------------
    def schedule(self) -> Step | None:
        """The next step (built with `make_step`), or None when nothing waiting or running can run."""
        raise NotImplementedError

    def graph_batch(self, batch: int) -> int:
        """Rows the captured CUDA graph for a decode batch of `batch` sequences computes; `batch`
        itself when the batch runs eager."""
        raise NotImplementedError

    # ---- state ------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._finished == len(self.workload.requests)

    def next_arrival(self) -> float | None:
        """Arrival time of the next request not yet arrived, None when all have arrived."""
        if self._arrived == len(self._arrival_order):
            return None
        return float(self.arrival_s[self._arrival_order[self._arrived]])

    def _admit_arrivals(self, now: float) -> None:
        order = self._arrival_order
        while self._arrived < order.size and self.arrival_s[order[self._arrived]] <= now:
            self._arrived += 1

    def length(self, seqs: int | np.ndarray) -> int | np.ndarray:
        """Tokens each sequence has: its prompt and the tokens it sampled (the last not yet in the KV cache)."""
        return self.prompt_len[seqs] + self.generated[seqs]

    def waiting_head(self) -> int | None:
        """The sequence at the head of the waiting queue, None when it is empty."""
        if self._preempted:
            return self._preempted[0]
        if self._admitted < self._arrived:
            return int(self._arrival_order[self._admitted])
        return None

    def pop_waiting(self) -> int:
        """Take the head of the waiting queue (the caller makes it running)."""
        if self._preempted:
            return self._preempted.popleft()
        self._admitted += 1
        return int(self._arrival_order[self._admitted - 1])

    def preempt(self, seq: int) -> None:
        """Free the blocks of `seq` (already taken out of the running list) and put it at the head
        of the waiting queue: it prefills everything it has again (recompute)."""
        self.blocks.release(seq)
        self.computed[seq] = 0
        self._preempted.appendleft(seq)
        self.preemptions += 1

    # ---- steps ------------------------------------------------------------------------------
    def next_step(self, now: float) -> Step | None:
        """The next step to run at time `now`, or None when nothing has arrived to run."""
        if self._pending is not None:
            raise RuntimeError(f"step {self._pending.index} has not been finished (call finish_step first)")
        self._admit_arrivals(now)
        step = self.schedule()
        if step is None and (self.running.size or self.waiting_head() is not None):
            raise RuntimeError(f"scheduler {self.name!r} has sequences waiting or running but none can run")
        self._pending = step
        return step

    def make_step(self, kind: StepKind, seqs: list[int] | np.ndarray, new_tokens: list[int] | np.ndarray) -> Step:
        """A step feeding `new_tokens` tokens to each of `seqs`, from the first token not in its KV
        cache; a decode step is padded to its CUDA graph's batch size."""
        ids = np.asarray(seqs, dtype=np.int64)
        new = np.asarray(new_tokens, dtype=np.int64)
        first = self.computed[ids]
        if kind == "decode":  # one token each: the fast path of the common step
            positions = self._window_start[ids] + first
        else:
            positions = np.arange(int(new.sum()), dtype=np.int64) + np.repeat(self._window_start[ids] + first - run_starts(new), new)
        pad = self.graph_batch(ids.size) - ids.size if kind == "decode" and self.params.cuda_graphs else 0
        step = Step(self._index, kind, ids, new, first + new, positions, StepLookups(self.workload, positions), pad)
        self._index += 1
        self._kv_used_sum += self.blocks.used
        self._kv_used_peak = max(self._kv_used_peak, self.blocks.used)
        return step

    def finish_step(self, step: Step, end_s: float) -> None:
        """The step ended at `end_s`: its tokens are in the KV cache; every sequence that now has all
        its tokens cached samples one; the finished ones free their blocks."""
        if step is not self._pending:
            raise RuntimeError(f"step {step.index} is not the step in flight")
        self._pending = None
        ids, context = step.seq_ids, step.context_lens
        if step.kind == "decode":  # each sequence's last sampled token, never cached before: nothing recomputed, all sample
            self._high[ids] = context
            self.computed[ids] = context
            sampled = ids
        else:
            start, high = context - step.new_tokens, self._high[ids]
            self.recomputed_tokens += int(np.clip(np.minimum(context, high) - start, 0, None).sum())
            self.prompt_tokens += int(np.clip(np.minimum(context, self.prompt_len[ids]) - np.maximum(start, high), 0, None).sum())
            self._high[ids] = np.maximum(high, context)
            self.computed[ids] = context
            sampled = ids[context == self.length(ids)]
            self.first_token_s[sampled[self.generated[sampled] == 0]] = end_s
        self.generated[sampled] += 1
        self.output_tokens += int(sampled.size)
        finished = sampled[self.generated[sampled] >= self.output_len[sampled]]
        if finished.size:
            self.finish_s[finished] = end_s
            self._finished += int(finished.size)
            self.blocks.release(finished)
            self.running = self.running[np.isnan(self.finish_s[self.running])]  # keeps the running order

    # ---- the future -------------------------------------------------------------------------
    def lookahead(self, k: int) -> list[Step]:
        """Up to k steps after the one in flight, exactly as they will run; empty while a request
        has yet to arrive (then the steps depend on timing). Remembered for the step in flight,
        so policies asking again pay nothing."""
        if k <= 0 or self.next_arrival() is not None:
            return []
        pending, known, complete = self._ahead
        if pending is not self._pending or (len(known) < k and not complete):
            known = self._replay(k)
            self._ahead = (self._pending, known, len(known) < k)
        return known[:k]

    def _clone(self) -> Scheduler:
        """A copy whose steps do not change this scheduler (the workload and its arrays are shared)."""
        clone = copy.copy(self)
        for name in ("running", "generated", "computed", "_high", "first_token_s", "finish_s"):
            setattr(clone, name, getattr(self, name).copy())
        clone._preempted = deque(self._preempted)
        clone.blocks = self.blocks.copy()
        return clone

    def _replay(self, k: int) -> list[Step]:
        """Run a copy of this scheduler k steps on (every request has arrived, so time does not matter)."""
        clone = self._clone()
        if clone._pending is not None:
            clone.finish_step(clone._pending, 0.0)
        steps: list[Step] = []
        while len(steps) < k and not clone.done:
            step = clone.next_step(math.inf)
            assert step is not None  # every request has arrived: something runs until done
            clone.finish_step(step, 0.0)
            steps.append(step)
        return steps

    def view(self, step: Step, max_steps: int | None = None) -> StepView:
        """What the policies see of `step` (the step in flight): it and, when known, the future,
        never past `max_steps` steps in all."""
        room = math.inf if max_steps is None else max_steps - step.index - 1

        def future(k: int) -> list[Step]:
            return self.lookahead(int(min(k, room)))

        def waiting() -> Waiting:
            return self.waiting() if room > 0 else Waiting()

        return StepView(step, future, waiting)

    def waiting(self) -> Waiting:
        """The waiting queue now, head first, with the tokens each one's prefill feeds and the
        rows it looks up (`StepLookups` of its window's first tokens: the positions `make_step`
        gives a sequence with nothing in the KV cache)."""
        seqs = np.concatenate([np.fromiter(self._preempted, dtype=np.int64, count=len(self._preempted)),
                               self._arrival_order[self._admitted:self._arrived]]).astype(np.int64, copy=False)
        return self._waiting(seqs, np.asarray(self.length(seqs), dtype=np.int64))

    def queue_state(self) -> QueueState:
        """The waiting queue now, kept small: a replayed schedule (engramsim/schedule.py) rebuilds it with `waiting_at`."""
        preempted = tuple(self._preempted)
        return self._admitted, preempted, tuple(int(self.length(seq)) for seq in preempted)

    def waiting_at(self, state: QueueState) -> Waiting:
        """The waiting queue a `queue_state` kept, taken when every request had arrived (a
        request never admitted has sampled nothing: its prompt is its length)."""
        admitted, preempted, lengths = state
        fresh = self._arrival_order[admitted:]
        return self._waiting(np.concatenate([np.array(preempted, dtype=np.int64), fresh]).astype(np.int64, copy=False),
                             np.concatenate([np.array(lengths, dtype=np.int64), self.prompt_len[fresh]]).astype(np.int64, copy=False))

    def _waiting(self, seqs: np.ndarray, tokens: np.ndarray) -> Waiting:
        length = dict(zip(seqs.tolist(), tokens.tolist(), strict=True))

        def lookups(seq: int) -> StepLookups:  # a waiting sequence's length does not change while it waits
            return StepLookups(self.workload, self._window_start[seq] + np.arange(length[seq], dtype=np.int64))

        return Waiting(seqs, tokens, lookups)

    # ---- metrics ----------------------------------------------------------------------------
    def request_metrics(self) -> RequestMetrics:
        return request_metrics(self.arrival_s, self.output_len, self.first_token_s, self.finish_s)

    def latencies(self) -> tuple[np.ndarray, np.ndarray]:
        """(TTFT, TPOT) of the requests where each is defined, in request-id order, seconds."""
        return self.request_metrics().defined()

    def serving(self) -> ServingCounts:
        """The pass's KV-cache and preemption counts, over the steps made so far."""
        total, steps = self.blocks.total, self._index
        return ServingCounts(kv_blocks=total, kv_used_mean=self._kv_used_sum / (steps * total) if steps else 0.0,
                             kv_used_peak=self._kv_used_peak / total, preemptions=self.preemptions,
                             recomputed_tokens=self.recomputed_tokens)


def next_graph_size(sizes: list[int], batch: int) -> int | None:
    """The smallest captured batch size that holds `batch` sequences, None when none does."""
    return next((size for size in sizes if size >= batch), None)

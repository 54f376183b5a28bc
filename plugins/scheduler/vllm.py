"""vLLM v1's scheduler (vllm/v1/core/sched/scheduler.py, first-come-first-served), with chunked
prefill and without prefix caching (request windows share no whole block).

One token budget, max_num_batched_tokens, per step. The running sequences come first, in order:
each feeds what it lacks in the KV cache (one token for a decode, the rest of its prompt for a
prefill in progress), cut to the budget left, until the budget is spent; a sequence takes the
blocks its new tokens need, and when they are not free the last running sequence is preempted
(its blocks freed, the sequence put back at the head of the waiting queue to be prefilled again:
recompute) until they are, or the sequence itself is preempted and the step stops there. When
nobody was preempted, waiting sequences are then admitted in order while the budget lasts and
fewer than max_num_seqs sequences run: each feeds its tokens (prompt and, after a preemption, the
tokens it had sampled) cut to the budget left, with blocks for just those; the first whose
blocks are not free stops admission. A sequence samples only in the step that completes its
prompt. A step is "decode" when every sequence feeds its one last sampled token, "prefill" when
none does, "mixed" otherwise.

Pure decode steps run captured CUDA graphs: vLLM's default capture sizes are 1, 2, 4, multiples
of 8 below 256, then multiples of 16, up to min(2 * max_num_seqs, 512); a batch runs the smallest
that holds it, and eager past the largest.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
from pydantic import Field

from engramsim.registry import register
from engramsim.scheduler import Scheduler, SchedulerParams, StepKind, next_graph_size
from engramsim.steps import Step

MAX_GRAPH_BATCH = 512  # vLLM's compilation config: max_cudagraph_capture_size = min(2 * max_num_seqs, 512) by default


class VllmParams(SchedulerParams):
    """vLLM's block size (the other settings as for every scheduler)."""

    block_size: int = Field(default=16, gt=0, le=1 << 20, description="tokens per KV-cache block (vLLM's default on CUDA: 16)")


@register("scheduler", "vllm")
class Vllm(Scheduler):
    """vLLM v1: decodes and prompt chunks share one token budget per step (chunked prefill); preempts the newest sequence."""

    Params = VllmParams
    chunks_prompts = True

    def schedule(self) -> Step | None:
        seqs, tokens, budget, preempted = self._running_first()
        running = self.running.tolist()
        while not preempted and budget > 0 and len(running) < self.max_num_seqs:
            seq = self.waiting_head()
            if seq is None:
                break
            chunk = min(int(self.length(seq)), budget)  # a waiting sequence has nothing in the KV cache
            if not self.blocks.can_hold(seq, chunk):
                break
            self.blocks.hold(seq, chunk)
            running.append(self.pop_waiting())
            seqs.append(seq)
            tokens.append(chunk)
            budget -= chunk
        self.running = np.array(running, dtype=np.int64)
        if not seqs:
            return None
        ids = np.array(seqs, dtype=np.int64)
        decode = (self.generated[ids] > 0) & (self.computed[ids] == self.length(ids) - 1)
        kind: StepKind = "decode" if decode.all() else "mixed" if decode.any() else "prefill"
        return self.make_step(kind, ids, tokens)

    def _running_first(self) -> tuple[list[int], list[int], int, bool]:
        """The running sequences' share of the step: (sequences, tokens each, budget left, whether
        one was preempted). When the free blocks cover every share, no loop is needed."""
        running = self.running
        todo = self.length(running) - self.computed[running]
        before = np.cumsum(todo) - todo
        count = int(np.count_nonzero(before < self.max_num_batched_tokens))  # sequences served before the budget runs out
        ids = running[:count]
        chunks = np.minimum(todo[:count], self.max_num_batched_tokens - before[:count])
        if int(np.sum(self.blocks.shortfall(ids, self.computed[ids] + chunks))) <= self.blocks.free:
            self.blocks.hold(ids, self.computed[ids] + chunks)
            return ids.tolist(), chunks.tolist(), self.max_num_batched_tokens - int(chunks.sum()), False
        return self._running_preempting()

    def _running_preempting(self) -> tuple[list[int], list[int], int, bool]:
        """`_running_first` one sequence at a time, preempting from the back of the running list."""
        running = self.running.tolist()
        cached = self.computed[self.running].tolist()
        todo = (self.length(self.running) - self.computed[self.running]).tolist()
        seqs: list[int] = []
        tokens: list[int] = []
        budget, taken, back, preempted = self.max_num_batched_tokens, 0, len(running), False  # `taken` blocks are promised
        while len(seqs) < back and budget > 0:
            at = len(seqs)
            chunk = min(todo[at], budget)
            blocks = int(self.blocks.shortfall(running[at], cached[at] + chunk))
            while blocks > self.blocks.free - taken:
                back -= 1
                self.preempt(running[back])
                preempted = True
                if back == at:
                    break
            else:
                taken += blocks
                seqs.append(running[at])
                tokens.append(chunk)
                budget -= chunk
                continue
            break
        ids = np.array(seqs, dtype=np.int64)
        self.blocks.hold(ids, self.computed[ids] + np.array(tokens, dtype=np.int64))
        self.running = np.array(running[:back], dtype=np.int64)
        return seqs, tokens, budget, preempted

    @cached_property
    def graph_sizes(self) -> list[int]:
        largest = min(2 * self.max_num_seqs, MAX_GRAPH_BATCH)
        return [size for size in (1, 2, 4, *range(8, 256, 8), *range(256, largest + 1, 16)) if size <= largest]

    def graph_batch(self, batch: int) -> int:
        size = next_graph_size(self.graph_sizes, batch)
        return batch if size is None else size

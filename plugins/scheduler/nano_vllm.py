"""nano-vLLM's scheduler (GeeeekExplorer/nano-vllm, nanovllm/engine/scheduler.py and block_manager.py
at commit bb823b3, April 2026), without its prefix cache (request windows share no whole block).

A step is prefill-only when the head of the waiting queue can be admitted: waiting sequences are
taken in order while the step holds fewer than max_num_seqs of them (those already running are
not counted, as nano-vLLM counts), the KV cache has free blocks for all of a sequence's tokens
(its prompt and, after a preemption, the tokens it had sampled) and its tokens fit what is left of
max_num_batched_tokens; the first that does not fit stops admission. Only the step's first
sequence may be cut to the budget (a chunk: it keeps its blocks and stays at the head of the
queue), which happens when a preempted sequence has grown past max_num_batched_tokens.
Otherwise the first max_num_seqs running sequences decode one token each; a sequence whose next
token starts a new block takes a free one, and when none is free the most recently admitted
running sequence is preempted (itself when it is the last), its blocks freed and the sequence put
back at the head of the waiting queue, to be prefilled again (recompute).

Decode batches run captured CUDA graphs (nano-vLLM's model_runner.py, capture_cudagraph):
batch sizes 1, 2, 4, 8 and multiples of 16 up to min(max_num_seqs, 512); a batch runs the
smallest graph that holds it, over at most min(max_num_seqs, 512) rows. Prefills run eager.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from engramsim.registry import register
from engramsim.scheduler import Scheduler, next_graph_size
from engramsim.steps import Step

MAX_GRAPH_BATCH = 512  # nano-vLLM's capture_cudagraph: max_bs = min(max_num_seqs, 512); larger decode batches run eager


@register("scheduler", "nano-vllm")
class NanoVllm(Scheduler):
    """nano-vLLM: whole-prompt prefill steps first, admitted by free KV blocks; else decode, preempting the newest sequence."""

    def schedule(self) -> Step | None:
        return self._prefill() or self._decode()

    def _prefill(self) -> Step | None:
        seqs: list[int] = []
        tokens: list[int] = []
        admitted: list[int] = []
        budget = self.max_num_batched_tokens
        while len(seqs) < self.max_num_seqs and budget > 0:
            seq = self.waiting_head()
            if seq is None:
                break
            length = int(self.length(seq))
            if self.blocks.held[seq] == 0 and not self.blocks.can_hold(seq, length):
                break
            todo = length - int(self.computed[seq])
            if todo > budget and seqs:
                break
            self.blocks.hold(seq, length)
            chunk = min(todo, budget)
            budget -= chunk
            seqs.append(seq)
            tokens.append(chunk)
            if chunk == todo:
                admitted.append(self.pop_waiting())
        if not seqs:
            return None
        self.running = np.concatenate([self.running, np.array(admitted, dtype=np.int64)])
        return self.make_step("prefill", seqs, tokens)

    def _decode(self) -> Step | None:
        if self.running.size == 0:
            return None
        batch = self.running[: self.max_num_seqs].copy()
        lengths = self.length(batch)
        need = self.blocks.shortfall(batch, lengths)
        if int(np.sum(need)) > self.blocks.free:
            return self._decode_preempting()
        self.blocks.hold(batch, lengths, need)
        return self.make_step("decode", batch, np.ones(batch.size, dtype=np.int64))

    def _decode_preempting(self) -> Step | None:
        """The decode of a step where the free blocks do not cover every sequence's next token:
        each running sequence in turn takes the block it needs, preempting from the back of the
        running queue (itself last) until one is free."""
        running = self.running.tolist()
        need = np.asarray(self.blocks.shortfall(self.running, self.length(self.running))).tolist()
        front, back, taken = 0, len(running), 0  # running[front:back] have yet to be scheduled; `taken` blocks are promised
        scheduled: list[int] = []
        while front < back and len(scheduled) < self.max_num_seqs:
            seq, blocks = running[front], need[front]
            front += 1
            while blocks > self.blocks.free - taken:
                if front < back:
                    back -= 1
                    self.preempt(running[back])
                else:
                    self.preempt(seq)
                    break
            else:
                taken += blocks
                scheduled.append(seq)
        ids = np.array(scheduled, dtype=np.int64)
        self.blocks.hold(ids, self.length(ids))
        self.running = np.array(scheduled + running[front:back], dtype=np.int64)
        return self.make_step("decode", ids, np.ones(ids.size, dtype=np.int64)) if scheduled else None

    @cached_property
    def graph_sizes(self) -> list[int]:
        largest = min(self.max_num_seqs, MAX_GRAPH_BATCH)
        return [1, 2, 4, 8, *range(16, largest + 1, 16)]

    def graph_batch(self, batch: int) -> int:
        """The smallest captured size that holds the batch, over the graph buffers' min(max_num_seqs,
        512) rows; eager past 512 and past the largest size (where nano-vLLM finds no graph)."""
        size = next_graph_size(self.graph_sizes, batch) if batch <= MAX_GRAPH_BATCH else None
        return batch if size is None else min(size, self.max_num_seqs)

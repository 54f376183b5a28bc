"""Continuous batching, as nano-vLLM schedules it: whole-prompt prefill first, else decode.

A step is prefill-only when an arrived request is waiting and fits: waiting requests are
admitted in FIFO order while the running + admitted sequences stay within max_num_seqs and the
batched prompt tokens within max_num_batched_tokens (whole prompts, no chunking; the first
request that does not fit stops admission). Otherwise every running sequence decodes one token.
The prefill samples each admitted sequence's first output token and each decode step one more,
so a request with output_len O takes one prefill and O - 1 decode steps. KV-cache capacity and
preemption are not modelled: a batch is limited by the two batching knobs only.

The executor drives it: `next_step(now)` → run the step → `finish_step(step, end_s)`; when
`next_step` returns None and the run is not `done`, idle until `next_arrival()`. Once every
request has arrived the order of steps no longer depends on timing, so `view` can show a policy
the steps that follow (`StepView.future`), exactly as they will run.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np

from engramsim.steps import Step
from engramsim.strategies import StepView
from engramsim.workload import StepLookups, Workload, run_starts


@dataclass(frozen=True)
class RequestMetrics:
    """Per request, in request-id order; NaN where not defined (not yet served, or output_len 1)."""

    ttft_s: np.ndarray  # first token (end of its prefill step) - arrival
    tpot_s: np.ndarray  # (finish - first token) / (output_len - 1)


class Scheduler:
    """One executor run's batching state over a `Workload` (a fresh one per pass)."""

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        reqs = workload.requests
        self.max_num_seqs = workload.max_num_seqs
        self.max_num_batched_tokens = workload.max_num_batched_tokens
        self.arrival_s, self.prompt_len, self.output_len = reqs.arrival_s, reqs.prompt_len, reqs.output_len  # shared, read-only
        if np.any(self.prompt_len > self.max_num_batched_tokens):
            raise ValueError(f"a prompt of {int(self.prompt_len.max())} tokens exceeds max_num_batched_tokens {self.max_num_batched_tokens}")
        self._window_start = workload.window_offsets[:-1]
        self._arrival_order = np.argsort(self.arrival_s, kind="stable")  # FIFO; ties by request id
        self._admitted = 0  # requests of _arrival_order admitted: the waiting queue is _arrival_order[_admitted:_arrived]
        self._arrived = 0  # requests of _arrival_order that have arrived
        self._running = np.empty(0, dtype=np.int64)  # admission order
        self.generated = np.zeros(len(reqs), dtype=np.int64)  # output tokens sampled so far
        self.first_token_s = np.full(len(reqs), np.nan)
        self.finish_s = np.full(len(reqs), np.nan)
        self._finished = 0
        self._index = 0
        self._pending: Step | None = None
        self._ahead: tuple[Step | None, list[Step], bool] = (None, [], False)  # lookahead of the step in flight
        self.prompt_tokens = 0  # prompt tokens prefilled so far
        self.output_tokens = 0  # output tokens sampled so far

    # ---- state ---------------------------------------------------------------------------
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

    # ---- steps ---------------------------------------------------------------------------
    def next_step(self, now: float) -> Step | None:
        """The next step to run at time `now`, or None when nothing has arrived to run."""
        if self._pending is not None:
            raise RuntimeError(f"step {self._pending.index} has not been finished (call finish_step first)")
        self._admit_arrivals(now)
        step = self._prefill() or self._decode()
        self._pending = step
        return step

    def _make_step(self, kind: str, seq_ids: np.ndarray, new_tokens: np.ndarray, context_lens: np.ndarray,
                   positions: np.ndarray) -> Step:
        step = Step(self._index, kind, seq_ids, new_tokens, context_lens, positions,  # type: ignore[arg-type]
                    StepLookups(self.workload, positions))
        self._index += 1
        return step

    def _prefill(self) -> Step | None:
        admitted: list[int] = []
        tokens = 0
        room = self.max_num_seqs - self._running.size
        while self._admitted < self._arrived and len(admitted) < room:
            head = int(self._arrival_order[self._admitted])
            plen = int(self.prompt_len[head])
            if tokens + plen > self.max_num_batched_tokens:
                break
            admitted.append(head)
            self._admitted += 1
            tokens += plen
        if not admitted:
            return None
        ids = np.array(admitted, dtype=np.int64)
        lens = self.prompt_len[ids]
        bounds = run_starts(lens)  # each prompt's first slot in the flat batch
        positions = np.arange(tokens, dtype=np.int64) + np.repeat(self._window_start[ids] - bounds, lens)
        self._running = np.concatenate([self._running, ids])
        return self._make_step("prefill", ids, lens.copy(), lens.copy(), positions)

    def _decode(self) -> Step | None:
        if self._running.size == 0:
            return None
        ids = self._running.copy()
        fed = self.prompt_len[ids] + self.generated[ids] - 1  # window index of the last sampled token
        positions = self._window_start[ids] + fed
        return self._make_step("decode", ids, np.ones(ids.size, dtype=np.int64), fed + 1, positions)

    def finish_step(self, step: Step, end_s: float) -> None:
        """The step ended at `end_s`: sample a token per sequence, retire the finished ones."""
        if step is not self._pending:
            raise RuntimeError(f"step {step.index} is not the step in flight")
        self._pending = None
        ids = step.seq_ids
        if step.kind == "prefill":
            self.first_token_s[ids] = end_s
            self.prompt_tokens += int(step.new_tokens.sum())
        self.generated[ids] += 1
        self.output_tokens += int(ids.size)
        finished = ids[self.generated[ids] >= self.output_len[ids]]
        if finished.size:
            self.finish_s[finished] = end_s
            self._finished += int(finished.size)
            self._running = self._running[~np.isin(self._running, finished)]

    # ---- the future ----------------------------------------------------------------------
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

    def _replay(self, k: int) -> list[Step]:
        """Run a copy of this scheduler k steps on (every request has arrived, so time does not matter)."""
        clone = copy.copy(self)
        clone._running = self._running.copy()
        clone.generated = self.generated.copy()
        clone.first_token_s, clone.finish_s = self.first_token_s.copy(), self.finish_s.copy()
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

        return StepView(step, future)

    # ---- metrics -------------------------------------------------------------------------
    def request_metrics(self) -> RequestMetrics:
        ttft = self.first_token_s - self.arrival_s
        with np.errstate(invalid="ignore", divide="ignore"):
            tpot = (self.finish_s - self.first_token_s) / (self.output_len - 1)
        tpot[self.output_len <= 1] = np.nan
        return RequestMetrics(ttft, tpot)

    def latencies(self) -> tuple[np.ndarray, np.ndarray]:
        """(TTFT, TPOT) of the requests where each is defined, in request-id order, seconds."""
        metrics = self.request_metrics()
        return metrics.ttft_s[~np.isnan(metrics.ttft_s)], metrics.tpot_s[~np.isnan(metrics.tpot_s)]

"""A pass's steps served once and replayed: when every request has arrived before the first step
(an offline workload), the serving engine's decisions never depend on timing, so the steps are
the same in every pass with the same scheduler and KV cache.

`Schedule.served` drives a scheduler to the end with a step counter for a clock (each step "ends"
at its own index), so a request's first-token and finish times are step indices; `Replay` hands
the steps to an executor in the same calls a `Scheduler` answers (`next_step`, `finish_step`,
`view`, ...), records when each step really ended, and turns the indices into seconds. A pass
replaying a schedule makes exactly the records of a pass driving the scheduler itself
(tests/test_schedule.py); the offloaded pass and the all-HBM baseline share one schedule, and so
do sweep points that change neither the workload nor the KV cache (`Workload.schedules`).

A kept schedule holds its steps' token positions (and their bytes, the lookups memo's key) and the
waiting queue at each step (`Scheduler.queue_state`), but never the steps' lookups, which stay in
the workload's bounded memo (`StepLookups`). A workload keeps `SCHEDULES_KEPT` schedules, each of
at most `SCHEDULE_TOKENS` tokens fed; a longer pass is served by its scheduler step by step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from engramsim.records import ServingCounts
from engramsim.scheduler import QueueState, RequestMetrics, Scheduler, request_metrics
from engramsim.steps import Step
from engramsim.strategies import StepView, Waiting

SCHEDULE_TOKENS = 1 << 21
"""Tokens fed (recomputed ones included) a schedule may hold: its steps cost ~30 bytes a token
(positions, their bytes once read, each step's sequences, tokens and context; paper-4B's 589 k
tokens take ~17 MB), so ~60 MB at this bound. A workload of more tokens is served step by step,
its memory independent of its length."""
SCHEDULES_KEPT = 2
"""Schedules a workload keeps, the least recently replayed dropped first: a run's passes need at most
two KV caches (with Engram and without)."""


@dataclass(frozen=True, eq=False)
class Schedule:
    """Every step a scheduler served, as it served them (`served`), and what it counted."""

    steps: tuple[Step, ...]
    queues: tuple[QueueState, ...]  # the waiting queue while each step runs
    scheduler: Scheduler  # the scheduler that served them, at its end (it rebuilds a waiting queue from its state)
    max_steps: int | None  # the step limit it was served under
    first_token: np.ndarray  # per request: the index of the step that sampled its first token (NaN: none)
    finish: np.ndarray  # per request: the index of the step that sampled its last token (NaN: none)
    output_tokens: int
    prompt_tokens: int
    serving: ServingCounts
    prices: dict = field(default_factory=dict, repr=False)  # the steps' compute prices, by cost model rates (simulator/cost.py)
    counts: dict = field(default_factory=dict, repr=False)  # per Engram layer, `lookups`

    @staticmethod
    def timeless(scheduler: Scheduler) -> bool:
        """Whether the scheduler's steps cannot depend on timing: every request arrives at time 0 or
        before, when the first step is scheduled."""
        return not scheduler.arrival_s.size or float(scheduler.arrival_s.max()) <= 0.0

    @classmethod
    def served(cls, scheduler: Scheduler, max_steps: int | None = None) -> Schedule:
        """Drive a fresh, timeless scheduler to the end (at most `max_steps` steps), each step ending at its index."""
        if not cls.timeless(scheduler):
            raise ValueError("a schedule is served only when every request has arrived before the first step")
        steps: list[Step] = []
        queues: list[QueueState] = []
        while not scheduler.done and (max_steps is None or len(steps) < max_steps):
            step = scheduler.next_step(0.0)
            assert step is not None  # every request has arrived: something runs until done
            queues.append(scheduler.queue_state())
            scheduler.finish_step(step, float(step.index))
            steps.append(step)
        return cls(tuple(steps), tuple(queues), scheduler, max_steps, scheduler.first_token_s, scheduler.finish_s, scheduler.output_tokens,
                   scheduler.prompt_tokens, scheduler.serving())

    @property
    def complete(self) -> bool:
        """Whether the scheduler served every request (rather than stopping at `max_steps`)."""
        return self.scheduler.done

    def covers(self, max_steps: int | None) -> bool:
        """Whether a pass limited to `max_steps` runs exactly these steps."""
        if self.complete:
            return max_steps is None or max_steps >= len(self.steps)
        return max_steps == len(self.steps)

    def tokens(self) -> int:
        return sum(int(step.positions.size) for step in self.steps)

    def lookups(self, layers: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per Engram layer, (the unique rows, the references) each step looks up, counted once
        (a step's lookups never change: the workload's hashing is fixed), in one walk of the steps."""
        missing = [layer for layer in layers if layer not in self.counts]
        if missing:
            rows = {layer: np.empty(len(self.steps), dtype=np.int64) for layer in missing}
            references = {layer: np.empty(len(self.steps), dtype=np.int64) for layer in missing}
            for i, step in enumerate(self.steps):
                found = dict(step.lookups.items())  # one read of the memo for every layer
                for layer in missing:
                    rows[layer][i], references[layer][i] = found[layer].rows.size, found[layer].references
            self.counts.update({layer: (rows[layer], references[layer]) for layer in missing})
        return {layer: self.counts[layer] for layer in layers}

    def replay(self) -> Replay:
        return Replay(self)


def schedule_for(scheduler: Scheduler, key: tuple, max_steps: int | None) -> Schedule | None:
    """The schedule of a fresh `scheduler` (`Schedule.served`), kept in its workload's
    `schedules` under `key` (`SCHEDULES_KEPT`); None when its steps depend on timing or its
    workload holds more than `SCHEDULE_TOKENS` tokens."""
    workload = scheduler.workload
    if not Schedule.timeless(scheduler) or workload.num_tokens > SCHEDULE_TOKENS:
        return None
    kept = workload.schedules
    found = kept.pop(key, None)
    if found is None:
        found = Schedule.served(scheduler, max_steps)
        if found.tokens() > SCHEDULE_TOKENS:  # recomputed tokens took it past the bound: served, not kept
            return found
    kept[key] = found  # the most recently replayed last
    while len(kept) > SCHEDULES_KEPT:
        del kept[next(iter(kept))]
    return found


class Replay:
    """A schedule's steps handed out as a `Scheduler` hands them out, for one pass: `next_step`,
    `finish_step(step, end_s)`, `view`, and at the end the request latencies in seconds."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self.ends: list[float] = []  # when each step finished, in step order
        self.output_tokens, self.prompt_tokens = schedule.output_tokens, schedule.prompt_tokens

    @property
    def done(self) -> bool:
        return len(self.ends) == len(self.schedule.steps)

    def next_arrival(self) -> float | None:
        return None

    def next_step(self, now: float) -> Step | None:
        return None if self.done else self.schedule.steps[len(self.ends)]

    def finish_step(self, step: Step, end_s: float) -> None:
        if step.index != len(self.ends):
            raise RuntimeError(f"step {step.index} is not the step in flight")
        self.ends.append(end_s)

    def view(self, step: Step, max_steps: int | None = None) -> StepView:
        """`Scheduler.view`: the steps that follow, never past `max_steps` steps in all, and the
        waiting queue while the step runs (`Schedule.queues`)."""
        steps = self.schedule.steps
        room = math.inf if max_steps is None else max_steps - step.index - 1

        def future(k: int) -> list[Step]:
            return list(steps[step.index + 1: step.index + 1 + int(max(0, min(k, room)))])

        def waiting() -> Waiting:
            return self.schedule.scheduler.waiting_at(self.schedule.queues[step.index]) if room > 0 else Waiting()

        return StepView(step, future, waiting)

    def request_metrics(self) -> RequestMetrics:
        """The schedule's step indices as the seconds those steps ended (`Scheduler.request_metrics`)."""
        ends = np.asarray(self.ends, dtype=np.float64)

        def at(indices: np.ndarray) -> np.ndarray:
            out = np.full(indices.size, math.nan)
            known = ~np.isnan(indices)
            out[known] = ends[indices[known].astype(np.int64)]
            return out

        schedule = self.schedule
        return request_metrics(schedule.scheduler.arrival_s, schedule.scheduler.output_len, at(schedule.first_token), at(schedule.finish))

    def latencies(self) -> tuple[np.ndarray, np.ndarray]:
        return self.request_metrics().defined()

    def serving(self) -> ServingCounts:
        return self.schedule.serving


Served = Scheduler | Replay
"""What drives a pass's steps: a scheduler, or a replay of the steps one served."""

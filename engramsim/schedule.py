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

A kept schedule holds its steps' token positions (and their bytes, the lookups memo's key) but
never their lookups, which stay in the workload's bounded memo (`StepLookups`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from engramsim.records import ServingCounts
from engramsim.scheduler import RequestMetrics, Scheduler, request_metrics
from engramsim.steps import Step
from engramsim.strategies import StepView, Waiting

SCHEDULE_TOKENS = 1 << 22
"""Tokens fed (recomputed ones included) a schedule may hold to be kept for later passes: its
positions and their bytes cost 16 bytes a token (64 MiB at this bound). A longer pass serves its
steps again."""


@dataclass(frozen=True)
class Schedule:
    """Every step a scheduler served, as it served them (`served`), and what it counted."""

    steps: tuple[Step, ...]
    first_token: np.ndarray  # per request: the index of the step that sampled its first token (NaN: none)
    finish: np.ndarray  # per request: the index of the step that sampled its last token (NaN: none)
    output_tokens: int
    prompt_tokens: int
    serving: ServingCounts
    arrival_s: np.ndarray
    output_len: np.ndarray
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
        while not scheduler.done and (max_steps is None or len(steps) < max_steps):
            step = scheduler.next_step(0.0)
            assert step is not None  # every request has arrived: something runs until done
            scheduler.finish_step(step, float(step.index))
            steps.append(step)
        return cls(tuple(steps), scheduler.first_token_s, scheduler.finish_s, scheduler.output_tokens, scheduler.prompt_tokens,
                   scheduler.serving(), scheduler.arrival_s, scheduler.output_len)

    def tokens(self) -> int:
        return sum(int(step.positions.size) for step in self.steps)

    def lookups(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """(the unique rows, the references) each step looks up in `layer`'s table, counted once
        (its steps' lookups never change: the workload's hashing is fixed)."""
        found = self.counts.get(layer)
        if found is None:
            lookups = [step.lookups[layer] for step in self.steps]
            found = self.counts[layer] = (np.array([lookup.rows.size for lookup in lookups], dtype=np.int64),
                                          np.array([lookup.references for lookup in lookups], dtype=np.int64))
        return found

    def replay(self) -> Replay:
        return Replay(self)


def schedule_for(scheduler: Scheduler, key: tuple, max_steps: int | None) -> Schedule | None:
    """The schedule of a fresh `scheduler` (`Schedule.served`), kept in its workload's
    `schedules` under `key` when it is small enough (`SCHEDULE_TOKENS`); None when its steps
    depend on timing."""
    if not Schedule.timeless(scheduler):
        return None
    kept = scheduler.workload.schedules
    found = kept.get(key)
    if found is None:
        found = Schedule.served(scheduler, max_steps)
        if found.tokens() <= SCHEDULE_TOKENS:
            kept[key] = found
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

    def _step(self, index: int) -> Step:
        return self.schedule.steps[index]

    def next_step(self, now: float) -> Step | None:
        return None if self.done else self._step(len(self.ends))

    def finish_step(self, step: Step, end_s: float) -> None:
        if step.index != len(self.ends):
            raise RuntimeError(f"step {step.index} is not the step in flight")
        self.ends.append(end_s)

    def view(self, step: Step, max_steps: int | None = None) -> StepView:
        """`Scheduler.view`: the steps that follow (the schedule stops at `max_steps` already); the
        waiting queue only where a scheduler's is empty (the last step), as the planner asks."""
        last = len(self.schedule.steps) - 1

        def future(k: int) -> list[Step]:
            return [self._step(i) for i in range(step.index + 1, min(step.index + 1 + max(0, k), last + 1))]

        def waiting() -> Waiting:
            if step.index != last:
                raise RuntimeError(f"a replayed schedule keeps no waiting queue (asked at step {step.index} of {last + 1})")
            return Waiting()

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
        return request_metrics(schedule.arrival_s, schedule.output_len, at(schedule.first_token), at(schedule.finish))

    def latencies(self) -> tuple[np.ndarray, np.ndarray]:
        return self.request_metrics().defined()

    def serving(self) -> ServingCounts:
        return self.schedule.serving


Served = Scheduler | Replay
"""What drives a pass's steps: a scheduler, or a replay of the steps one served."""

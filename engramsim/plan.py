"""Per-step decisions shared by every executor: which rows are in HBM, which must be fetched,
and at which block each fetch is issued. The simulator prices a plan; a real backend executes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engramsim.steps import Step
from engramsim.strategies import Cache, Placement, Prefetch, StepView, Tier


@dataclass(frozen=True)
class FetchPlan:
    """One Engram layer in one step."""

    layer: int
    rows: np.ndarray  # every unique row the step needs
    references: int
    fetch: np.ndarray  # rows to move over the link: misses, then speculative extras
    misses: int  # how many of `fetch` the step needs (the rest is speculation)
    issue_block: int  # the fetch starts when this block starts; == layer means on demand

    @property
    def rows_hbm(self) -> int:
        return int(self.rows.size - self.misses)


class Planner:
    """Applies placement, cache and prefetch to every step, in step order (caches keep state)."""

    def __init__(self, placement: Placement, cache: Cache, prefetch: Prefetch) -> None:
        self.placement, self.cache, self.prefetch = placement, cache, prefetch

    def plan(self, step: Step, view: StepView) -> dict[int, FetchPlan]:
        plans = {}
        for layer, lookup in step.lookups.items():
            rows = lookup.rows
            outside = rows[self.placement.tier_of(layer, rows) != Tier.HBM]
            misses = outside[~self.cache.lookup(layer, outside, view)]
            guess = self.prefetch.speculative_rows(layer, view)
            extra = np.setdiff1d(guess, rows) if guess.size else guess
            issue = min(max(0, int(self.prefetch.issue_layer(layer, view))), layer)
            plans[layer] = FetchPlan(layer, rows, lookup.references, np.concatenate([misses, extra]), int(misses.size), issue)
        return plans

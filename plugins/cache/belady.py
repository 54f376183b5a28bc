"""Belady/OPT with a lookahead: an oracle bound, not a policy a server could run (it reads the future).

Each step keeps, of the rows held and the step's misses, the `rows` next needed soonest within
`horizon` steps, so a miss needed later than every row it would evict is not admitted (OPT with
bypass). Rows not needed within the horizon go first, least recent first: with no known future
(requests still arriving) that is exactly LRU.
"""

from __future__ import annotations

import numpy as np
from pydantic import PositiveInt

from engramsim.plugins.cache.held import HeldRows, no_groups, reranked
from engramsim.registry import register
from engramsim.strategies import Params, StepView

NEVER = np.iinfo(np.int64).max  # next use of a row not seen within the horizon


class BeladyParams(Params):
    rows: PositiveInt  # capacity per Engram layer, in rows
    horizon: PositiveInt = 64  # steps of `StepView.future` looked at


@register("cache", "belady")
class Belady(HeldRows):
    """Oracle bound: keeps the rows next used soonest in `view.future(horizon)`, unused ones evicted first; no known future (timed arrivals): LRU."""

    Params = BeladyParams
    params: BeladyParams

    def capacity_rows(self, layer: int) -> int:
        return self.params.rows

    def _update(self, layer: int, rows: np.ndarray, hit: np.ndarray, hit_at: np.ndarray, stamps: np.ndarray, view: StepView,
                now: int) -> tuple[np.ndarray, np.ndarray]:
        return reranked(self._rows[layer], stamps, rows[~hit], now, no_groups, lambda c: self._next_use(layer, c, view),
                        self.params.rows)

    def _next_use(self, layer: int, candidates: np.ndarray, view: StepView) -> np.ndarray:
        """Steps until each candidate is next needed (NEVER if not within the horizon)."""
        future = [s.lookups[layer].rows for s in view.future(self.params.horizon)]
        if not future:
            return np.full(candidates.size, NEVER, dtype=np.int64)
        needed = np.concatenate(future)
        distance = np.repeat(np.arange(1, len(future) + 1, dtype=np.int64), [f.size for f in future])
        seen, first = np.unique(needed, return_index=True)
        at = np.minimum(np.searchsorted(seen, candidates), max(seen.size - 1, 0))
        found = seen[at] == candidates if seen.size else np.zeros(candidates.size, dtype=bool)
        return np.where(found, distance[first[at]] if seen.size else NEVER, NEVER)

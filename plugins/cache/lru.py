"""LRU: each Engram layer's HBM cache keeps the rows used most recently."""

from __future__ import annotations

import numpy as np
from pydantic import PositiveInt

from engramsim.plugins.cache.held import HeldRows, merged, oldest
from engramsim.registry import register
from engramsim.strategies import Params, StepView


class LRUParams(Params):
    rows: PositiveInt  # capacity per Engram layer, in rows


@register("cache", "lru")
class LRU(HeldRows):
    """Least recently used rows are evicted first (ties: lowest row); a step's misses beyond the capacity are admitted lowest row first."""

    Params = LRUParams
    params: LRUParams

    def capacity_rows(self, layer: int) -> int:
        return self.params.rows

    def _update(self, layer: int, rows: np.ndarray, hit: np.ndarray, hit_at: np.ndarray, stamps: np.ndarray, view: StepView,
                now: int) -> tuple[np.ndarray, np.ndarray]:
        held = self._rows[layer]
        misses = rows[~hit]
        cap = self.params.rows
        misses = misses[: cap - hit_at.size]  # hits are the most recent: they stay
        over = held.size + misses.size - cap
        return merged(held, stamps, ~oldest(stamps, over) if over > 0 else None, misses, now)

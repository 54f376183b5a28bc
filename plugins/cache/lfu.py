"""LFU with aging: each Engram layer's HBM cache keeps the rows used most often, recent uses weighing more."""

from __future__ import annotations

import numpy as np
from pydantic import Field, PositiveInt

from engramsim.plugins.cache.held import EMPTY, HeldRows, merged
from engramsim.registry import register
from engramsim.strategies import Params, SetupContext, StepView


class LFUParams(Params):
    rows: PositiveInt  # capacity per Engram layer, in rows
    decay: float = Field(default=1.0, gt=0.0, le=1.0)  # every lookup multiplies the counts by this (1: plain LFU)


@register("cache", "lfu")
class LFU(HeldRows):
    """Evicts the lowest count (counts decay by `decay` each step, a use adds 1), ties by least recent, then lowest row."""

    Params = LFUParams
    params: LFUParams

    def __init__(self, params: LFUParams, setup: SetupContext) -> None:
        super().__init__(params, setup)
        self._counts = {layer: EMPTY.astype(np.float64) for layer in setup.tables}

    def capacity_rows(self, layer: int) -> int:
        return self.params.rows

    def _update(self, layer: int, rows: np.ndarray, hit: np.ndarray, hit_at: np.ndarray, stamps: np.ndarray, view: StepView,
                now: int) -> tuple[np.ndarray, np.ndarray]:
        held = self._rows[layer]
        counts = self._counts[layer] * self.params.decay
        counts[hit_at] += 1.0
        misses = rows[~hit][: self.params.rows - hit_at.size]  # a hit is never evicted by its own step's misses
        over = held.size + misses.size - self.params.rows
        keep = None
        if over > 0:
            cold = np.flatnonzero(stamps < now)
            order = np.lexsort((held[cold], stamps[cold], counts[cold]))
            keep = np.ones(held.size, dtype=bool)
            keep[cold[order[:over]]] = False
        kept, kept_stamps = merged(held, stamps, keep, misses, now)
        self._counts[layer] = merged(held, counts, keep, misses, 1.0)[1]
        return kept, kept_stamps

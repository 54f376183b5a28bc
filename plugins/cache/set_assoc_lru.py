"""Set-associative LRU, like FBGEMM's UVM cache: row r may only sit in set r % sets, of `ways` slots."""

from __future__ import annotations

import numpy as np
from pydantic import PositiveInt

from engramsim.plugins.cache.held import HeldRows, ranked
from engramsim.registry import register
from engramsim.strategies import Params, StepView


class SetAssocLRUParams(Params):
    sets: PositiveInt
    ways: PositiveInt  # slots per set; capacity per Engram layer = sets * ways rows


@register("cache", "set-assoc-lru")
class SetAssocLRU(HeldRows):
    """LRU within each set of `ways` rows (row r in set r % sets), lowest row evicted on ties, a set's excess misses admitted lowest first."""

    Params = SetAssocLRUParams
    params: SetAssocLRUParams

    def capacity_rows(self, layer: int) -> int:
        return self.params.sets * self.params.ways

    def _update(self, layer: int, rows: np.ndarray, hit: np.ndarray, hit_at: np.ndarray, view: StepView, now: int) -> tuple[np.ndarray, np.ndarray]:
        held, stamps = self._rows[layer], self._stamps[layer].copy()
        stamps[hit_at] = now
        candidates = np.concatenate([held, rows[~hit]])
        all_stamps = np.concatenate([stamps, np.full(candidates.size - held.size, now, dtype=np.int64)])
        was_held = np.arange(candidates.size) < held.size
        keep = ranked(candidates, all_stamps, was_held, candidates % self.params.sets, np.zeros(candidates.size, dtype=np.int64), self.params.ways)
        order = np.argsort(candidates[keep], kind="stable")
        return candidates[keep][order], all_stamps[keep][order]

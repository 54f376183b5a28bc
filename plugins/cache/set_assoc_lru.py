"""Set-associative LRU, like FBGEMM's UVM cache: row r may only sit in set r % sets, of `ways` slots."""

from __future__ import annotations

import numpy as np
from pydantic import PositiveInt

from engramsim.plugins.cache.held import HeldRows, no_groups, reranked
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

    def _update(self, layer: int, rows: np.ndarray, hit: np.ndarray, hit_at: np.ndarray, stamps: np.ndarray, view: StepView,
                now: int) -> tuple[np.ndarray, np.ndarray]:
        return reranked(self._rows[layer], stamps, rows[~hit], now, lambda c: c % self.params.sets, no_groups, self.params.ways)

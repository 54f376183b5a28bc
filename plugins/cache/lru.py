"""LRU: each Engram layer's HBM cache keeps the rows used most recently (shared: one cache for
all layers' rows, the least recent of any layer evicted first)."""

from __future__ import annotations

import numpy as np

from engramsim.plugins.cache.held import EMPTY, Recency, SharedCapacityParams, TableRows
from engramsim.registry import register
from engramsim.strategies import CacheLookup, SetupContext, StepView


class LRUParams(SharedCapacityParams):
    """`rows` or `bytes` per Engram layer, or for all of them (`shared`)."""


@register("cache", "lru")
class LRU(TableRows):
    """Least recently used rows are evicted first (ties: lowest row); a step's misses beyond the capacity are admitted lowest row first."""

    Params = LRUParams
    params: LRUParams

    def __init__(self, params: LRUParams, setup: SetupContext) -> None:
        super().__init__(params, setup)
        self._recency = {self._group[layer]: Recency(table, log_limit=self._capacity[layer]) for layer, table in self._tables.items()}

    def _lookup(self, layer: int, rows: np.ndarray, view: StepView, now: int) -> CacheLookup:
        table, recency, capacity = self._tables[layer], self._recency[self._group[layer]], self._capacity[layer]
        hit, at, admit = table.find(rows)
        misses = admit.size
        room = capacity - (rows.size - misses)  # hits are the most recent: they stay
        if misses > room:
            admit = admit[:room]
        over = table.live + admit.size - capacity
        recency.stamp_hits(now, at, hit, evicting=over > 0)
        evicted = EMPTY
        if over > 0:
            evicted, gone = recency.pop(over)
            table.remove(gone)
            evicted = np.sort(evicted)
        table.insert(rows[admit], at[admit], now if recency.stamping else None)
        if admit.size == misses:
            recency.push(now, rows)
        else:
            used = hit.copy()
            used[admit] = True
            recency.push(now, rows[used])
        return CacheLookup(hit, admit, evicted)

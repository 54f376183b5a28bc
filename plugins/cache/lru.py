"""LRU: each Engram layer's HBM cache keeps the rows used most recently."""

from __future__ import annotations

import numpy as np
from pydantic import PositiveInt

from engramsim.plugins.cache.held import EMPTY, Recency, TableRows
from engramsim.registry import register
from engramsim.strategies import CacheLookup, Params, SetupContext, StepView


class LRUParams(Params):
    rows: PositiveInt  # capacity per Engram layer, in rows


@register("cache", "lru")
class LRU(TableRows):
    """Least recently used rows are evicted first (ties: lowest row); a step's misses beyond the capacity are admitted lowest row first."""

    Params = LRUParams
    params: LRUParams

    def __init__(self, params: LRUParams, setup: SetupContext) -> None:
        super().__init__(params, setup)
        self._recency = {layer: Recency(table, log_limit=params.rows) for layer, table in self._tables.items()}

    def capacity_rows(self, layer: int) -> int:
        return self.params.rows

    def _lookup(self, layer: int, rows: np.ndarray, view: StepView, now: int) -> CacheLookup:
        table, recency = self._tables[layer], self._recency[layer]
        hit, at, admit = table.find(rows)
        misses = admit.size
        room = self.params.rows - (rows.size - misses)  # hits are the most recent: they stay
        if misses > room:
            admit = admit[:room]
        over = table.live + admit.size - self.params.rows
        if recency.stamping:
            table.stamps[at[hit]] = now
        elif over > 0:
            recency.start(now, at[hit])
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

"""LFU with aging: each Engram layer's HBM cache keeps the rows used most often, recent uses weighing more.

Aging without touching every row each step: a row's count is kept scaled by decay^-now, so a use
at lookup t adds decay^-t and the rows no lookup touches keep their order; only the ratio matters
for eviction. The scale is brought back (exactly, by a power of two) before it could overflow.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from engramsim.plugins.cache import held
from engramsim.plugins.cache.held import EMPTY, SharedCapacityParams, TableRows
from engramsim.plugins.cache.rowtable import RowTable
from engramsim.registry import register
from engramsim.strategies import CacheLookup, SetupContext, StepView

RESCALE_ABOVE = 2.0**600  # an increment past this divides every count by it (exact: a power of two)


class LFUParams(SharedCapacityParams):  # `rows` or `bytes` per Engram layer, or for all of them (`shared`)
    decay: float = Field(default=1.0, gt=0.0, le=1.0)  # every lookup multiplies the counts by this (1: plain LFU)


@register("cache", "lfu")
class LFU(TableRows):
    """Evicts the lowest count (counts decay by `decay` each step, a use adds 1), ties by least recent, then lowest row."""

    Params = LFUParams
    params: LFUParams
    counts = True

    def __init__(self, params: LFUParams, setup: SetupContext) -> None:
        super().__init__(params, setup)
        self._increment = dict.fromkeys(self._clock, 1.0)  # what a use adds now: decay^-now, rescaled (by group: layer, or SHARED)
        self._order: dict[int, Frequency] = {}  # built when a group's cache first evicts

    def _lookup(self, layer: int, rows: np.ndarray, view: StepView, now: int) -> CacheLookup:
        group, capacity = self._group[layer], self._capacity[layer]
        table, order = self._tables[layer], self._order.get(group)
        inc = self._increment[group] = self._increment[group] / self.params.decay
        if inc > RESCALE_ABOVE:
            inc = self._increment[group] = inc / RESCALE_ABOVE
            table.counts /= RESCALE_ABOVE
            if order is not None:
                order.rescale(RESCALE_ABOVE)
        hit, at, missed = table.find(rows)
        hit_at = at[hit]
        table.counts[hit_at] += inc
        table.stamps[hit_at] = now
        hit_counts = table.counts[hit_at]
        admit = missed[: capacity - hit_at.size]  # a hit is never evicted by its own step's misses
        over = table.live + admit.size - capacity
        evicted = EMPTY
        if over > 0:
            if order is None:
                order = self._order[group] = Frequency(table, before=now)
            evicted, gone = order.pop(over)
            table.remove(gone)
            evicted = np.sort(evicted)
        table.insert(rows[admit], at[admit], now, inc)
        if order is not None:
            order.push(now, np.concatenate([rows[hit], rows[admit]]), np.concatenate([hit_counts, np.full(admit.size, inc)]))
        return CacheLookup(hit, admit, evicted)


Run = tuple[np.ndarray, np.ndarray, np.ndarray]  # counts, stamps, rows: sorted by (count, stamp, row)


class Frequency:
    """A table's held rows by (count, stamp, row), lowest first, built from the table when a cache
    first evicts, then kept by pushing each lookup's used rows with their new counts.

    A few sorted runs, each at least twice the size of the next (a log-structured merge: each
    entry is merged O(log rows) times). An entry whose row was used again or evicted since no
    longer matches the table's stamp and is dropped when reached or merged (lazy deletion).
    """

    def __init__(self, table: RowTable, before: int) -> None:
        """The order of the table's rows last used before stamp `before` (a lookup's own uses are pushed after it)."""
        self._table = table
        at = table.held()
        at = at[table.stamps[at] < before]
        self._runs: list[Run] = []
        self._entries = 0
        self._add(table.counts[at], table.stamps[at], table.keys[at].astype(np.int64))

    def push(self, stamp: int, rows: np.ndarray, counts: np.ndarray) -> None:
        self._add(counts, np.full(rows.size, stamp, dtype=np.int64), rows)
        if self._entries > 4 * self._table.live + held.COMPACT_SLACK:
            self._merge(0)

    def rescale(self, divisor: float) -> None:
        self._runs = [(counts / divisor, stamps, rows) for counts, stamps, rows in self._runs]

    def pop(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, positions) of the `count` held rows lowest by (count, stamp, row): the first
        `count` current entries of each run, ranked together. Each run's leading entries that are
        no longer current (used again, or evicted by an earlier pop) are dropped on the way."""
        found = []
        for i in range(len(self._runs)):
            counts, stamps, rows = self._runs[i]
            start = taken = 0
            while taken < count and start < rows.size:
                stop = start + max(2 * count, 256)
                at, current = self._current(stamps[start:stop], rows[start:stop])
                index = np.flatnonzero(current)
                if start == 0 and (lead := int(index[0]) if index.size else current.size):
                    counts, stamps, rows = self._runs[i] = (counts[lead:], stamps[lead:], rows[lead:])
                    self._entries -= lead
                    at, index, stop = at[lead:], index - lead, stop - lead
                index = index[: count - taken]
                found.append((counts[start + index], stamps[start + index], rows[start + index], at[index]))
                taken += index.size
                start = stop
        self._runs = [run for run in self._runs if run[2].size]
        if not found:
            return EMPTY, EMPTY
        counts, stamps, rows, at = (np.concatenate(column) for column in zip(*found, strict=True))
        best = np.lexsort((rows, stamps, counts))[:count]
        return rows[best], at[best]

    def _current(self, stamps: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions, mask) of entries: where each row is held, and whether the entry is still
        current (the row held, last used at the entry's stamp)."""
        current, at, _ = self._table.find(rows)
        current[current] = self._table.stamps[at[current]] == stamps[current]
        return at, current

    def _add(self, counts: np.ndarray, stamps: np.ndarray, rows: np.ndarray) -> None:
        if rows.size:
            order = np.lexsort((rows, counts) if (stamps == stamps[0]).all() else (rows, stamps, counts))
            self._runs.append((counts[order], stamps[order], rows[order]))
            self._entries += rows.size
        while len(self._runs) >= 2 and self._runs[-2][0].size <= 2 * self._runs[-1][0].size:
            self._merge(len(self._runs) - 2)

    def _merge(self, first: int) -> None:
        """Merge the runs from `first` on into one, keeping only current entries."""
        counts, stamps, rows = (np.concatenate(column) for column in zip(*self._runs[first:], strict=True))
        _, current = self._current(stamps, rows)
        counts, stamps, rows = counts[current], stamps[current], rows[current]
        order = np.lexsort(((stamps << 32) | rows, counts) if rows.size and rows.max() < 2**32 and stamps.max() < 2**31 else (rows, stamps, counts))
        self._entries -= sum(run[2].size for run in self._runs[first:]) - rows.size
        self._runs[first:] = [(counts[order], stamps[order], rows[order])] if rows.size else []

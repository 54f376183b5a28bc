"""Set-associative LRU, like FBGEMM's UVM cache: row r may only sit in set r % sets, of `ways` slots
(shared by all Engram layers: one sets x ways array, a layer's row keyed by its offset, see
`TableRows.keys`)."""

from __future__ import annotations

import numpy as np
from pydantic import Field, PositiveInt

from engramsim.plugins.cache.held import EMPTY, TableRows
from engramsim.plugins.cache.rowtable import RowTable
from engramsim.registry import register
from engramsim.strategies import CacheLookup, Params, SetupContext, StepView


class SetAssocLRUParams(Params):
    sets: PositiveInt
    ways: PositiveInt  # slots per set; capacity per Engram layer = sets * ways rows
    shared: bool = Field(default=False, description="one sets x ways cache for all Engram layers together")


@register("cache", "set-assoc-lru")
class SetAssocLRU(TableRows):
    """LRU within each set of `ways` rows (row r in set r % sets), lowest row evicted on ties, a set's excess misses admitted lowest first.

    Rows are found and stamped in the layer's `RowTable`; a sets x ways array holds, packed at the
    front of each set, the table positions of the set's rows, and is touched only for the sets a
    miss maps to. A set with room takes all its misses; only a set that overflows is ranked: a
    lookup costs O(rows looked up + ways x overflowing sets).
    """

    Params = SetAssocLRUParams
    params: SetAssocLRUParams
    positions = True

    def __init__(self, params: SetAssocLRUParams, setup: SetupContext) -> None:
        super().__init__(params, setup)
        shape = (params.sets, params.ways)  # zeros: pages of sets never used are never touched
        groups = set(self._group.values())
        self._ways = {group: np.zeros(shape, dtype=np.int64) for group in groups}  # table position + 1 in each way, 0: empty
        self._fill = {group: np.zeros(params.sets, dtype=np.int64) for group in groups}  # rows held per set

    def capacity_rows(self, layer: int) -> int:
        return self.params.sets * self.params.ways

    def _lookup(self, layer: int, rows: np.ndarray, view: StepView, now: int) -> CacheLookup:
        table, ways, fill = self._tables[layer], self._ways[self._group[layer]], self._fill[self._group[layer]]
        hit, at, missed = table.find(rows)
        table.stamps[at[hit]] = now
        if not missed.size:
            return CacheLookup(hit, EMPTY, EMPTY)
        home = rows[missed] % self.params.sets
        order = np.argsort(home, kind="stable")  # by set, each set's misses lowest row first
        missed, home = missed[order], home[order]
        first = np.concatenate([[0], np.flatnonzero(np.diff(home)) + 1])
        count = np.diff(np.append(first, home.size))
        fits = np.repeat(fill[home[first]] + count <= self.params.ways, count)
        way = fill[home] + np.arange(home.size) - np.repeat(first, count)  # after the set's rows
        fill[home[first]] += count
        admit, evicted = missed[fits], EMPTY
        admit_set, admit_way = home[fits], way[fits]
        if not fits.all():
            kept, kept_set, kept_way, evicted, gone = self._overflow(table, ways, fill, rows, missed[~fits], home[~fits], now)
            table.remove(gone)
            admit, admit_set, admit_way = np.concatenate([admit, kept]), np.concatenate([admit_set, kept_set]), np.concatenate([admit_way, kept_way])
        order = np.argsort(admit)  # back in the order of the rows looked up
        admit, admit_set, admit_way = admit[order], admit_set[order], admit_way[order]
        landed = table.insert(rows[admit], at[admit], now)
        if table.moved is not None:  # the table was rebuilt: every position moved
            ways[:] = np.where(ways > 0, table.moved[ways - 1] + 1, 0)
            table.moved = None
        ways[admit_set, admit_way] = landed + 1
        return CacheLookup(hit, admit, evicted)

    def _overflow(self, table: RowTable, ways: np.ndarray, fill: np.ndarray, rows: np.ndarray, missed: np.ndarray, home: np.ndarray,
                  now: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The sets without room for their misses (`home`, sorted, each set's misses lowest row
        first) keep `ways` rows each, ranked by: most recent stamp, held before new, then held:
        highest row, new: lowest row. So a set keeps its hits, then its misses, then its other rows
        least old first; only its ways x rows held are sorted. Kept rows held are packed at the
        front of the set, kept misses follow. (kept misses as indices into `rows`, their sets and
        ways; rows evicted, sorted; their positions)"""
        first = np.concatenate([[0], np.flatnonzero(np.diff(home)) + 1])
        count = np.diff(np.append(first, home.size))
        touched = home[first]
        current = ways[touched]  # table positions + 1, packed
        occupied = current > 0
        at = np.where(occupied, current - 1, 0)
        held_rows = table.keys[at].astype(np.int64)
        age = np.where(occupied, now - table.stamps[at], np.iinfo(np.int64).max)  # this lookup's hits: 0
        order = np.lexsort((-held_rows, age), axis=-1)  # per set: the rows to keep first
        held = occupied.sum(axis=1)
        stay = np.minimum(held, np.maximum((age == 0).sum(axis=1), self.params.ways - count))
        column = np.arange(self.params.ways)
        ranked = np.take_along_axis(current, order, axis=-1)
        gone = ranked[(column >= stay[:, None]) & (column < held[:, None])] - 1
        ways[touched] = np.where(column < stay[:, None], ranked, 0)
        fill[touched] = self.params.ways
        rank = np.arange(home.size) - np.repeat(first, count)
        after = np.repeat(stay, count)  # the first way after the set's rows held
        kept = rank < self.params.ways - after
        gone_rows = table.keys[gone].astype(np.int64)
        by_row = np.argsort(gone_rows)
        return missed[kept], home[kept], (after + rank)[kept], gone_rows[by_row], gone[by_row]

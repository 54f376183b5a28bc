"""The rows a cache holds, as a hash table: every operation works on a batch of rows and costs
O(batch), never O(rows held), so a cache of millions of rows stays cheap per step.

Open addressing with linear probing over a power-of-two array of keys (the row ids), a
multiplicative (Fibonacci) hash, and columns beside the keys: each held row's stamp (the lookup
that last used it) and, for LFU, its count. Keys are int32 when the table's rows fit. An evicted
row leaves a tombstone; when rows and tombstones fill half the slots the table is rebuilt
without tombstones at most a quarter full (in one vectorised pass: rows sorted by hash land at a
running maximum), O(rows held) once per at least as many insertions. At most half full, a
probe reads 1.5 slots on average for a row held and 2.5 for one missing (Knuth's linear-probing
estimates), mostly within one cache line. Finding and inserting a batch are compiled loops (probe.py).
"""

from __future__ import annotations

from functools import cache
from types import ModuleType

import numpy as np

EMPTY = -1  # a slot never used since the last rebuild: a probe stops here
GONE = -2  # a tombstone: the row there was evicted; a probe goes on past it
MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio
_MIN_BITS = 10
_FIRST_ROWS = 1 << 20  # a table starts with room for its capacity's rows, or for this many if fewer
_MAX_LOAD = 0.5  # rows held and tombstones, as a fraction of the slots, before a rebuild (short probes)
_REBUILT_LOAD = 0.25  # ... and the rows held after it


@cache
def _probe() -> ModuleType:
    """The compiled probes, imported (and compiled, the first time on a machine) on first use."""
    from engramsim.plugins.cache import probe
    return probe


class RowTable:
    """Rows held, each at a position (stable until the next rebuild), with a stamp and, if asked
    for, a count."""

    def __init__(self, table_rows: int, capacity: int, counts: bool = False, track_moves: bool = False) -> None:
        """`table_rows`: the rows of the Engram table (keys are int32 when they fit: half the
        memory traffic); `capacity`: the most rows the cache will hold; `track_moves`: a rebuild
        says where each row went (`moved`), for a caller that keeps positions."""
        self.live = 0  # rows held
        self._with_counts = counts
        self._track_moves = track_moves
        self._key_type = np.int32 if table_rows < 2**31 else np.int64
        self._allocate(self._bits_for(min(capacity, _FIRST_ROWS)))

    @staticmethod
    def _bits_for(rows: int) -> int:
        """The size (a power of two) of a table that a rebuild leaves with `rows` rows."""
        bits = _MIN_BITS
        while rows > _REBUILT_LOAD * (1 << bits):
            bits += 1
        return bits

    def _allocate(self, bits: int) -> None:
        size = 1 << bits
        self.keys: np.ndarray = np.full(size, EMPTY, dtype=self._key_type)
        self.stamps = np.zeros(size, dtype=np.int64)  # zeros: pages are touched only as rows land
        self.counts = np.zeros(size if self._with_counts else 0, dtype=np.float64)
        self.live = 0
        self._used = 0  # slots not EMPTY: rows held and tombstones
        self.moved: np.ndarray | None = None  # set by a rebuild: old position -> new one
        self._mask = np.int64(size - 1)
        self._shift = np.uint64(64 - bits)

    def _hash(self, rows: np.ndarray) -> np.ndarray:
        h = (rows.view(np.uint64) if rows.dtype == np.int64 and rows.flags.c_contiguous else rows.astype(np.uint64)) * MULTIPLIER
        h >>= self._shift
        return h.view(np.int64)

    def find(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mask of the rows held; where each probe stopped: a held row's position, else an EMPTY
        slot, where `insert` may start; the indices of the rows not held)."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        held, at, missing = np.empty(rows.size, dtype=bool), np.empty(rows.size, dtype=np.int64), np.empty(rows.size, dtype=np.int64)
        count = _probe().find(self.keys, rows, self._shift, self._mask, held, at, missing)
        return held, at, missing[:count]

    def insert(self, rows: np.ndarray, start: np.ndarray | None, stamp: int | None, count: float = 0.0) -> np.ndarray:
        """Add `rows` (unique, none held) with this stamp (None: leave the stamps alone) and
        count; their positions. `start`: where `find` stopped for them, with nothing inserted
        since (None: hash them)."""
        n = rows.size
        if not n:
            return np.empty(0, dtype=np.int64)
        if self._used + n > _MAX_LOAD * self.keys.size:
            self._rebuild(self.live + n)
            start = None
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        at = np.empty(n, dtype=np.int64)
        hashed = start is None
        self._used += _probe().insert(self.keys, rows, at if hashed else np.ascontiguousarray(start, dtype=np.int64), hashed,
                                      self._shift, self._mask, at)
        self._land(at, stamp, count)
        return at

    def _land(self, at: np.ndarray, stamp: int | None, count: float) -> None:
        if stamp is not None:
            self.stamps[at] = stamp
        if self._with_counts:
            self.counts[at] = count
        self.live += at.size

    def remove(self, positions: np.ndarray) -> None:
        """Evict the rows at these positions (from `find`, since the last `insert`)."""
        self.keys[positions] = GONE
        self.live -= positions.size

    def held(self) -> np.ndarray:
        """Positions of every row held, in table order: O(table size)."""
        return np.flatnonzero(self.keys >= 0)

    def _rebuild(self, rows_needed: int) -> None:
        """A fresh array, without tombstones, at most a quarter full with `rows_needed` rows.
        `moved` maps each old position to the new one (-1: none) until the caller takes it."""
        held = self.held()
        moved = np.full(self.keys.size if self._track_moves else 0, -1, dtype=np.int64)
        rows, stamps = self.keys[held], self.stamps[held]
        counts = self.counts[held] if self._with_counts else None
        self._allocate(self._bits_for(rows_needed))
        if rows.size:
            # Into an empty array, rows in order of their hash land at a running maximum: each at
            # its hash, or just after the row before it. The old array's order is nearly that order
            # (the hash is the product's top bits), so the sort is nearly linear; no probing rounds.
            h = self._hash(rows)
            order = np.argsort(h, kind="stable")
            h = h[order]
            rank = np.arange(h.size)
            at = np.maximum.accumulate(h - rank) + rank
            fits = at <= self._mask
            placed, at = order[fits], at[fits]
            self.keys[at] = rows[placed]
            self.live = self._used = at.size
            if not fits.all():  # past the end: probe on from the start
                wrap = order[~fits]
                placed, at = np.concatenate([placed, wrap]), np.concatenate([at, self.insert(rows[wrap], None, None)])
            self.stamps[at] = stamps[placed]
            if counts is not None:
                self.counts[at] = counts[placed]
            if self._track_moves:
                moved[held[placed]] = at
        if self._track_moves:
            self.moved = moved

"""Shared state of the row caches: per Engram layer, the rows held in a `RowTable` (each with the
lookup that last used it), and the recency order the LRU-like caches evict from.

Every lookup costs O(rows looked up + rows evicted), never O(rows held): the caches report what
each lookup admitted and evicted (`Cache.lookup_changes`), so the planner's checks need not
diff the contents either.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np
from pydantic import Field, PositiveInt, ValidationInfo, field_validator

from engramsim.errors import InputError
from engramsim.plugins.cache.rowtable import RowTable
from engramsim.strategies import Cache, CacheLookup, Params, SetupContext, StepView, _BaseParams

EMPTY = np.empty(0, dtype=np.int64)
EMPTY.flags.writeable = False
COMPACT_SLACK = 65536  # an order structure is compacted past 2 x rows held + this many entries
SHARED = -1  # the key of a shared cache's one clock and order structures


class CapacityParams(Params):
    """A cache's capacity: exactly one of `rows` and `bytes` (floor(bytes / the layer's row bytes) rows)."""

    bytes: PositiveInt | None = Field(default=None, description="capacity per Engram layer, in bytes (whole rows of the layer's table)")
    rows: PositiveInt | None = Field(default=None, le=1 << 40, validate_default=True, description="capacity per Engram layer, in rows")

    @field_validator("rows", mode="after")
    @classmethod
    def _one_capacity(cls, rows: int | None, info: ValidationInfo) -> int | None:
        """Checked on `rows` (declared after `bytes`, so the error names the field a reader fixes)."""
        if "bytes" not in info.data:  # bytes itself was refused
            return rows
        if (rows is None) == (info.data["bytes"] is None):
            raise ValueError("give the capacity as exactly one of `rows` and `bytes`")
        return rows


class SharedCapacityParams(CapacityParams):
    """`CapacityParams`, or with `shared` one capacity for all Engram layers together."""

    shared: bool = Field(default=False, description="one capacity for all Engram layers together (bytes: in the widest layer's rows)")


def capacity_rows_of(params: CapacityParams, setup: SetupContext) -> dict[int, int]:
    """Each layer's capacity in rows: `rows`, or `bytes` in whole rows of the layer's table (of the
    widest layer's, shared); under one row is refused naming the field."""
    if params.rows is not None:
        return dict.fromkeys(setup.tables, params.rows)
    assert params.bytes is not None
    if getattr(params, "shared", False):
        widest = max((t.row_bytes for t in setup.tables.values()), default=1)
        rows = dict.fromkeys(setup.tables, params.bytes // widest)
    else:
        rows = {layer: params.bytes // t.row_bytes for layer, t in setup.tables.items()}
    if rows and min(rows.values()) < 1:
        widest = max(t.row_bytes for t in setup.tables.values())
        raise InputError("scenario", f"{params.bytes} bytes hold no row of {widest} bytes", field="strategies.cache.params.bytes")
    return rows


class HeldRows(Cache):
    """Base of the built-in caches: `lookup_changes` per layer with its own clock (one tick per
    lookup); `lookup` is its hit mask. The rows handed to a lookup may be kept without a copy
    (`Recency`'s log): callers must not change them afterwards (the planner never does)."""

    def __init__(self, params: _BaseParams, setup: SetupContext) -> None:
        super().__init__(params, setup)
        self.shared = bool(getattr(params, "shared", False))
        self._capacity = capacity_rows_of(params, setup) if isinstance(params, CapacityParams) else {}
        self._group = {layer: SHARED if self.shared else layer for layer in setup.tables}  # key of the layer's clock and order
        self._clock = dict.fromkeys(self._group.values(), 0)

    def capacity_rows(self, layer: int) -> int:
        return self._capacity[layer]

    def lookup(self, layer: int, rows: np.ndarray, view: StepView) -> np.ndarray:
        return self.lookup_changes(layer, rows, view).hit

    def lookup_changes(self, layer: int, rows: np.ndarray, view: StepView) -> CacheLookup:
        group = self._group[layer]
        self._clock[group] += 1
        return self._lookup(layer, np.ascontiguousarray(rows, dtype=np.int64), view, self._clock[group])

    def _lookup(self, layer: int, rows: np.ndarray, view: StepView, now: int) -> CacheLookup:
        raise NotImplementedError


class TableRows(HeldRows):
    """A fully associative cache on a `RowTable` per layer (with a count per row if `counts`)."""

    counts = False  # a count per row (LFU)
    positions = False  # the cache keeps rows' positions in the table (set-associative)

    def __init__(self, params: _BaseParams, setup: SetupContext) -> None:
        super().__init__(params, setup)
        if not self.shared:
            self._tables = {layer: RowTable(table.rows, self.capacity_rows(layer), self.counts, self.positions)
                            for layer, table in setup.tables.items()}
            return
        # shared: one table of keys layer index x stride + row, so one order ranks every layer's rows
        layers = sorted(setup.tables)
        self._stride = max((t.rows for t in setup.tables.values()), default=1)
        self._offset = {layer: i * self._stride for i, layer in enumerate(layers)}
        self._layer_at = np.array(layers, dtype=np.int64)
        self._live = dict.fromkeys(layers, 0)
        one = RowTable(len(layers) * self._stride, max((self.capacity_rows(layer) for layer in layers), default=0), self.counts,
                       self.positions)
        self._tables = dict.fromkeys(layers, one)

    def keys(self, layer: int, rows: np.ndarray) -> np.ndarray:
        """The table's keys of a layer's rows: the rows, or (shared) offset by the layer's index x stride."""
        return np.asarray(rows, dtype=np.int64) + self._offset[layer] if self.shared else rows

    def lookup_changes(self, layer: int, rows: np.ndarray, view: StepView) -> CacheLookup:
        if not self.shared:
            return super().lookup_changes(layer, rows, view)
        found = super().lookup_changes(layer, self.keys(layer, rows), view)
        self._live[layer] += found.admitted.size
        evicted, here, elsewhere = found.evicted, EMPTY, {}
        if evicted.size:
            index = evicted // self._stride
            cuts = np.flatnonzero(np.diff(index)) + 1  # evicted keys are sorted: each layer's rows are one run
            for part in np.split(evicted, cuts):
                other = int(self._layer_at[part[0] // self._stride])
                part = part - self._offset[other]
                self._live[other] -= part.size
                if other == layer:
                    here = part
                else:
                    elsewhere[other] = part
        return CacheLookup(found.hit, found.admitted, here, elsewhere)

    def contents(self, layer: int) -> np.ndarray:
        table = self._tables[layer]
        keys = table.keys[table.held()].astype(np.int64)
        if self.shared:
            keys = keys[keys // self._stride == self._offset[layer] // self._stride] - self._offset[layer]
        return np.sort(keys)

    def size(self, layer: int) -> int:
        return self._live[layer] if self.shared else self._tables[layer].live

    def holds(self, layer: int, rows: np.ndarray) -> np.ndarray:
        return self._tables[layer].find(self.keys(layer, rows))[0]


class Recency:
    """A table's held rows from least to most recently used (ties: lowest row first).

    Until the cache first evicts nothing needs the order, so the cache writes no stamps for its
    hits and this only logs each lookup's used rows (references, no copies); the log is replayed
    into the table's stamps when it outgrows `log_limit` rows and when the cache first evicts
    (`start`), which also builds the queue from the table. From then on the cache stamps its hits
    (`stamping`) and each lookup's used rows are pushed onto the queue: one sorted array of rows
    per stamp, oldest first. An entry whose row was used again or evicted since no longer matches
    the table's stamp and is dropped when reached (lazy deletion); the queue is compacted when
    such entries outnumber the rows held.
    """

    def __init__(self, table: RowTable, log_limit: int) -> None:
        self._table = table
        self._log_limit = log_limit
        self._log: list[tuple[int, np.ndarray]] = []
        self._queue: deque[tuple[int, np.ndarray]] | None = None
        self._entries = 0  # rows in the log, or in the queue

    @property
    def stamping(self) -> bool:
        """Whether the cache stamps its hits (it has evicted)."""
        return self._queue is not None

    def stamp_hits(self, now: int, at: np.ndarray, hit: np.ndarray, evicting: bool) -> None:
        """The lookup at stamp `now` found its rows at `at`, held where `hit`: stamp the hits if the
        cache already stamps, or `start` stamping now if this lookup is the first to evict; else
        only the log (`push`) records them, and the hits' positions are never gathered."""
        if self.stamping:
            self._table.stamps[at[hit]] = now
        elif evicting:
            self.start(now, at[hit])

    def start(self, now: int, hits_at: np.ndarray) -> None:
        """Before the first eviction, in the lookup at stamp `now` whose hits sit at `hits_at`:
        replay the log, stamp the hits, and queue the rows used before `now`."""
        self._replay()
        self._table.stamps[hits_at] = now
        self._build(before=now)

    def push(self, stamp: int, rows: np.ndarray) -> None:
        """`rows` (sorted; left unchanged by the caller) were used by the lookup at `stamp`, the latest so far."""
        if not rows.size:
            return
        self._entries += rows.size
        if self._queue is None:
            self._log.append((stamp, rows))
            if self._entries > self._log_limit:
                self._replay()
            return
        self._queue.append((stamp, rows))
        if self._entries > 2 * self._table.live + COMPACT_SLACK:
            self._compact()

    def _replay(self) -> None:
        table = self._table
        for stamp, rows in self._log:
            held, at, _ = table.find(rows)
            table.stamps[at[held]] = stamp
        self._log, self._entries = [], 0

    def pop(self, count: int, protected: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(rows, positions) of the `count` least recently used rows held, or all of them if fewer;
        rows `protected` (a mask of a sorted array) are skipped and keep their place."""
        table, queue, taken_rows, taken_at = self._table, self._queue, [], []
        assert queue is not None, "pop before start"
        kept: list[tuple[int, np.ndarray]] = []  # protected entries passed over, in queue order
        while count > 0 and queue:
            stamp, rows = queue.popleft()
            chunk = rows[: max(2 * count, 1024)]
            valid, at, _ = table.find(chunk)
            valid[valid] = table.stamps[at[valid]] == stamp
            shield = protected(chunk) & valid if protected is not None else None
            take = np.flatnonzero(valid & ~shield if shield is not None else valid)[:count]
            end = int(take[-1]) + 1 if take.size == count else chunk.size
            taken_rows.append(chunk[take])
            taken_at.append(at[take])
            count -= take.size
            passed = chunk[:end][shield[:end]] if shield is not None else EMPTY
            if passed.size:
                kept.append((stamp, passed))
            if end < rows.size:
                queue.appendleft((stamp, rows[end:]))
            self._entries -= end - passed.size
        for stamp, rows in reversed(kept):
            if queue and queue[0][0] == stamp:
                rows = np.concatenate([rows, queue.popleft()[1]])
            queue.appendleft((stamp, rows))
        if not taken_rows:
            return EMPTY, EMPTY
        return np.concatenate(taken_rows), np.concatenate(taken_at)

    def _compact(self) -> None:
        """Drop the entries no longer current: O(entries), once per at least as many pushes."""
        table, queue = self._table, self._queue
        assert queue is not None
        stamps = np.repeat(np.array([stamp for stamp, _ in queue], dtype=np.int64), [rows.size for _, rows in queue])
        rows = np.concatenate([rows for _, rows in queue]) if queue else EMPTY
        current, at, _ = table.find(rows)
        current[current] = table.stamps[at[current]] == stamps[current]
        self._split(stamps[current], rows[current])

    def _build(self, before: int) -> None:
        """The queue of the rows held last used before stamp `before`: a sort, O(rows held log rows held), once."""
        table = self._table
        at = table.held()
        at = at[table.stamps[at] < before]
        rows, stamps = table.keys[at].astype(np.int64), table.stamps[at]
        order = np.lexsort((rows, stamps))
        self._split(stamps[order], rows[order])

    def _split(self, stamps: np.ndarray, rows: np.ndarray) -> None:
        """Queue `rows` (sorted by stamp, then row) as one array per stamp."""
        cuts = np.flatnonzero(np.diff(stamps)) + 1
        firsts = stamps[np.concatenate([[0], cuts])].tolist() if rows.size else []
        self._queue = deque(zip(firsts, np.split(rows, cuts) if rows.size else [], strict=True))
        self._entries = rows.size

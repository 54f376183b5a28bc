"""Shared state of the row caches: per Engram layer, the rows held (sorted) and when each was last used."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from engramsim.strategies import Cache, SetupContext, StepView, _BaseParams

EMPTY = np.empty(0, dtype=np.int64)
EMPTY.flags.writeable = False


def oldest(stamps: np.ndarray, count: int) -> np.ndarray:
    """Mask of the `count` (>= 1) smallest stamps, ties to the lowest index (row), in linear time."""
    cut = np.partition(stamps, count - 1)[count - 1]
    out = stamps < cut
    out[np.flatnonzero(stamps == cut)[: count - int(out.sum())]] = True
    return out


class HeldRows(Cache):
    """Base of the vectorised caches: arrays, never per-row Python, so millions of rows stay cheap.

    Each lookup advances the layer's clock and stamps the hits with it; `_update` returns the rows
    to hold after it (sorted) and their stamps. Arrays are replaced, never written in place, so `contents` can hand them out.
    """

    def __init__(self, params: _BaseParams, setup: SetupContext) -> None:
        super().__init__(params, setup)
        self._rows = {layer: EMPTY for layer in setup.tables}
        self._stamps = {layer: EMPTY for layer in setup.tables}
        self._clock = dict.fromkeys(setup.tables, 0)

    def lookup(self, layer: int, rows: np.ndarray, view: StepView) -> np.ndarray:
        held = self._rows[layer]
        pos = np.searchsorted(held, rows)
        hit = held[np.minimum(pos, held.size - 1)] == rows if held.size else np.zeros(rows.shape, dtype=bool)
        self._clock[layer] += 1
        hit_at, now = pos[hit], self._clock[layer]
        stamps = self._stamps[layer].copy()
        stamps[hit_at] = now
        kept, stamps = self._update(layer, rows, hit, hit_at, stamps, view, now)
        kept.flags.writeable = False
        self._rows[layer], self._stamps[layer] = kept, stamps
        return hit

    def _update(self, layer: int, rows: np.ndarray, hit: np.ndarray, hit_at: np.ndarray, stamps: np.ndarray, view: StepView,
                now: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows held after this lookup, sorted; their stamps). `hit_at`: where the hits sit in the
        held rows; `stamps`: the held rows' stamps, the hits' already `now` (a copy, the caller's to change)."""
        raise NotImplementedError

    def contents(self, layer: int) -> np.ndarray:
        return self._rows[layer]


def merged(held: np.ndarray, stamps: np.ndarray, keep: np.ndarray | None, new: np.ndarray, fill: float) -> tuple[np.ndarray, np.ndarray]:
    """Held rows (those in `keep`, all if None) and a column aligned to them, with the sorted `new` rows added (their column `fill`)."""
    if keep is not None:
        held, stamps = held[keep], stamps[keep]
    if not new.size:
        return held, stamps
    at = np.searchsorted(held, new)
    return np.insert(held, at, new), np.insert(stamps, at, fill)


def ranked(rows: np.ndarray, stamps: np.ndarray, was_held: np.ndarray, groups: np.ndarray, first: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the `limit` candidates to keep in each group (sorted by row), ranked by `first`
    (lowest first), then the most recent stamp, then held rows before new ones; equal held rows
    keep the highest row (the lowest is evicted), equal new ones the lowest (admitted first)."""
    tie = np.where(was_held, -rows, rows)
    order = np.lexsort((tie, ~was_held, -stamps, first, groups))
    sorted_groups = groups[order]
    rank = np.arange(order.size) - np.searchsorted(sorted_groups, sorted_groups)
    return np.sort(order[rank < limit])


def reranked(held: np.ndarray, stamps: np.ndarray, misses: np.ndarray, now: int, groups: Callable[[np.ndarray], np.ndarray],
             first: Callable[[np.ndarray], np.ndarray], limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The held rows (their stamps already refreshed) and a step's misses ranked together
    (`ranked`, with `groups` and `first` of the candidates): the kept rows sorted, and their stamps."""
    candidates = np.concatenate([held, misses])
    all_stamps = np.concatenate([stamps, np.full(misses.size, now, dtype=np.int64)])
    was_held = np.arange(candidates.size) < held.size
    keep = ranked(candidates, all_stamps, was_held, groups(candidates), first(candidates), limit)
    order = np.argsort(candidates[keep], kind="stable")
    return candidates[keep][order], all_stamps[keep][order]


def no_groups(candidates: np.ndarray) -> np.ndarray:
    """One group for every candidate (a fully associative cache), or no ranking key of its own."""
    return np.zeros(candidates.size, dtype=np.int64)

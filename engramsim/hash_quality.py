"""Hashing quality: how often distinct n-grams share table rows, per head and over all the heads of an order.

Multi-head hashing exists so that an n-gram whose row in one head is shared with another n-gram
(a collision: the row's embedding serves both) still has rows of its own in other heads. For
one Engram layer of a hashing plugin, over the n-grams a token sequence looks up (every position's
suffix n-gram of order 2..max_ngram, positions before a sequence's start holding the pad, as the
hashing sees them), per order:

- **head collision rate**, per head: the share of the distinct n-grams whose row in that head is
  also the row of another distinct n-gram;
- **all heads collide**: the share of distinct n-grams (and of n-gram occurrences) whose row
  collides in *every* head of the order: no row of their own anywhere;
- **retained**: the distinct n-grams with at least one collision-free head;
- **ideal**: the same two rates for heads that were independent uniform hashes of these sizes,
  1 - (1 - 1/m)^(D - 1) per head of m rows over D distinct n-grams, and their product for all
  heads: what a perfect hash of the same table sizes would give.

Everything is counted over the distinct n-grams present in the sequence (a row shared with an
n-gram the sequence never shows is not a collision here), so the rates grow with the text. All
of it is numpy over arrays of the distinct n-grams: the shipped traces take well under a second
per plugin and size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from engramsim.plugins.hashing.engram import suffix_windows
from engramsim.registry import build_hashing
from engramsim.scenario import Engram, StrategyChoice
from engramsim.strategies import Hashing, HashingSetup

BUILTIN_PLUGINS = ("engram", "engram-one-head", "engram-pow2-mask", "engram-shared-prime")
"""The reference and the alternatives it is compared with, in the order the table shows them."""

_BINCOUNT_SLACK = 1 << 20  # count rows with bincount when a head has at most 8 x entries + this many rows


@dataclass(frozen=True)
class OrderQuality:
    """One n-gram order of one layer (see the module docstring)."""

    order: int
    occurrences: int  # positions (one n-gram of this order each)
    distinct: int
    rows: int  # rows of this order's heads together
    head_sizes: list[int]
    head_collision_rate: list[float]
    all_heads_collide_distinct: float
    all_heads_collide_occurrences: float
    retained: int
    ideal_head_collision_rate: list[float]
    ideal_all_heads_collide_distinct: float

    @property
    def mean_head_collision_rate(self) -> float:
        return float(np.mean(self.head_collision_rate))


@dataclass(frozen=True)
class PluginQuality:
    """One hashing plugin at one configured size (rows_per_head of every order)."""

    plugin: str
    rows_per_head: int
    layer: int
    orders: list[OrderQuality]

    def order(self, n: int) -> OrderQuality:
        return next(o for o in self.orders if o.order == n)

    def to_dict(self) -> dict:
        return asdict(self)


def distinct_ngrams(windows: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per order n = 2..len(windows): (index of the first occurrence, occurrences) of every distinct
    n-gram, in the order of their keys. `windows[k]` holds x_{t-k} (see `suffix_windows`).

    The n-grams of order n are numbered by `np.unique` of (number of the (n-1)-gram) * base + x_{t-n+1},
    so keys stay below max(N, base) * base whatever the order."""
    base = max(int(w.max()) for w in windows) + 1 if windows[0].size else 1
    if windows[0].size and min(int(w.min()) for w in windows) < 0:
        raise ValueError("n-gram ids must be non-negative")
    if max(base, windows[0].size) * base >= 1 << 63:
        raise ValueError(f"ids up to {base - 1} over {windows[0].size} positions do not fit 63-bit n-gram keys")
    ident = np.asarray(windows[0], dtype=np.int64)
    out = []
    for k in range(1, len(windows)):
        key = ident * base + windows[k]
        _, first, ident, counts = np.unique(key, return_index=True, return_inverse=True, return_counts=True)
        ident = ident.reshape(-1)
        out.append((first, counts))
    return out


def shares_row(rows: np.ndarray, size: int) -> np.ndarray:
    """For each entry of `rows` (one per distinct n-gram, in [0, size)): is its row another entry's too?"""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return np.zeros(0, dtype=bool)
    if int(rows.min()) < 0 or int(rows.max()) >= size:
        raise ValueError(f"rows outside the head's {size} rows: {int(rows.min())}..{int(rows.max())}")
    if size <= 8 * rows.size + _BINCOUNT_SLACK:
        counts = np.bincount(rows, minlength=size)
        return counts[rows] > 1
    _, inverse, counts = np.unique(rows, return_inverse=True, return_counts=True)
    return counts[inverse.reshape(-1)] > 1


def ideal_collision_rate(size: int, distinct: int) -> float:
    """Chance that one of `distinct` keys hashed uniformly into `size` rows shares its row."""
    if distinct < 2:
        return 0.0
    return float(-np.expm1((distinct - 1) * np.log1p(-1.0 / size))) if size > 1 else 1.0


def order_quality(order: int, rows: np.ndarray, sizes: Sequence[int], occurrences: np.ndarray) -> OrderQuality:
    """Quality of one order from the rows [D, heads] of its D distinct n-grams and their occurrence counts."""
    rows = np.asarray(rows, dtype=np.int64)
    distinct = rows.shape[0]
    collided = np.stack([shares_row(rows[:, j], int(m)) for j, m in enumerate(sizes)], axis=1)
    every = np.logical_and.reduce(collided, axis=1) if distinct else np.zeros(0, dtype=bool)
    total = int(occurrences.sum())
    ideal = [ideal_collision_rate(int(m), distinct) for m in sizes]
    return OrderQuality(
        order=order,
        occurrences=total,
        distinct=distinct,
        rows=int(sum(int(m) for m in sizes)),
        head_sizes=[int(m) for m in sizes],
        head_collision_rate=[float(c) for c in collided.mean(axis=0)] if distinct else [0.0] * len(sizes),
        all_heads_collide_distinct=float(every.mean()) if distinct else 0.0,
        all_heads_collide_occurrences=float(occurrences[every].sum() / total) if total else 0.0,
        retained=int(distinct - every.sum()),
        ideal_head_collision_rate=ideal,
        ideal_all_heads_collide_distinct=float(np.prod(ideal)),
    )


def layer_quality(
    hashing: Hashing,
    ids: np.ndarray,
    starts: np.ndarray,
    layer: int,
    heads: int,
    windows: Sequence[np.ndarray],
    ngrams: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
) -> list[OrderQuality]:
    """Quality of every order of one layer. The plugin's heads are order-major, `heads` per order;
    `windows` are `suffix_windows(ids, starts, max_ngram, pad)` and `ngrams` their `distinct_ngrams`
    (computed when not given: pass them to reuse them across plugins and sizes)."""
    ngrams = distinct_ngrams(windows) if ngrams is None else ngrams
    rows = hashing.hash_sequences(ids, starts)[layer]
    sizes = hashing.head_sizes[layer]
    if rows.shape != (ids.size, heads * len(ngrams)) or sizes.size != rows.shape[1]:
        raise ValueError(f"expected rows [{ids.size}, {heads * len(ngrams)}] and as many head sizes, "
                         f"got {list(rows.shape)} and {sizes.size}")
    out = []
    for k, (first, counts) in enumerate(ngrams):
        cols = slice(k * heads, (k + 1) * heads)
        out.append(order_quality(k + 2, rows[first, cols], sizes[cols].tolist(), counts))
    return out


def compare(
    ids: np.ndarray,
    starts: np.ndarray,
    vocab_size: int,
    pad_id: int,
    engram: Engram,
    plugins: Sequence[str] = BUILTIN_PLUGINS,
    sizes: Sequence[int] = (10_000, 100_000, 1_000_000),
    layer: int | None = None,
) -> list[PluginQuality]:
    """Every plugin at every size (rows_per_head of every order; the rest of `engram` as given) on
    compressed ids laid end to end, each sequence starting at `starts`; `layer` defaults to the first."""
    layer = engram.layers[0] if layer is None else layer
    if layer not in engram.layers:
        raise ValueError(f"layer {layer} is not one of the Engram layers {engram.layers}")
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    starts = np.asarray(starts, dtype=np.int64)
    windows = suffix_windows(ids, starts, engram.max_ngram, pad_id)
    ngrams = distinct_ngrams(windows)
    out = []
    for size in sizes:
        config = engram.model_copy(update={"rows_per_head": [int(size)]})
        for name in plugins:
            hashing = build_hashing(StrategyChoice(name=name), HashingSetup(config, vocab_size, pad_id))
            orders = layer_quality(hashing, ids, starts, layer, engram.heads, windows, ngrams)
            out.append(PluginQuality(name, int(size), layer, orders))
    return out

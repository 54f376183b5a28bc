"""The structures under the built-in caches (plugins/cache/rowtable.py, held.py, lfu.py) and the
planner's O(rows looked up) checks of a cache that reports its changes.

The caches' behaviour is pinned by tests/test_caches.py; here the same caches run with their
thresholds shrunk, so that tables grow and are rebuilt, tombstones pile up, long probes finish
vectorised or one by one, order queues are compacted, LFU counts are rescaled and the LRU log is
replayed within a few dozen rows."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramsim.plan import Planner
from engramsim.plugins.cache import held, lfu, rowtable
from engramsim.plugins.cache.belady import Belady
from engramsim.plugins.cache.lfu import LFU
from engramsim.plugins.cache.lru import LRU
from engramsim.plugins.cache.rowtable import RowTable
from engramsim.plugins.cache.set_assoc_lru import SetAssocLRU
from engramsim.strategies import CacheLookup, StepView
from tests.test_caches import LAYER, TABLE_ROWS, AllHost, OnDemand, build, drive, toy_step


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.lists(st.integers(0, 2000), max_size=40)), max_size=40), wide=st.booleans())
def test_row_table_holds_what_was_inserted_and_not_removed(ops, wide):
    """Guards: a probe stopping early (a hit reported as a miss), a tombstone read as empty, rows
    lost or duplicated by a rebuild, int32 keys truncating rows."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rowtable, "_MIN_BITS", 2)
        offset = 2**33 if wide else 0
        table, reference = RowTable(offset + 2001, capacity=1), set()
        for stamp, (insert, batch) in enumerate(ops, start=1):
            rows = np.unique(np.array(batch, dtype=np.int64)) + offset
            found, at, missing = table.find(rows)
            assert found.tolist() == [int(r) in reference for r in rows]
            assert missing.tolist() == np.flatnonzero(~found).tolist()
            assert (table.keys[at[found]] == rows[found]).all()
            if insert:
                table.insert(rows[missing], at[missing], stamp)
                reference.update(int(r) for r in rows[missing])
            else:
                table.remove(at[found])
                reference.difference_update(int(r) for r in rows[found])
            assert table.live == len(reference)
            assert sorted(table.keys[table.held()].astype(np.int64).tolist()) == sorted(reference)


STREAMS = st.lists(st.lists(st.integers(0, 59), max_size=25), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(stream=STREAMS, rows=st.integers(1, 30), sets=st.integers(1, 6), ways=st.integers(1, 5), decay=st.sampled_from([1.0, 0.5, 0.8]))
def test_caches_behave_the_same_with_tiny_thresholds(stream, rows, sets, ways, decay):
    """The same hits and contents after each step whether the structures stay small or are rebuilt,
    compacted, rescaled and replayed all along. Guards: any of those paths changing what a cache
    holds."""
    def run() -> list:
        return [drive(build(cls, **params), stream, known_future=known) for cls, params, known in
                [(LRU, {"rows": rows}, True), (LFU, {"rows": rows, "decay": decay}, True), (SetAssocLRU, {"sets": sets, "ways": ways}, True),
                 (Belady, {"rows": rows, "horizon": 3}, True), (Belady, {"rows": rows}, False)]]

    usual = run()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rowtable, "_MIN_BITS", 2)
        patch.setattr(rowtable, "_FIRST_ROWS", 1)
        patch.setattr(held, "COMPACT_SLACK", -10**9)  # compact (LFU: merge every run) at every push
        patch.setattr(lfu, "RESCALE_ABOVE", 2.0)  # rescale every few lookups (decay 0.5: every one)
        assert run() == usual


def reference(policy: str, stream: list[list[int]], capacity: int, decay: float = 1.0, sets: int = 1, horizon: int = 64) -> list:
    """(hit rows, contents) after each step, by the policies' documented rules in plain Python:
    every step ranks every row held (O(capacity)), as the caches did before they kept structures."""
    stamp: dict[int, int] = {}
    count: dict[int, float] = {}
    out = []
    for now, step in enumerate(stream, start=1):
        rows = sorted(set(step))
        hits = [r for r in rows if r in stamp]
        misses = [r for r in rows if r not in stamp]
        for r in count:
            count[r] *= decay
        for r in hits:
            stamp[r] = now
            count[r] = count.get(r, 0.0) + 1.0
        if policy in ("lru", "lfu"):
            misses = misses[: capacity - len(hits)]
            over = len(stamp) + len(misses) - capacity
            if policy == "lru":
                victims = sorted(stamp, key=lambda r: (stamp[r], r))[: max(over, 0)]
            else:
                victims = sorted((r for r in stamp if stamp[r] < now), key=lambda r: (count[r], stamp[r], r))[: max(over, 0)]
            kept = [r for r in stamp if r not in victims] + misses
        else:  # set-associative or Belady: rank the rows held and the misses together, keep the best of each group
            ahead = [sorted(set(s)) for s in stream[now: now + horizon]] if policy == "belady" else []
            def key(r: int) -> tuple:
                held = r in stamp
                soon = next((d for d, s in enumerate(ahead, start=1) if r in s), 10**9)
                return (r % sets if policy == "set-assoc-lru" else 0, soon, -stamp.get(r, now), not held, -r if held else r)
            ranked = sorted(list(stamp) + misses, key=key)
            kept, per_group = [], {}
            for r in ranked:
                group = key(r)[0]
                if per_group.get(group, 0) < capacity:
                    per_group[group] = per_group.get(group, 0) + 1
                    kept.append(r)
        stamp = {r: stamp.get(r, now) for r in kept}
        count = {r: count.get(r, 1.0) for r in kept}
        out.append((hits, sorted(stamp)))
    return out


@settings(max_examples=80, deadline=None)
@given(stream=st.lists(st.lists(st.integers(0, TABLE_ROWS - 1), max_size=40), min_size=1, max_size=30), universe=st.integers(5, TABLE_ROWS),
       rows=st.integers(1, 60), sets=st.integers(1, 8), ways=st.integers(1, 6), decay=st.sampled_from([1.0, 0.5]), tiny=st.booleans())
def test_caches_follow_their_rules_as_ranking_every_row_held_would(stream, universe, rows, sets, ways, decay, tiny):
    """Guards: a structure (table, queue, runs, sets) that drifts from the policy's rules, with the
    thresholds as shipped or shrunk."""
    stream = [[r % universe for r in step] for step in stream]
    with pytest.MonkeyPatch.context() as patch:
        if tiny:
            patch.setattr(rowtable, "_MIN_BITS", 2)
            patch.setattr(rowtable, "_FIRST_ROWS", 1)
            patch.setattr(held, "COMPACT_SLACK", -10**9)
            patch.setattr(lfu, "RESCALE_ABOVE", 2.0)
        assert drive(build(LRU, rows=rows), stream) == reference("lru", stream, rows)
        assert drive(build(LFU, rows=rows, decay=decay), stream) == reference("lfu", stream, rows, decay)
        assert drive(build(SetAssocLRU, sets=sets, ways=ways), stream) == reference("set-assoc-lru", stream, ways, sets=sets)
        assert drive(build(Belady, rows=rows, horizon=4), stream) == reference("belady", stream, rows, horizon=4)
        assert drive(build(Belady, rows=rows), stream, known_future=False) == reference("lru", stream, rows)


def test_an_lru_cache_that_never_fills_writes_no_stamps_and_replays_its_log_when_it_does():
    cache = build(LRU, rows=4)
    drive(cache, [[1, 2], [2, 3]])
    assert not cache._recency[LAYER].stamping
    assert drive(cache, [[1, 4], [5]])[-1] == ([], [1, 3, 4, 5])  # 2 and 3, last used together, are the oldest: the lower row goes
    assert cache._recency[LAYER].stamping


class Reporting(LRU):
    """An LRU whose report can be corrupted after the fact."""

    corrupt: Any = None

    def lookup_changes(self, layer: int, rows: np.ndarray, view: StepView) -> CacheLookup:
        report = super().lookup_changes(layer, rows, view)
        return self.corrupt(report) if self.corrupt else report


@pytest.mark.parametrize(("corrupt", "message"), [
    (lambda r: CacheLookup(r.hit | True, r.admitted, r.evicted), "admitted rows of layer 3 that this step does not fetch"),
    (lambda r: CacheLookup(r.hit, r.admitted[::-1], r.evicted), "admitted rows of layer 3 that this step does not fetch"),
    (lambda r: CacheLookup(r.hit[:-1], r.admitted, r.evicted), "answered a lookup of 3 rows of layer 3 with 2 hits or misses"),
    (lambda r: CacheLookup(r.hit, r.admitted, np.array([99])), "holds 3 rows of layer 3, but its lookups admitted and evicted 2 in all"),
])
def test_the_planner_checks_a_reporting_cache_in_terms_of_the_lookup(corrupt, message):
    """Guards: a cache reporting admissions of rows it hit or never saw, or evictions that do not add
    up; checked without reading the cache's contents."""
    cache = build(Reporting, rows=8)
    cache.corrupt = corrupt
    planner = Planner(AllHost(), cache, OnDemand(), {LAYER: TABLE_ROWS}, blocks=8)
    with pytest.raises(RuntimeError, match=message):
        planner.plan(StepView(toy_step(0, [1, 2, 3])))


def test_a_reporting_cache_over_its_capacity_is_an_error():
    class Hoarder(Reporting):
        def capacity_rows(self, layer: int) -> int:
            return 2

    cache = build(Hoarder, rows=8)
    planner = Planner(AllHost(), cache, OnDemand(), {LAYER: TABLE_ROWS}, blocks=8)
    with pytest.raises(RuntimeError, match="holds 3 rows of layer 3, over its capacity of 2"):
        planner.plan(StepView(toy_step(0, [1, 2, 3])))


def test_the_compiler_loads_with_the_first_row_table_not_with_the_plugins():
    """`engramsim --help` and every plugin listing start without numba; a cache's first table loads it.
    Guards: a module-level import of the compiled probes putting the compiler on every start-up."""
    code = ("import sys; from engramsim import registry; registry.names('cache'); before = 'numba' in sys.modules; "
            "from engramsim.plugins.cache.rowtable import RowTable; import numpy as np; "
            "RowTable(100, 10).find(np.arange(3)); sys.exit(before or 'numba' not in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0

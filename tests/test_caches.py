"""The built-in HBM caches: hand-checked hit sequences on tiny row streams, the Planner's cache
invariants under random streams, Belady as an upper bound, and the cache run on the CPU backend."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramsim.plan import Planner
from engramsim.plugins.cache.belady import Belady
from engramsim.plugins.cache.held import HeldRows
from engramsim.plugins.cache.lfu import LFU
from engramsim.plugins.cache.lru import LRU
from engramsim.plugins.cache.set_assoc_lru import SetAssocLRU
from engramsim.runner import simulate_run
from engramsim.scenario_io import load_scenario
from engramsim.session import prepare
from engramsim.steps import LayerLookup, Step
from engramsim.strategies import Placement, Prefetch, SetupContext, StepView, TableInfo, Tier
from tests.test_backends import TINY

LAYER = 3
TABLE_ROWS = 400


class AllHost(Placement):
    """Every row outside HBM, so every row goes through the cache."""

    name = "all-host-test"

    def __init__(self) -> None:
        pass

    def tier_of(self, layer: int, rows: np.ndarray) -> np.ndarray:
        return np.full(rows.shape, int(Tier.HOST), dtype=np.uint8)


class OnDemand(Prefetch):
    name = "on-demand-test"

    def __init__(self) -> None:
        pass

    def issue_layer(self, layer: int, view: StepView) -> int:
        return layer


def build(cls: type[HeldRows], **params: Any) -> HeldRows:
    table = TableInfo(layer=LAYER, rows=TABLE_ROWS, row_bytes=4, head_sizes=np.array([TABLE_ROWS]), offsets=np.array([0]))
    return cls(cls.Params(**params), SetupContext(scenario=cast(Any, None), tables={LAYER: table}, hardware=cast(Any, None), seed=0))


def toy_step(index: int, rows: list[int]) -> Step:
    one = np.ones(1, dtype=np.int64)
    unique = np.unique(np.array(rows, dtype=np.int64))
    return Step(index, "decode", one, one, one, np.zeros(1, dtype=np.int64), {LAYER: LayerLookup(LAYER, unique, len(rows))})


def drive(cache: HeldRows, stream: list[list[int]], known_future: bool = True) -> list[tuple[list[int], list[int]]]:
    """(hit rows, contents) after each step, through the Planner (which raises on a broken invariant)."""
    steps = [toy_step(i, rows) for i, rows in enumerate(stream)]
    planner = Planner(AllHost(), cache, OnDemand(), {LAYER: TABLE_ROWS}, blocks=8)
    out = []
    for step in steps:
        before = cache.contents(LAYER)
        ahead = steps[step.index + 1 :] if known_future else []

        def future(k: int, ahead: list[Step] = ahead) -> list[Step]:
            return ahead[:k]

        plan = planner.plan(StepView(step, future)).layers[LAYER]
        rows = step.lookups[LAYER].rows
        hits = rows[np.isin(rows, plan.fetch[: plan.misses], invert=True)]
        after = cache.contents(LAYER)
        assert plan.cache_hits == hits.size and after.size <= cache.capacity_rows(LAYER)
        assert np.isin(hits, before).all() and np.isin(np.setdiff1d(after, before), plan.fetch[: plan.misses]).all()
        assert np.array_equal(after, np.unique(after))
        out.append((hits.tolist(), after.tolist()))
    return out


def test_lru_evicts_the_least_recently_used_row():
    assert drive(build(LRU, rows=2), [[1, 2], [2, 3], [1], [3, 4], [5, 6, 7]]) == [
        ([], [1, 2]), ([2], [2, 3]), ([], [1, 3]),  # 2 and 3 were used at the same step: the lower row goes
        ([3], [3, 4]), ([], [5, 6]),  # more misses than room: the lowest are admitted
    ]


@pytest.mark.parametrize(("decay", "last"), [(1.0, [1, 3]), (0.5, [2, 3])], ids=["plain", "aged"])
def test_lfu_evicts_the_lowest_count_and_aging_forgets_old_uses(decay, last):
    """Row 1 is used three times early, row 2 once later: without aging 1 wins; halving each step, 2 does."""
    assert drive(build(LFU, rows=2, decay=decay), [[1], [1], [1], [2], [3]])[-1] == ([], last)


def test_lfu_breaks_count_ties_by_least_recent_use():
    assert drive(build(LFU, rows=2), [[1], [2], [3]])[-1] == ([], [2, 3])


def test_set_assoc_lru_evicts_within_the_set_only():
    assert drive(build(SetAssocLRU, sets=2, ways=1), [[0, 1], [2], [1, 3], [4, 6]]) == [
        ([], [0, 1]), ([], [1, 2]),  # 2 shares set 0 with 0
        ([1], [1, 2]),  # 3's set holds a hit of this step: 3 is not admitted
        ([], [1, 4]),  # two misses for one way: the lower row is admitted
    ]


def test_belady_keeps_the_rows_used_soonest_and_falls_back_to_lru():
    stream = [[1, 2], [3], [1], [2], [3]]
    assert drive(build(Belady, rows=2), stream) == [
        ([], [1, 2]), ([], [1, 2]),  # 3 is needed after 1 and 2: not admitted
        ([1], [1, 2]), ([2], [1, 2]), ([], [2, 3]),  # nothing ahead: the least recent (1) goes
    ]
    assert [h for h, _ in drive(build(LRU, rows=2), stream)] == [[], [], [], [], []]


STREAMS = st.lists(st.lists(st.integers(0, 59), max_size=25), min_size=1, max_size=15)


@settings(max_examples=60, deadline=None)
@given(stream=STREAMS, rows=st.integers(1, 30), sets=st.integers(1, 6), ways=st.integers(1, 5), decay=st.floats(0.05, 1.0))
def test_caches_hold_their_capacity_admit_misses_and_hit_held_rows(stream, rows, sets, ways, decay):
    """Guards: a cache over its capacity, admitting rows the step does not fetch, or reporting hits
    it does not hold (`drive` and the Planner check each after every step)."""
    for cache in (build(LRU, rows=rows), build(LFU, rows=rows, decay=decay), build(SetAssocLRU, sets=sets, ways=ways),
                  build(Belady, rows=rows, horizon=4)):
        drive(cache, stream)


@settings(max_examples=60, deadline=None)
@given(stream=STREAMS, rows=st.integers(1, 30), decay=st.floats(0.05, 1.0))
def test_belady_hits_at_least_as_often_as_the_online_caches(stream, rows, decay):
    def hits(cache: HeldRows) -> int:
        return sum(len(h) for h, _ in drive(cache, stream))

    oracle = hits(build(Belady, rows=rows))  # the default horizon covers the whole stream
    assert oracle >= hits(build(LRU, rows=rows))
    assert oracle >= hits(build(LFU, rows=rows, decay=decay))


@settings(max_examples=40, deadline=None)
@given(stream=STREAMS, rows=st.integers(1, 30))
def test_belady_without_a_known_future_is_lru(stream, rows):
    assert drive(build(Belady, rows=rows), stream, known_future=False) == drive(build(LRU, rows=rows), stream)


def _tiny(tmp_path, overrides: list[str]):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return prepare(load_scenario(path, overrides), str(path))


def test_belady_bounds_the_online_caches_on_an_offline_scenario(tmp_path):
    def hits(cache: str) -> int:
        outcome = simulate_run(_tiny(tmp_path, [f"strategies.cache={cache}", "strategies.placement=all-host"]))
        return sum(r.cache_hits for s in outcome.steps for r in s.layers)

    lru, lfu = hits("{name: lru, params: {rows: 3000}}"), hits("{name: lfu, params: {rows: 3000, decay: 0.9}}")
    oracle = hits("{name: belady, params: {rows: 3000}}")
    assert lru > 0 and oracle >= max(lru, lfu)


def test_the_cpu_backend_runs_the_lru_cache_like_the_simulator(tmp_path):
    """Guards: the real backend's cache mirror and the simulator disagreeing on hits and fetches."""
    from engramsim.runner import run_real

    prepared = _tiny(tmp_path, ["strategies.cache={name: lru, params: {rows: 3000}}", "strategies.placement=all-host"])
    sim, real = simulate_run(prepared), run_real(prepared, "cpu")
    fields = [[(r.layer, r.cache_hits, r.rows_missed, r.bytes_fetched) for r in s.layers] for s in sim.steps]
    assert fields == [[(r.layer, r.cache_hits, r.rows_missed, r.bytes_fetched) for r in s.layers] for s in real.steps]
    assert sum(r.cache_hits for s in sim.steps for r in s.layers) > 0

"""Cache capacity in rows or bytes, per layer or shared by all Engram layers (issue 11 item 1):
bytes to rows by hand, exactly one of the two, a shared LRU evicting the oldest row of any layer,
the Planner keeping a shared cache within its one capacity, and HBM counting it once."""

from __future__ import annotations

import json
from typing import Any, cast

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from engramsim.cli import main
from engramsim.errors import InputError
from engramsim.plan import Planner
from engramsim.plugins.cache.belady import Belady
from engramsim.plugins.cache.held import HeldRows
from engramsim.plugins.cache.lfu import LFU
from engramsim.plugins.cache.lru import LRU
from engramsim.plugins.cache.set_assoc_lru import SetAssocLRU
from engramsim.plugins.cache.static_hot import StaticHot
from engramsim.steps import LayerLookup, Step
from engramsim.strategies import SetupContext, StepView, TableInfo, cache_bytes
from tests.test_caches import AllHost, OnDemand
from tests.test_run import SMALL

ROWS = {1: 50, 4: 80}  # two Engram layers, rows per table
ROW_BYTES = {1: 8, 4: 12}


def build(cls: type[HeldRows], **params: Any) -> HeldRows:
    tables = {layer: TableInfo(layer=layer, rows=rows, row_bytes=ROW_BYTES[layer], head_sizes=np.array([rows]), offsets=np.array([0]))
              for layer, rows in ROWS.items()}
    return cls(cls.Params(**params), SetupContext(scenario=cast(Any, None), tables=tables, hardware=cast(Any, None), seed=0))


def step(index: int, rows: dict[int, list[int]]) -> Step:
    one = np.ones(1, dtype=np.int64)
    lookups = {layer: LayerLookup(layer, np.unique(np.array(rows.get(layer, []), dtype=np.int64)), len(rows.get(layer, []))) for layer in ROWS}
    return Step(index, "decode", one, one, one, np.zeros(1, dtype=np.int64), lookups)


def drive(cache: HeldRows, stream: list[dict[int, list[int]]]) -> list[dict[int, list[int]]]:
    """Each layer's contents after each step, through the Planner (which raises on a broken invariant)."""
    planner = Planner(AllHost(), cache, OnDemand(), dict(ROWS), blocks=8)
    out = []
    for i, rows in enumerate(stream):
        planner.plan(StepView(step(i, rows)))
        held = {layer: cache.contents(layer).tolist() for layer in ROWS}
        assert all(cache.size(layer) == len(held[layer]) for layer in ROWS)
        out.append(held)
    return out


@pytest.mark.parametrize("cls", [LRU, LFU, Belady])
def test_bytes_become_whole_rows_of_each_layer(cls):
    cache = build(cls, bytes=100)
    assert cache.capacity_rows(1) == 12 and cache.capacity_rows(4) == 8  # 100 // 8, 100 // 12
    assert build(cls, rows=7).capacity_rows(4) == 7


def test_shared_bytes_are_whole_rows_of_the_widest_layer_counted_once():
    cache = build(LRU, bytes=100, shared=True)
    assert cache.shared and cache.capacity_rows(1) == cache.capacity_rows(4) == 8  # 100 // 12
    tables = cache.setup.tables
    assert cache_bytes(tables, cache.capacity_rows, cache.shared) == 8 * 12
    assert cache_bytes(tables, build(LRU, bytes=100).capacity_rows) == 12 * 8 + 8 * 12


@pytest.mark.parametrize("params", [{}, {"rows": 3, "bytes": 100}])
@pytest.mark.parametrize("cls", [LRU, LFU, Belady])
def test_exactly_one_of_rows_and_bytes(cls, params):
    with pytest.raises(ValidationError, match="exactly one of `rows` and `bytes`") as error:
        cls.Params(**params)
    assert error.value.errors()[0]["loc"] == ("rows",)


def test_a_capacity_under_one_row_is_refused_naming_bytes():
    with pytest.raises(InputError, match="strategies.cache.params.bytes: 10 bytes hold no row of 12 bytes"):
        build(LRU, bytes=10)


def test_a_static_hot_set_is_chosen_per_layer_only():
    with pytest.raises(ValidationError, match="shared"):
        StaticHot.Params(rows=4, shared=True)


def test_shared_lru_evicts_the_oldest_row_of_any_layer():
    contents = drive(build(LRU, rows=3, shared=True), [{1: [5, 6]}, {4: [5]}, {1: [6]}, {4: [7]}, {4: [8, 9]}])
    assert contents == [
        {1: [5, 6], 4: []},
        {1: [5, 6], 4: [5]},  # 3 rows: full
        {1: [5, 6], 4: [5]},  # a hit: layer 1's row 6 is now the newest
        {1: [6], 4: [5, 7]},  # the oldest of all: layer 1's row 5
        {1: [], 4: [7, 8, 9]},  # then layer 4's 5 and layer 1's 6, older than layer 4's 7
    ]


def test_shared_set_associative_lru_maps_every_layers_keys_to_one_array_of_sets():
    # keys: layer 1's rows as they are, layer 4's offset by 80 (its index x the widest table); set = key % 2
    contents = drive(build(SetAssocLRU, sets=2, ways=2, shared=True), [{1: [5, 6]}, {4: [5]}, {1: [6]}, {4: [7]}, {4: [8, 9]}])
    assert contents == [
        {1: [5, 6], 4: []},
        {1: [5, 6], 4: [5]},  # key 85 joins key 5 in set 1: full
        {1: [5, 6], 4: [5]},
        {1: [6], 4: [5, 7]},  # key 87, set 1: its least recent is layer 1's row 5
        {1: [6], 4: [7, 8, 9]},  # key 88 fills set 0 beside key 6; key 89 evicts key 85 from set 1
    ]


def _planned(cache: HeldRows, stream: list[dict[int, list[int]]]) -> list[tuple[dict[int, list[int]], dict[int, int]]]:
    """`drive` with the future known (an offline workload): each step's contents and hits per layer."""
    steps = [step(i, rows) for i, rows in enumerate(stream)]
    planner = Planner(AllHost(), cache, OnDemand(), dict(ROWS), blocks=8)
    out = []
    for i, s in enumerate(steps):
        plan = planner.plan(StepView(s, lambda k, i=i: steps[i + 1: i + 1 + k]))
        out.append(({layer: cache.contents(layer).tolist() for layer in ROWS}, {layer: p.cache_hits for layer, p in plan.layers.items()}))
    return out


def test_shared_belady_keeps_the_row_any_layer_needs_next():
    """Capacity 2 over both layers. At step 2 layer 4's row 7 must come in: LRU would evict layer
    1's row 5 (the oldest), but step 3 needs it again, so Belady evicts layer 1's row 6."""
    stream = [{1: [5]}, {1: [6]}, {4: [7]}, {1: [5]}]
    assert _planned(build(Belady, rows=2, shared=True), stream)[2][0] == {1: [5], 4: [7]}
    assert _planned(build(LRU, rows=2, shared=True), stream)[2][0] == {1: [6], 4: [7]}


def test_shared_belady_counts_this_steps_later_layers_as_needed_now():
    """Layer 1's lookup at step 2 must take row 6 in; layer 4 of the same step needs its row 7
    (the oldest row held), so layer 1's row 5 goes instead and layer 4 hits. LRU evicts row 7,
    and layer 4 misses it."""
    stream = [{4: [7]}, {1: [5]}, {1: [6], 4: [7]}]
    assert _planned(build(Belady, rows=2, shared=True), stream)[2] == ({1: [6], 4: [7]}, {1: 0, 4: 1})
    assert _planned(build(LRU, rows=2, shared=True), stream)[2] == ({1: [6], 4: [7]}, {1: 0, 4: 0})


def test_per_layer_lru_is_unchanged_by_the_other_layers():
    contents = drive(build(LRU, rows=2), [{1: [5, 6]}, {4: [5, 7, 8]}])
    assert contents[-1] == {1: [5, 6], 4: [5, 7]}


@settings(max_examples=40, deadline=None)
@given(cls=st.sampled_from([LRU, LFU, Belady, SetAssocLRU]), capacity=st.integers(1, 12),
       stream=st.lists(st.fixed_dictionaries({1: st.lists(st.integers(0, 49), max_size=8), 4: st.lists(st.integers(0, 79), max_size=8)}),
                       min_size=1, max_size=25))
def test_a_shared_cache_never_holds_more_than_its_capacity(cls, capacity, stream):
    cache = build(cls, sets=1, ways=capacity, shared=True) if cls is SetAssocLRU else build(cls, rows=capacity, shared=True)
    for held in drive(cache, stream):  # the Planner also checks the layers together against the capacity
        assert sum(len(rows) for rows in held.values()) <= capacity


def test_hbm_counts_a_shared_cache_once(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)

    def caches(params: str) -> int:
        out = tmp_path / f"o{len(list(tmp_path.iterdir()))}"
        assert main(["run", str(path), "--out", str(out), "--quiet", "--set", f"strategies.cache={{name: lru, params: {params}}}"]) == 0
        return json.loads((out / "results.json").read_text())["hbm"]["items_bytes"]["Engram caches"]

    row = 64 * 2
    assert caches("{rows: 1000}") == 2 * 1000 * row  # two Engram layers
    assert caches("{rows: 1000, shared: true}") == 1000 * row
    assert caches(f"{{bytes: {1000 * row + 5}}}") == 2 * 1000 * row

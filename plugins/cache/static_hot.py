"""Static hot set: each Engram layer's HBM cache holds, from the start, the `rows` rows a
frequency profile found most looked up, and never admits or evicts (FBGEMM-style static hot
rows chosen from frequency statistics).

The profile (`engramsim/frequency.py`) counts the rows of `profile_range` of `profile_trace`
(the scenario's trace by default) hashed with the scenario's hashing plugin; on the served trace
the served requests' windows are cut out of it (`exclude_served`), or, with `exclude_served:
false`, a range holding any served token is refused naming `strategies.cache.params.profile_range`.
The hot set never sees the tokens it is scored on; results.json's `sources.cache` says which
tokens built it.

The capacity, `rows` per layer, is reserved in HBM and counted against it (a bigger set leaves
less room for the KV cache), whether or not the profile found that many rows. The initial fill is
not priced: like the weights, the set is loaded before serving starts, never on a step's link.
Every lookup costs O(rows looked up x log rows held) (a binary search in the sorted set).
The real backends mirror a cache from the rows its lookups admit, which this one never does, so
they refuse it (simulate it: --backend sim).
"""

from __future__ import annotations

import numpy as np

from engramsim.errors import InputError
from engramsim.frequency import ProfileParams, profiled
from engramsim.plugins.cache.held import CapacityParams, capacity_rows_of
from engramsim.registry import register
from engramsim.rows import member
from engramsim.strategies import Cache, CacheLookup, SetupContext, StepView

EMPTY = np.empty(0, dtype=np.int64)
EMPTY.flags.writeable = False


class StaticHotParams(ProfileParams, CapacityParams):
    """Rows held per Engram layer (`rows`, or `bytes` in whole rows): the profile's most looked-up rows (capacity reserved in HBM)."""


@register("cache", "static-hot")
class StaticHot(Cache):
    """A fixed set of each layer's most looked-up rows, from a frequency profile built on tokens never served; no admissions, no evictions."""

    Params = StaticHotParams
    params: StaticHotParams

    def __init__(self, params: StaticHotParams, setup: SetupContext) -> None:
        super().__init__(params, setup)
        if setup.scenario.run.backend != "sim":
            raise InputError("scenario", f"the {setup.scenario.run.backend} backend mirrors a cache from the rows its lookups admit, and "
                             "the static-hot set is filled before serving; simulate it (--backend sim)", field="strategies.cache")
        self._capacity = capacity_rows_of(params, setup)
        self.split, found = profiled(setup, params, "cache")
        self._held = {layer: found.hot_rows(layer, self._capacity[layer]) for layer in setup.tables}
        for rows in self._held.values():
            rows.flags.writeable = False

    def describe(self) -> str:
        """Which tokens built the profile, in words."""
        return self.split.describe()

    def source(self) -> dict:
        """Which tokens built the profile, as data (results.json's `sources`)."""
        return self.split.source()

    def capacity_rows(self, layer: int) -> int:
        return self._capacity[layer]

    def lookup(self, layer: int, rows: np.ndarray, view: StepView) -> np.ndarray:
        return self.holds(layer, rows)

    def lookup_changes(self, layer: int, rows: np.ndarray, view: StepView) -> CacheLookup:
        return CacheLookup(self.holds(layer, rows), EMPTY, EMPTY)

    def contents(self, layer: int) -> np.ndarray:
        return self._held[layer]

    def size(self, layer: int) -> int:
        return int(self._held[layer].size)

    def holds(self, layer: int, rows: np.ndarray) -> np.ndarray:
        return member(self._held[layer], np.asarray(rows, dtype=np.int64))

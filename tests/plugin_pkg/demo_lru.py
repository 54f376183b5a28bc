"""A third-party cache: least recently used rows, a fixed number of rows per Engram layer."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from pydantic import PositiveInt

from engramsim.registry import register
from engramsim.strategies import Cache, Params, SetupContext, StepView


class DemoLRUParams(Params):
    rows: PositiveInt = 1024


@register("cache", "demo-lru")
class DemoLRU(Cache):
    """Keep the most recently used rows of each layer in HBM, up to `rows` rows."""

    Params = DemoLRUParams
    params: DemoLRUParams

    def __init__(self, params: DemoLRUParams, setup: SetupContext) -> None:
        super().__init__(params, setup)
        self._held: dict[int, OrderedDict[int, None]] = {layer: OrderedDict() for layer in setup.tables}

    def capacity_rows(self, layer: int) -> int:
        return self.params.rows

    def lookup(self, layer: int, rows: np.ndarray, view: StepView) -> np.ndarray:
        held = self._held[layer]
        hits = np.fromiter((int(r) in held for r in rows), dtype=bool, count=rows.size)
        for row in rows.tolist():
            held[row] = None
            held.move_to_end(row)
        while len(held) > self.params.rows:
            held.popitem(last=False)
        return hits

    def contents(self, layer: int) -> np.ndarray:
        return np.array(sorted(self._held[layer]), dtype=np.int64)

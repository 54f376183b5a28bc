"""A third-party hashing: each head reads row (token id + head) mod its size. Not a good hash;
it makes the rows a run fetches easy to predict in tests."""

from __future__ import annotations

import numpy as np
from pydantic import PositiveInt

from engramsim.registry import register
from engramsim.strategies import Hashing, HashingSetup, Params


class DemoModuloParams(Params):
    rows_per_head: PositiveInt = 1009


@register("hashing", "demo-modulo")
class DemoModulo(Hashing):
    """Row (token id + head index) mod rows_per_head, for every head of every Engram layer."""

    Params = DemoModuloParams

    def __init__(self, params: DemoModuloParams, setup: HashingSetup) -> None:
        self.params = params
        self.heads = setup.engram.heads_per_layer
        self._sizes = {layer: np.full(self.heads, params.rows_per_head, dtype=np.int64) for layer in setup.engram.layers}

    @classmethod
    def from_setup(cls, params: Params, setup: HashingSetup) -> DemoModulo:
        assert isinstance(params, DemoModuloParams)
        return cls(params, setup)

    @property
    def head_sizes(self) -> dict[int, np.ndarray]:
        return self._sizes

    def hash_sequences(self, compressed_ids: np.ndarray, starts: np.ndarray, threads: int = 2) -> dict[int, np.ndarray]:
        ids = np.asarray(compressed_ids, dtype=np.int64)[:, None] + np.arange(self.heads, dtype=np.int64)
        return {layer: ids % self.params.rows_per_head for layer in self._sizes}

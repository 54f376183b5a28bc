"""One head per n-gram order: Engram's mixing, one prime table per order, every head of the order
reading the same row.

This is one table per order whose rows are the order's heads side by side (n_embed_per_ngram
wide): the memory, the bytes a token fetches and the memory vector are the reference's, so the
plugin runs in any scenario. Head j of order n reads row mix_n % p_n, with p_n the reference's
first prime search (`layer_primes` with one head: distinct across the model, just above
rows_per_head), so the order's heads hold H * p_n rows, the reference's H primes' total within
rounding. Two n-grams that share a row share it in every head: the all-heads-collide fraction is
the one head's collision rate. (One head of H * rows_per_head narrow rows, a smaller memory vector
and so another model, is the `engram` plugin with `heads: 1`; `engramsim collisions --plugins engram --heads 1` measures it.)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from engramsim.plugins.hashing.engram import (
    EngramHashSpec,
    NgramHashing,
    layer_primes,
    order_mixes,
    remainder_into,
    remainder_table,
    split_mix,
)
from engramsim.registry import register
from engramsim.strategies import HashingSetup, Params


@register("hashing", "engram-one-head")
class OneHeadPerOrder(NgramHashing):
    """Engram's mixing with one prime head per n-gram order, shared by the order's heads (baseline)."""

    def __init__(self, spec: EngramHashSpec, compressed_vocab_size: int, pad_id: int) -> None:
        """`pad_id` is the already-compressed pad id."""
        super().__init__(spec, compressed_vocab_size, pad_id)
        self.primes = layer_primes(dataclasses.replace(spec, heads=1))  # per layer, one per order
        self._remainders = {layer: remainder_table(p) for layer, p in self.primes.items()}

    @classmethod
    def from_setup(cls, params: Params, setup: HashingSetup) -> OneHeadPerOrder:
        return cls(EngramHashSpec.from_engram(setup.engram), setup.vocab_size, setup.pad_id)

    @property
    def head_sizes(self) -> dict[int, np.ndarray]:
        return {layer: np.repeat(p, self.spec.heads) for layer, p in self.primes.items()}

    def _hash_chunk(self, shifted: list[np.ndarray], start: int, stop: int, out: dict[int, np.ndarray]) -> None:
        n = stop - start
        t, scratch = np.empty(n), np.empty(n)
        block = np.empty((self.spec.max_ngram - 1, n), dtype=np.int64)
        xs = [s[start:stop] for s in shifted]
        for layer, mult in self.multipliers.items():
            for order, mix in order_mixes(xs, mult):
                k = order - 2
                hi, lo = split_mix(mix)
                remainder_into(block[k], mix, int(self.primes[layer][k]), self._remainders[layer][k], hi, lo, t, scratch)
            out[layer][start:stop] = np.repeat(block.T, self.spec.heads, axis=1)

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

import numpy as np

from engramsim.plugins.hashing.engram import (
    PrimePerOrder,
    order_mixes,
    remainder_into,
    split_mix,
)
from engramsim.registry import register


@register("hashing", "engram-one-head")
class OneHeadPerOrder(PrimePerOrder):
    """Engram's mixing with one prime head per n-gram order, shared by the order's heads (baseline)."""

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

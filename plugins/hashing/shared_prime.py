"""One prime per order shared by the order's heads, which differ by their multipliers instead.

Head j of order n reads row mix_{n,j} % p_n: mix_{n,j} is Engram's XOR mix (step 4) with head
j's own odd multipliers, row j of one draw of [heads, max_ngram] from the layer's generator
(`default_rng(seed + 10007 * layer)`, the same bound), so head 0's multipliers are the layer's
reference ones. p_n is the reference's prime search with one head per order (distinct across
the model, just above rows_per_head), so the order's heads hold H * p_n rows, the reference's
total within rounding. Heads that differed only by an offset or a factor mod one prime ((mix + j)
% p, (a_j * mix) % p) would collide on exactly the same n-grams; independent multipliers are the
cheapest way to make one prime's heads independent.
"""

from __future__ import annotations

import numpy as np

from engramsim.plugins.hashing.engram import (
    EngramHashSpec,
    PrimePerOrder,
    layer_generator,
    multiplier_half,
    order_mixes,
    remainder_into,
    split_mix,
)
from engramsim.registry import register


def head_multipliers(spec: EngramHashSpec, compressed_vocab_size: int) -> dict[int, np.ndarray]:
    """Per layer, [heads, max_ngram] odd int64 multipliers; row 0 is the layer's reference multipliers."""
    half = multiplier_half(compressed_vocab_size)
    out = {}
    for layer in spec.layer_ids:
        out[layer] = layer_generator(spec.seed, layer).integers(0, half, size=(spec.heads, spec.max_ngram), dtype=np.int64) * 2 + 1
    return out


@register("hashing", "engram-shared-prime")
class SharedPrimeHashing(PrimePerOrder):
    """One prime per n-gram order shared by its heads, each head mixing with its own multipliers."""

    def __init__(self, spec: EngramHashSpec, compressed_vocab_size: int, pad_id: int) -> None:
        """`pad_id` is the already-compressed pad id."""
        super().__init__(spec, compressed_vocab_size, pad_id)
        self.head_multipliers = head_multipliers(spec, compressed_vocab_size)

    def _hash_chunk(self, shifted: list[np.ndarray], start: int, stop: int, out: dict[int, np.ndarray]) -> None:
        n = stop - start
        t, scratch = np.empty(n), np.empty(n)
        block = np.empty((self.spec.heads_per_layer, n), dtype=np.int64)
        xs = [s[start:stop] for s in shifted]
        heads = self.spec.heads
        for layer, per_head in self.head_multipliers.items():
            for j, mult in enumerate(per_head):
                for order, mix in order_mixes(xs, mult):
                    k = order - 2
                    hi, lo = split_mix(mix)
                    remainder_into(block[k * heads + j], mix, int(self.primes[layer][k]), self._remainders[layer][k], hi, lo, t, scratch)
            out[layer][start:stop] = block.T

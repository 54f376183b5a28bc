"""Power-of-two heads: Engram's mixing, each head's row the low bits of the mix (a mask) instead
of its remainder by a distinct prime.

Sizes: each order's H heads take 2^k or 2^(k+1) rows, 2^k <= rows_per_head < 2^(k+1), as many
at 2^(k+1) as brings the order's total nearest to H * rows_per_head (the larger heads first), so
the tables match the reference's within rounding. All heads of an order share mix_n, as in the
reference: heads of one size read identical rows, and a 2^k head's row is its 2^(k+1) sibling's
row with the top bit dropped. Multiplication by an odd number and XOR carry information only
upwards, so the low k bits of the mix depend only on the low k bits of each token id.
"""

from __future__ import annotations

import numpy as np

from engramsim.plugins.hashing.engram import EngramHashSpec, NgramHashing, order_mixes
from engramsim.registry import register


def pow2_sizes(rows_per_head: int, heads: int) -> np.ndarray:
    """The heads' power-of-two sizes for one order (module docstring), largest first."""
    low = 1 << (int(rows_per_head).bit_length() - 1)
    larger = min(heads, max(0, round(heads * (rows_per_head - low) / low)))
    return np.array([2 * low] * larger + [low] * (heads - larger), dtype=np.int64)


@register("hashing", "engram-pow2-mask")
class Pow2MaskHashing(NgramHashing):
    """Engram's mixing with power-of-two heads read by a bit mask instead of distinct primes."""

    def __init__(self, spec: EngramHashSpec, compressed_vocab_size: int, pad_id: int) -> None:
        """`pad_id` is the already-compressed pad id."""
        super().__init__(spec, compressed_vocab_size, pad_id)
        sizes = np.concatenate([pow2_sizes(rows, spec.heads) for rows in spec.rows_per_head])
        self._sizes = {layer: sizes.copy() for layer in spec.layer_ids}
        self._masks = sizes - 1

    @property
    def head_sizes(self) -> dict[int, np.ndarray]:
        return self._sizes

    def _hash_chunk(self, shifted: list[np.ndarray], start: int, stop: int, out: dict[int, np.ndarray]) -> None:
        xs = [s[start:stop] for s in shifted]
        heads = self.spec.heads
        for layer, mult in self.multipliers.items():
            for order, mix in order_mixes(xs, mult):
                first = (order - 2) * heads
                for head in range(first, first + heads):
                    np.bitwise_and(mix, self._masks[head], out=out[layer][start:stop, head])

"""A straightforward Engram hashing, shaped like the published demo: loop over orders and heads,
integer `%`, stack the per-head arrays. The ground truth for parity and the benchmark baseline."""

from __future__ import annotations

import numpy as np


def reference_hash(ids: np.ndarray, multipliers: np.ndarray, primes: np.ndarray, max_ngram: int, heads: int, pad_id: int) -> np.ndarray:
    x = np.asarray(ids, dtype=np.int64)
    if x.ndim == 1:
        x = x[None, :]
    _, length = x.shape

    def shift(k: int) -> np.ndarray:
        if k == 0:
            return x
        return np.pad(x, ((0, 0), (k, 0)), mode="constant", constant_values=pad_id)[:, :length]

    tokens = [shift(k) for k in range(max_ngram)]
    all_heads = []
    for n in range(2, max_ngram + 1):
        mix = tokens[0] * multipliers[0]
        for k in range(1, n):
            mix = np.bitwise_xor(mix, tokens[k] * multipliers[k])
        for j in range(heads):
            all_heads.append(mix % int(primes[(n - 2) * heads + j]))
    return np.stack(all_heads, axis=2)

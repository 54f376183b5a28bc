"""Engram's n-gram hashing, bit-for-bit as ENGRAM.md steps 2-6.

For order n, mix_n = XOR_k (x_{t-k} * m[k]) over k < n on compressed ids (int64, wrapping);
head j of order n reads row mix_n % p_j, with p_j a prime distinct across the whole model.

The numpy path is the fast one: int64 `%` costs ~20-30 ns an element, so each remainder is
computed exactly in float64 instead (see `_float_remainder`), in cache-sized chunks on a small
thread pool. The torch path uses integer `torch.remainder` and runs on CPU and CUDA tensors;
tests pin the two to identical output.

`NgramHashing` (the windows, chunks and threads) and the step helpers (`suffix_windows`,
`order_mixes`, `split_mix`, `remainder_into`) are shared with the alternative schemes of this
folder, which differ from the reference only in how a mix becomes a head's row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from engramsim.plugins.hashing.primes import next_prime
from engramsim.registry import register
from engramsim.strategies import Hashing, HashingSetup, Params

if TYPE_CHECKING:
    from engramsim.scenario import Engram

_LAYER_SEED_PRIME = 10007
_CHUNK = 32768
_FLOAT_EXACT_LIMIT = 1 << 26  # float path is exact for primes below this (see _float_remainder)


@dataclass(frozen=True)
class EngramHashSpec:
    """What determines the row ids: Engram layers, n-gram orders, heads, per-head sizes, seed."""

    layer_ids: tuple[int, ...]
    rows_per_head: tuple[int, ...]  # one per order 2..max_ngram
    max_ngram: int = 3
    heads: int = 8
    seed: int = 0
    pad_id: int = 2  # raw id, mapped through the compressed vocabulary

    def __post_init__(self) -> None:
        if self.max_ngram < 2:
            raise ValueError(f"max_ngram must be >= 2, got {self.max_ngram}")
        if self.heads < 1:
            raise ValueError(f"heads must be >= 1, got {self.heads}")
        if not self.layer_ids or any(layer < 0 for layer in self.layer_ids):
            raise ValueError(f"layer ids must be non-negative, got {list(self.layer_ids)}")
        if len(set(self.layer_ids)) != len(self.layer_ids):
            raise ValueError(f"layer ids must be distinct, got {list(self.layer_ids)}")
        if len(self.rows_per_head) != self.max_ngram - 1:
            raise ValueError(
                f"rows_per_head needs one size per order 2..{self.max_ngram} "
                f"({self.max_ngram - 1} values), got {len(self.rows_per_head)}"
            )
        if any(r < 1 for r in self.rows_per_head):
            raise ValueError(f"rows_per_head must be positive, got {list(self.rows_per_head)}")

    @property
    def heads_per_layer(self) -> int:
        return (self.max_ngram - 1) * self.heads

    @classmethod
    def from_engram(cls, e: Engram) -> EngramHashSpec:
        """The spec of a scenario's `model.engram` section."""
        return cls(tuple(e.layers), e.rows_per_order, e.max_ngram, e.heads, e.seed)


def layer_primes(spec: EngramHashSpec) -> dict[int, np.ndarray]:
    """Per layer, the prime table size of every head, order-major (ENGRAM.md step 5)."""
    taken: set[int] = set()
    primes: dict[int, np.ndarray] = {}
    for layer in spec.layer_ids:
        sizes: list[int] = []
        for order_rows in spec.rows_per_head:
            start = order_rows - 1
            for _ in range(spec.heads):
                start = next_prime(start, taken)
                taken.add(start)
                sizes.append(start)
        primes[layer] = np.array(sizes, dtype=np.int64)
    return primes


def multiplier_half(compressed_vocab_size: int) -> int:
    """Multipliers are 2r + 1 with r drawn from [0, half) (ENGRAM.md step 3)."""
    return max(1, (np.iinfo(np.int64).max // compressed_vocab_size) // 2)


def layer_generator(seed: int, layer: int) -> np.random.Generator:
    """The generator a layer's multipliers are drawn from (ENGRAM.md step 3)."""
    return np.random.default_rng(seed + _LAYER_SEED_PRIME * layer)


def layer_multipliers(spec: EngramHashSpec, compressed_vocab_size: int) -> dict[int, np.ndarray]:
    """Per layer, max_ngram odd int64 multipliers (ENGRAM.md step 3)."""
    half = multiplier_half(compressed_vocab_size)
    out = {}
    for layer in spec.layer_ids:
        rng = layer_generator(spec.seed, layer)
        r = rng.integers(0, half, size=spec.max_ngram, dtype=np.int64)
        out[layer] = r * 2 + 1
    return out


class _Remainder:
    """Exact floor-remainder of int64 values by one prime p, computed in float64.

    mix = hi * 2^32 + lo - 2^63 with hi = (mix >> 32) + 2^31 in [0, 2^32) and lo in [0, 2^32),
    so mix mod p = (h * c + lo + k) mod p with c = 2^32 mod p, k = -2^63 mod p and h = hi
    (or hi mod p, when p >= 2^21). Every term is an integer below 2^53, so float64 holds it
    exactly; q = floor(t / p) may be off by one, and the two corrections put r in [0, p).
    """

    def __init__(self, p: int) -> None:
        self.p = float(p)
        self.inv = 1.0 / p
        self.c = float((1 << 32) % p)
        self.k = float((-(1 << 63)) % p)
        self.reduce_hi = p >= (1 << 21)

    def _mod(self, t: np.ndarray, scratch: np.ndarray) -> np.ndarray:
        np.multiply(t, self.inv, out=scratch)
        np.floor(scratch, out=scratch)
        scratch *= self.p
        t -= scratch
        np.less(t, 0.0, out=scratch)
        scratch *= self.p
        t += scratch
        np.greater_equal(t, self.p, out=scratch)
        scratch *= self.p
        t -= scratch
        return t

    def __call__(self, hi: np.ndarray, lo: np.ndarray, t: np.ndarray, scratch: np.ndarray) -> np.ndarray:
        if self.reduce_hi:
            t[:] = hi
            h = self._mod(t, scratch)
            np.multiply(h, self.c, out=t)
        else:
            np.multiply(hi, self.c, out=t)
        t += lo
        t += self.k
        return self._mod(t, scratch)


def remainder_table(primes: Sequence[int] | np.ndarray) -> list[_Remainder | None]:
    """One exact float remainder per prime, None where the prime is too large for it."""
    return [_Remainder(int(p)) if p < _FLOAT_EXACT_LIMIT else None for p in primes]


def split_mix(mix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hi, lo) of int64 values as float64, the input of `_Remainder`."""
    return ((mix >> 32) + (1 << 31)).astype(np.float64), (mix & 0xFFFFFFFF).astype(np.float64)


def remainder_into(out: np.ndarray, mix: np.ndarray, p: int, rem: _Remainder | None, hi: np.ndarray, lo: np.ndarray,
                   t: np.ndarray, scratch: np.ndarray) -> None:
    """out = mix mod p (floor remainder), by the float path when `rem` is given (hi, lo: `split_mix(mix)`)."""
    if rem is None:
        np.remainder(mix, p, out=out)
    else:
        out[:] = rem(hi, lo, t, scratch)


def suffix_windows(ids: np.ndarray, starts: np.ndarray, max_ngram: int, pad_id: int) -> list[np.ndarray]:
    """x_{t-k} for k < max_ngram over flat `ids`; positions before a sequence's start hold the pad (ENGRAM.md step 2)."""
    index = np.arange(ids.size)
    position = index - np.repeat(starts, np.diff(np.append(starts, ids.size)))
    out = [ids]
    for k in range(1, max_ngram):
        shifted = np.empty_like(ids)
        shifted[k:] = ids[:-k] if k < ids.size else ids[:0]
        shifted[position < k] = pad_id
        out.append(shifted)
    return out


def order_mixes(xs: Sequence[np.ndarray], multipliers: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(n, mix_n) for n = 2..len(xs), mix_n = XOR_k<n x_{t-k} * m[k] (ENGRAM.md step 4).

    One array is updated in place from order to order: use each mix before asking for the next.
    """
    mix = xs[0] * multipliers[0]
    for order in range(2, len(xs) + 1):
        mix ^= xs[order - 1] * multipliers[order - 1]
        yield order, mix


class NgramHashing(Hashing):
    """Engram's windows and chunked, threaded hashing; a subclass turns the windows of a chunk into
    rows (`_hash_chunk`), usually through `order_mixes`. The reference and its alternatives share it."""

    def __init__(self, spec: EngramHashSpec, compressed_vocab_size: int, pad_id: int) -> None:
        """`pad_id` is the already-compressed pad id."""
        self.spec = spec
        self.pad_id = int(pad_id)
        self.multipliers = layer_multipliers(spec, compressed_vocab_size)

    @classmethod
    def from_setup(cls, params: Params, setup: HashingSetup) -> NgramHashing:
        return cls(EngramHashSpec.from_engram(setup.engram), setup.vocab_size, setup.pad_id)

    def _hash_chunk(self, shifted: list[np.ndarray], start: int, stop: int, out: dict[int, np.ndarray]) -> None:
        """Write rows [stop - start, heads_per_layer] of positions start..stop into out[layer][start:stop]."""
        raise NotImplementedError

    def _shifted(self, ids: np.ndarray, starts: np.ndarray) -> list[np.ndarray]:
        return suffix_windows(ids, starts, self.spec.max_ngram, self.pad_id)

    def hash(self, compressed_ids: np.ndarray, threads: int = 2) -> dict[int, np.ndarray]:
        """Row index per head (before table offsets) for every layer: [..., T, heads_per_layer].

        `compressed_ids` is [T] (one sequence) or [B, T] (each row its own sequence).
        """
        ids = np.asarray(compressed_ids, dtype=np.int64)
        if ids.ndim not in (1, 2):
            raise ValueError(f"expected ids of shape [T] or [B, T], got {ids.shape}")
        rows, length = (1, ids.size) if ids.ndim == 1 else ids.shape
        flat = self.hash_sequences(ids.reshape(-1), np.arange(rows, dtype=np.int64) * length, threads)
        return {layer: a.reshape(*ids.shape, self.spec.heads_per_layer) for layer, a in flat.items()}

    def hash_sequences(self, compressed_ids: np.ndarray, starts: np.ndarray, threads: int = 2) -> dict[int, np.ndarray]:
        """Like `hash` for many sequences of different lengths laid end to end in one flat array;
        `starts` holds each sequence's first index (sorted, the first 0). Returns [N, heads]."""
        ids = np.ascontiguousarray(compressed_ids, dtype=np.int64)
        starts = np.asarray(starts, dtype=np.int64)
        if ids.size and (starts.size == 0 or starts[0] != 0):
            raise ValueError("sequence starts must begin with 0")
        shifted = self._shifted(ids, starts)
        total = ids.size
        out = {layer: np.empty((total, self.spec.heads_per_layer), dtype=np.int64) for layer in self.spec.layer_ids}
        bounds = [(s, min(total, s + _CHUNK)) for s in range(0, total, _CHUNK)]
        if threads > 1 and len(bounds) > 1:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda b: self._hash_chunk(shifted, b[0], b[1], out), bounds))
        else:
            for b in bounds:
                self._hash_chunk(shifted, b[0], b[1], out)
        return out


class PrimePerOrder(NgramHashing):
    """A base for schemes with one prime per n-gram order (the reference's prime search with one
    head: distinct across the model, just above rows_per_head) read by all the order's heads, so
    the order holds H * p_n rows, the reference's total within rounding."""

    def __init__(self, spec: EngramHashSpec, compressed_vocab_size: int, pad_id: int) -> None:
        """`pad_id` is the already-compressed pad id."""
        super().__init__(spec, compressed_vocab_size, pad_id)
        self.primes = layer_primes(dataclasses.replace(spec, heads=1))  # per layer, one per order
        self._remainders = {layer: remainder_table(p) for layer, p in self.primes.items()}

    @property
    def head_sizes(self) -> dict[int, np.ndarray]:
        return {layer: np.repeat(p, self.spec.heads) for layer, p in self.primes.items()}


@register("hashing", "engram")
class EngramHashing(NgramHashing):
    """DeepSeek Engram multi-head n-gram hashing (XOR of odd multipliers, distinct prime heads)."""

    def __init__(self, spec: EngramHashSpec, compressed_vocab_size: int, pad_id: int) -> None:
        """`pad_id` is the already-compressed pad id."""
        super().__init__(spec, compressed_vocab_size, pad_id)
        self.primes = layer_primes(spec)

    @property
    def head_sizes(self) -> dict[int, np.ndarray]:
        return self.primes

    @cached_property
    def _remainders(self) -> dict[int, list[_Remainder | None]]:
        return {layer: remainder_table(primes) for layer, primes in self.primes.items()}

    # ---- numpy ---------------------------------------------------------------------------
    def _hash_chunk(self, shifted: list[np.ndarray], start: int, stop: int, out: dict[int, np.ndarray]) -> None:
        n = stop - start
        t, scratch = np.empty(n), np.empty(n)
        block = np.empty((self.spec.heads_per_layer, n), dtype=np.int64)
        xs = [s[start:stop] for s in shifted]
        for layer, mult in self.multipliers.items():
            head = 0
            for _, mix in order_mixes(xs, mult):
                hi, lo = split_mix(mix)
                for _ in range(self.spec.heads):
                    remainder_into(block[head], mix, int(self.primes[layer][head]), self._remainders[layer][head], hi, lo, t, scratch)
                    head += 1
            out[layer][start:stop] = block.T

    # ---- torch ---------------------------------------------------------------------------
    def hash_torch(self, compressed_ids):
        """Same ids as `hash`, for a torch int64 tensor [T] or [B, T] on any device."""
        import torch

        ids = compressed_ids.to(torch.int64)
        batch = ids if ids.dim() == 2 else ids.unsqueeze(0)
        pad = self.spec.max_ngram - 1
        padded = torch.nn.functional.pad(batch, (pad, 0), value=self.pad_id)
        length = batch.shape[1]
        xs = [padded[:, pad - k : pad - k + length] for k in range(self.spec.max_ngram)]
        out = {}
        for layer, mult in self.multipliers.items():
            m = torch.from_numpy(mult).to(ids.device)
            primes = torch.from_numpy(self.primes[layer]).to(ids.device).view(self.spec.max_ngram - 1, self.spec.heads)
            mix = xs[0] * m[0]
            per_order = []
            for order in range(2, self.spec.max_ngram + 1):
                mix = mix ^ (xs[order - 1] * m[order - 1])
                per_order.append(torch.remainder(mix.unsqueeze(-1), primes[order - 2]))
            ids_layer = torch.cat(per_order, dim=-1)
            out[layer] = ids_layer if ids.dim() == 2 else ids_layer.squeeze(0)
        return out

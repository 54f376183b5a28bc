"""What a trace looks like to Engram: n-gram skew and the reuse of one layer's table rows.

`trace_stats(trace, spec)` returns a `TraceStats` (`.to_dict()` for JSON). The measures:

- **n-grams** (orders 1..max_ngram) on compressed ids, counted inside documents only (an n-gram
  never spans two documents; no padding). For each order: occurrences, distinct n-grams, and
  the share of occurrences covered by the most frequent 1% and 10% of the distinct n-grams
  (the top ceil(q * distinct), at least one).
- **Zipf exponent** per order: ordinary least squares of log(count) on log(rank) over about 50
  log-spaced ranks from 1 to R, where R is the last rank whose n-gram occurs at least
  `ZIPF_MIN_COUNT` (5) times; s is minus the slope. Log-spaced ranks give each decade equal
  weight; cutting at count 5 keeps the hapax plateau out of the fit. This describes the head
  of the curve (the part a hot-row cache sees); it is not a maximum-likelihood estimate.
  None when R < 10.
- **Reuse distance** of the rows of one Engram layer. Rows come from
  `EngramHashing.hash`, one document at a time (so each document starts with the pad id, as
  the hashing pads a sequence), as global row ids of the layer's single table (head offset +
  row). The access stream is position-major, head-minor: token t's heads 1..H, then token t+1.
  The reuse distance of an access is the number of *distinct* rows touched since the previous
  access to the same row (the LRU stack distance: an LRU cache of C rows hits exactly the
  accesses with distance < C). It is exact, computed in O(N log N) numpy (see
  `reuse_distances`). Reported: quantiles p50/p90/p99 over re-accesses, and the share of
  accesses that are first-time (cold).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from engramsim.errors import InputError
from engramsim.plugins.hashing.engram import EngramHashing, EngramHashSpec
from engramsim.traces.format import Trace, tokenizer_info

ZIPF_MIN_COUNT = 5
ZIPF_POINTS = 50
COVERAGE_SHARES = (0.01, 0.10)
REUSE_QUANTILES = (0.5, 0.9, 0.99)
REUSE_METRIC = "distinct rows touched between two accesses of the same row (exact LRU stack distance)"

DEMO_SPEC = EngramHashSpec(layer_ids=(1, 15), rows_per_head=(646_400, 646_400), max_ngram=3, heads=8, seed=0)


# ---- n-grams ----------------------------------------------------------------------------------
def ngram_keys(ids: np.ndarray, doc_offsets: np.ndarray, order: int) -> np.ndarray:
    """One int64 key per n-gram occurrence inside a document (distinct n-grams, distinct keys).

    ids are non-negative; keys pack the n ids in base (max id + 1) when that fits in 63 bits,
    otherwise n-grams are numbered by `np.unique` over rows.
    """
    ids = np.asarray(ids, dtype=np.int64)
    n = ids.size
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    ends = np.append(np.asarray(doc_offsets, dtype=np.int64)[1:], n)
    lengths = ends - np.asarray(doc_offsets, dtype=np.int64)
    # start positions whose window of `order` tokens stays inside the document
    doc_end = np.repeat(ends, lengths)
    starts = np.flatnonzero(np.arange(n) + order <= doc_end)
    if starts.size == 0:
        return np.empty(0, dtype=np.int64)
    base = int(ids.max()) + 1
    if order * math.log2(max(base, 2)) < 63:
        keys = ids[starts].copy()
        for k in range(1, order):
            keys = keys * base + ids[starts + k]
        return keys
    windows = np.stack([ids[starts + k] for k in range(order)], axis=1)
    return np.unique(windows, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)


def zipf_exponent(counts_desc: np.ndarray, min_count: int = ZIPF_MIN_COUNT, points: int = ZIPF_POINTS) -> tuple[float | None, int]:
    """(s, R): least-squares slope of log count on log rank at log-spaced ranks 1..R (see module doc)."""
    counts_desc = np.asarray(counts_desc)
    r_max = int(np.count_nonzero(counts_desc >= min_count))
    if r_max < 10:
        return None, r_max
    ranks = np.unique(np.round(np.geomspace(1, r_max, points)).astype(np.int64))
    x = np.log(ranks.astype(np.float64))
    y = np.log(counts_desc[ranks - 1].astype(np.float64))
    slope = np.polyfit(x, y, 1)[0]
    return float(-slope), r_max


@dataclass(frozen=True)
class NgramStats:
    order: int
    occurrences: int
    distinct: int
    top_1pct_coverage: float  # share of occurrences of the most frequent 1% of distinct n-grams
    top_10pct_coverage: float
    zipf_exponent: float | None  # None: too few repeated n-grams to fit
    zipf_fit_ranks: int  # R: the fit used ranks 1..R


def coverage(counts_desc: np.ndarray, share: float) -> float:
    """Share of occurrences covered by the top ceil(share * distinct) (at least 1) n-grams."""
    if counts_desc.size == 0:
        return 0.0
    top = max(1, math.ceil(share * counts_desc.size))
    return float(counts_desc[:top].sum() / counts_desc.sum())


def ngram_stats(ids: np.ndarray, doc_offsets: np.ndarray, order: int) -> NgramStats:
    keys = ngram_keys(ids, doc_offsets, order)
    counts = np.sort(np.unique(keys, return_counts=True)[1])[::-1] if keys.size else np.empty(0, np.int64)
    s, r_max = zipf_exponent(counts)
    return NgramStats(
        order=order,
        occurrences=int(keys.size),
        distinct=int(counts.size),
        top_1pct_coverage=coverage(counts, COVERAGE_SHARES[0]),
        top_10pct_coverage=coverage(counts, COVERAGE_SHARES[1]),
        zipf_exponent=s,
        zipf_fit_ranks=r_max,
    )


# ---- reuse distance ---------------------------------------------------------------------------
def previous_access(seq: np.ndarray) -> np.ndarray:
    """prev[i] = index of the previous access to seq[i], or -1 for a first access."""
    seq = np.asarray(seq, dtype=np.int64)
    n = seq.size
    prev = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return prev
    lo = int(seq.min())
    shift = int(n).bit_length()
    if (int(seq.max()) - lo + 1) < 2 ** (62 - shift):
        # sorting unique (item << shift | index) keys in place beats a stable argsort by far
        item = seq - lo
        item <<= shift
        item |= np.arange(n, dtype=np.int64)
        item.sort()
        order = item & ((1 << shift) - 1)
        item >>= shift
    else:
        order = np.argsort(seq, kind="stable")
        item = seq[order]
    same = item[1:] == item[:-1]
    prev[order[1:][same]] = order[:-1][same]
    return prev


_CHUNK_BITS = 14  # levels whose blocks fit in 2^14 positions run chunk by chunk, in cache


def _merge_levels(packed: np.ndarray, k_hi: int, k_lo: int) -> np.ndarray:
    """Levels k_hi..k_lo of `_count_smaller_before` on `packed` (starts at a block boundary)."""
    n = packed.size
    spare = np.empty_like(packed)
    pos = np.arange(n, dtype=np.int32)
    bit, lb, newp = (np.empty(n, dtype=np.int32) for _ in range(3))
    wide = np.empty(n, dtype=np.int64)
    for k in range(k_hi, k_lo - 1, -1):
        block, half = 1 << (k + 1), 1 << k
        np.right_shift(packed, k, out=wide)
        np.bitwise_and(wide, 1, out=bit, casting="unsafe")  # 1: element in its block's right half
        np.cumsum(bit, out=lb)
        lb -= bit
        np.subtract(pos, lb, out=lb)  # left-half elements before this position, whole array
        whole = n - n % block
        if whole:
            rows = lb[:whole].reshape(-1, block)
            rows -= rows[:, :1].copy()  # ... within this block
        if whole < n:
            lb[whole:] -= lb[whole]
        np.multiply(lb, bit, out=newp)  # the count this level adds (right-half elements only)
        np.left_shift(newp, 32, out=wide, dtype=np.int64)
        packed += wide
        # stable partition: left -> start + lb, right -> start + half + (offset - lb)
        np.bitwise_and(pos, block - 1, out=newp)
        newp -= lb
        newp -= lb
        newp += half
        newp *= bit
        newp += lb
        np.bitwise_and(pos, ~(block - 1), out=bit)
        newp += bit
        spare[newp] = packed
        packed, spare = spare, packed
    return packed


def _count_smaller_before(values: np.ndarray) -> np.ndarray:
    """c[i] = #{j < i : values[j] < values[i]}, for distinct non-negative int values.

    Top-down merge counting: at level k the elements are arranged by (index >> (k+1), value),
    so every block of 2^(k+1) positions holds one index block in value order. An element from
    the right half of its index block (bit k of its index set) counts the left-half elements
    before it in the arrangement (a cumulative sum); a stable partition of every block by bit k
    then gives the arrangement of level k-1. Each level is a few O(N) numpy passes and one
    scatter: O(N log N) in all. The count rides in the high 32 bits of the element index; the
    low levels run chunk by chunk so their passes stay in cache.
    """
    values = np.asarray(values, dtype=np.int64)
    n = values.size
    if n < 2:
        return np.zeros(n, dtype=np.int64)
    if n >= 2**31:
        raise ValueError(f"at most 2^31 - 1 values, got {n}")
    # element indices in value order: values are distinct, so sort unique (value, index) keys
    shift = int(n).bit_length()
    keys = ((values - values.min()) << shift) | np.arange(n, dtype=np.int64)
    packed = np.sort(keys) & ((1 << shift) - 1)
    top = int(n - 1).bit_length() - 1
    if top >= _CHUNK_BITS:
        packed = _merge_levels(packed, top, _CHUNK_BITS)
    chunk = 1 << _CHUNK_BITS
    for s in range(0, n, chunk):
        piece = packed[s : s + chunk]
        piece[:] = _merge_levels(piece.copy(), min(top, _CHUNK_BITS - 1), 0)
    out = np.empty(n, dtype=np.int64)
    out[packed & 0xFFFFFFFF] = packed >> 32
    return out


def reuse_distances(seq: np.ndarray) -> np.ndarray:
    """Exact LRU stack distance of every access (-1 for first accesses), O(N log N).

    For access i whose previous access to the same item is p, the distinct items touched in
    (p, i) are those whose first touch inside the interval is at some j with prev[j] < p
    (prev = -1 for first accesses). Every j <= p has prev[j] < p, so
        d_i = #{j < i : prev[j] < p} - (p + 1)
            = #{j < i : prev[j] = -1} + #{j < i : 0 <= prev[j] < p} - (p + 1),
    and the second count runs over re-accesses only, with `_count_smaller_before`.
    """
    prev = previous_access(seq)
    again = prev >= 0
    firsts_before: np.ndarray = np.cumsum(~again) - (~again)
    dist = np.full(prev.size, -1, dtype=np.int64)
    p = prev[again]
    dist[again] = firsts_before[again] + _count_smaller_before(p) - p - 1
    return dist


@dataclass(frozen=True)
class ReuseStats:
    layer: int
    heads: int  # rows read per token in this layer: (max_ngram - 1) * heads
    table_rows: int  # rows of the layer's table (sum of its head primes)
    accesses: int
    distinct_rows: int
    first_access_share: float  # cold accesses / all accesses
    p50: float | None  # quantiles of the reuse distance over re-accesses (None: no re-access)
    p90: float | None
    p99: float | None
    metric: str = REUSE_METRIC


def layer_rows(compressed_ids: np.ndarray, doc_offsets: np.ndarray, hashing: EngramHashing, layer: int) -> np.ndarray:
    """Global row ids [T, heads] of one layer, hashing each document as its own sequence."""
    ends = np.append(np.asarray(doc_offsets)[1:], compressed_ids.size)
    parts = [hashing.hash(compressed_ids[s:e])[layer] for s, e in zip(np.asarray(doc_offsets).tolist(), ends.tolist())]
    return np.concatenate(parts) + hashing.offsets[layer]


def reuse_stats(rows: np.ndarray, layer: int, table_rows: int) -> ReuseStats:
    rows = np.asarray(rows)
    heads = rows.shape[1] if rows.ndim == 2 else 1
    dist = reuse_distances(rows.reshape(-1))
    reuse = dist[dist >= 0]
    quant = (
        [float(q) for q in np.quantile(reuse, REUSE_QUANTILES, method="inverted_cdf")]
        if reuse.size
        else [None] * len(REUSE_QUANTILES)
    )
    first = int(dist.size - reuse.size)
    return ReuseStats(
        layer=layer,
        heads=int(heads),
        table_rows=int(table_rows),
        accesses=int(dist.size),
        distinct_rows=first,
        first_access_share=first / dist.size if dist.size else 0.0,
        p50=quant[0],
        p90=quant[1],
        p99=quant[2],
    )


# ---- the whole trace --------------------------------------------------------------------------
@dataclass(frozen=True)
class TraceStats:
    name: str
    tokens: int
    documents: int
    source: str
    licence: str
    spec: dict
    ngrams: list[NgramStats] = field(default_factory=list)
    reuse: ReuseStats | None = None

    def ngram(self, order: int) -> NgramStats:
        return next(s for s in self.ngrams if s.order == order)

    def to_dict(self) -> dict:
        return asdict(self)


def compressed_ids(trace: Trace, tokenizer_path: str | Path | None = None, pad_id: int = 2) -> tuple[np.ndarray, int, int]:
    """(compressed ids, compressed vocabulary size, compressed pad id) of a trace.

    A trace whose meta tokenizer is null already holds compressed ids (synthetic traces): its
    vocabulary size is meta["vocab_size"] (or max id + 1) and `pad_id` is used as is.
    Otherwise the tokenizer (default: DeepSeek V4) must be the one the trace was built with.
    """
    from engramsim.tokenizer import compressed_vocab, default_tokenizer_path

    meta_tok = trace.meta.get("tokenizer")
    ids = trace.tokens.astype(np.int64)
    if meta_tok is None:
        return ids, max(int(trace.meta.get("vocab_size") or 0), int(ids.max()) + 1, pad_id + 1), pad_id
    path = Path(tokenizer_path) if tokenizer_path is not None else default_tokenizer_path()
    info = tokenizer_info(path)
    expected = meta_tok.get("sha256") if isinstance(meta_tok, dict) else None
    if expected is not None and expected != info["sha256"]:
        raise InputError(
            path,
            f"trace {trace.name!r} was tokenized with {meta_tok.get('file')} (sha256 {str(expected)[:12]}...), "
            f"not this tokenizer (sha256 {info['sha256'][:12]}...); pass the right one with --tokenizer",
        )
    vocab = compressed_vocab(path)
    if int(ids.max()) >= vocab.raw_size:
        raise InputError(path, f"trace {trace.name!r} holds token id {int(ids.max())}, outside this vocabulary of {vocab.raw_size}")
    return vocab.compress(ids), vocab.size, int(vocab.table[pad_id])


def trace_stats(
    trace: Trace,
    spec: EngramHashSpec = DEMO_SPEC,
    layer: int | None = None,
    tokenizer_path: str | Path | None = None,
    orders: tuple[int, ...] | None = None,
) -> TraceStats:
    """All statistics of a trace for one Engram configuration (see the module docstring).

    `layer` (default: the spec's first) is the layer whose row reuse is measured; primes depend
    on every layer of the spec, so pass the model's full layer list in `spec`.
    """
    layer = spec.layer_ids[0] if layer is None else layer
    if layer not in spec.layer_ids:
        raise ValueError(f"layer {layer} is not one of the spec's layers {list(spec.layer_ids)}")
    orders = tuple(range(1, spec.max_ngram + 1)) if orders is None else orders
    ids, vocab_size, pad = compressed_ids(trace, tokenizer_path, spec.pad_id)
    ngrams = [ngram_stats(ids, trace.doc_offsets, n) for n in orders]
    hashing = EngramHashing(spec, vocab_size, pad)
    rows = layer_rows(ids, trace.doc_offsets, hashing, layer)
    reuse = reuse_stats(rows, layer, hashing.rows_per_layer[layer])
    return TraceStats(
        name=trace.name,
        tokens=len(trace),
        documents=trace.n_documents,
        source=str(trace.meta.get("source")),
        licence=str(trace.meta.get("licence")),
        spec={
            "layer_ids": list(spec.layer_ids),
            "rows_per_head": list(spec.rows_per_head),
            "max_ngram": spec.max_ngram,
            "heads": spec.heads,
            "seed": spec.seed,
        },
        ngrams=ngrams,
        reuse=reuse,
    )

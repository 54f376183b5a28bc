"""The kernel inventory of a step and the formulas that price it, shared by the simulator's cost
model and the calibration's fits, so what is fitted is exactly what is simulated.

A step's GPU work is a list of kernels (a GEMM with the small ops fused around it, the attention
core, ...), each a `Work`: FLOPs, HBM bytes, the weight elements its GEMMs multiply by and the
GEMMs' shapes, counted explicitly so tests can check them by hand and a calibration can fit the
rates. Each `Work` is one kernel group, which a profile's `kernel_overhead_us` charges a fixed
cost (the small ops and dispatches around its main kernel). `roofline` prices kernels
(`wave_flops` gives a GEMM's FLOPs under wave quantisation, `grouped_weights` the weights of its
grouped launches); `gather_seconds`, `dma_seconds` and `zero_copy_seconds` price fetches. Every
formula takes plain numbers or numpy arrays (the fits evaluate them over all samples at once).

Modelled: the GEMMs of attention, either GQA (q, k, v, o with grouped KV heads) or MLA (query,
optionally through its latent; the KV down-projection to the cached latent + rotary key; decode
sequences in the absorbed form, multi-token sequences up-projecting their context's latent), the
attention itself (causal query-key pairs, reading the KV cache; decode sequences' KV reads kept
apart as `attention_bytes`, which a GPU reads at its own rate), the dense SwiGLU MLP or an MoE
layer (shared + top-k routed experts; weights read once per step for the experts the step
touches), mHC residual streams (per sublayer: norm + mixing-coefficient GEMM + pre-mix, then the
post/residual mix), the Engram layer (HBM row gather, fused key/value projection, gating and
short-conv traffic), embedding, final norm and LM head; activations are read and written once
per kernel. Every backbone kernel but the attention core runs over `Step.compute_tokens` rows (a
CUDA graph replays at its padded batch size); the attention core, KV reads and writes, the
Engram layer and the LM head (one row per sampled sequence) see only real tokens.

Ignored: fp8 tensor-core speed-ups (every GEMM runs at the bf16 peak whatever the dtype), FLOPs
of element-wise ops (norms, activations, mHC mixes, rotary embedding: their traffic is counted),
the mHC stream expansion at the embedding and its reduction before the head, kernel fusion that
saves activation traffic, caches (L2) that would save re-reads, the attention kernel re-reading
K/V per query tile in long prefills (compute dominates there), GEMM libraries' choice of tile
shape and stream-K (one tile shape for every GEMM; k split only when a launch has fewer tiles
than SMs), MoE load imbalance, tensor/expert parallelism, and the Engram short-conv's decode
state.

Units: FLOPs, bytes, seconds, bytes/s, FLOP/s.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple, TypeVar, Union

import numpy as np

from engramsim.hbm import kv_bytes_per_token
from engramsim.scenario import DTYPE_BYTES, Backbone, Model
from engramsim.steps import Step

MIN_TILE_M = 16
"""The fewest rows a GEMM tile has: tensor-core MMA instructions work on 16-row fragments."""
LOGIT_BYTES = 4  # logits are written in fp32 and read once more by the sampler
ENGRAM_ELEMENTWISE_PASSES = 15
"""Reads/writes of a [tokens, hc_mult, hidden] tensor by the Engram layer's small kernels: key
RMSNorm (r+w), hidden-state RMSNorm (r+w), key-query dot product (2 r), gate x value (r+w),
short-conv RMSNorm (r+w), depthwise conv + SiLU (r+w), residual add (2 r + w)."""

BlockKind = Literal["dense", "moe"]
Num = TypeVar("Num", float, np.ndarray)
"""Every pricing formula takes plain numbers or numpy arrays, and returns what it was given."""
Amount = Union[float, np.ndarray]
"""A count or size of one step, or one per step of a `StepBatch`."""


class Gemm(NamedTuple):
    """One GEMM launch: `batch` products [m, k] @ [k, n] run as one grouped kernel (per-head
    products, MoE experts). `m` and `batch` may be expectations (routed experts' rows)."""

    m: Amount
    n: int
    k: int
    batch: Amount = 1.0


@dataclass(frozen=True)
class Work:
    """What a kernel group costs before the hardware is known: FLOPs, HBM bytes moved (of which
    `attention_bytes` are decode attention's KV-cache reads, which a GPU serves at its own rate),
    the weight elements its GEMMs multiply by (what a GEMM's small-batch inefficiency scales with)
    and the shapes of its GEMMs (what wave quantisation needs)."""

    flops: Amount = 0.0
    bytes: Amount = 0.0
    weights: Amount = 0.0
    attention_bytes: Amount = 0.0
    gemms: tuple[Gemm, ...] = ()

    def __add__(self, other: Work) -> Work:
        return Work(self.flops + other.flops, self.bytes + other.bytes, self.weights + other.weights,
                    self.attention_bytes + other.attention_bytes, self.gemms + other.gemms)


def total(kernels: list[Work]) -> Work:
    return sum(kernels, Work())


def gemm(tokens: Amount, k: int, n: int, dtype_bytes: float, extra_elems: int = 0, batch: int = 1) -> Work:
    """`batch` products [tokens, k] @ [k, n] in one launch (`batch` > 1: one per head, the input
    and output of a token being `batch` slices): weights read once, input read, output written,
    plus `extra_elems` per token of small ops fused around it (norms, residual adds)."""
    params = batch * k * n
    return Work(2.0 * tokens * params, (params + tokens * (batch * (k + n) + extra_elems)) * dtype_bytes,
                gemm_weights(tokens, params), gemms=(Gemm(tokens, n, k, batch),))


def gemm_weights(rows: Amount, weights: Amount) -> Amount:
    """The weights a GEMM over `rows` rows pays the small-batch penalty on: none for one row,
    which libraries run as a matrix-vector product streaming the weights (no tiling to waste)."""
    if isinstance(rows, np.ndarray):
        return np.where(rows > 1, weights, 0.0)
    return weights if rows > 1 else 0.0


def grouped_weights(work: Work) -> Amount:
    """Of `work.weights`, those its grouped launches multiply (GEMMs of `batch` != 1: per-head
    products, routed experts): libraries run them as many small products, each reaching the compute
    peak later than one GEMM over the same rows (`roofline`'s `grouped_half_rows`)."""
    out: Amount = 0
    for g in work.gemms:
        if isinstance(g.m, np.ndarray) or isinstance(g.batch, np.ndarray):  # a `StepBatch`'s launches, one per step
            out = out + np.where((np.asarray(g.batch) != 1) & (np.asarray(g.m) > 1), g.n * g.k * g.batch, 0)
        elif g.batch != 1 and g.m > 1:
            out = out + g.n * g.k * g.batch
    return out


def wave_flops(work: Work, sms: int, tile_m: int, tile_n: int) -> Amount:
    """The FLOPs `work`'s compute lasts as long as when each GEMM launch's output tiles run in
    waves over `sms` SMs: ceil(tiles / sms) waves, each as long as one tile's 2·tile_m·tile_n·k
    FLOPs on every SM, filled or not. A launch of fewer tiles than SMs splits k over
    floor(sms / tiles) SMs per tile (split-K, which GEMM libraries pick for such shapes), its one
    wave lasting k / splits. A one-row product is a matrix-vector product (no tiles) and keeps its
    own FLOPs, as do the work's non-GEMM FLOPs. A GEMM of fewer rows than `tile_m` runs tiles of
    the next power of two rows, at least `MIN_TILE_M` (libraries pick skinny tiles for skinny
    GEMMs, fused-MoE kernels 16-row blocks for experts with few tokens)."""
    excess: Amount = 0.0  # added launch by launch (not `sum`, which compensates floats on Python 3.12)
    for shape in work.gemms:
        excess = excess + _wave_excess_of(shape, sms, tile_m, tile_n)
    return work.flops + excess


def _wave_excess_of(shape: Gemm, sms: int, tile_m: int, tile_n: int) -> Amount:
    """`_wave_excess` of one launch, or of one launch per step of a `StepBatch` (its rows and
    batch arrays): each distinct shape priced once by the same scalar formula."""
    m, n, k, batch = shape
    if not isinstance(m, np.ndarray) and not isinstance(batch, np.ndarray):
        return _wave_excess(m, n, k, batch, sms, tile_m, tile_n)
    pairs = np.stack(np.broadcast_arrays(np.asarray(m, dtype=np.float64), np.asarray(batch, dtype=np.float64)), axis=1)
    return _per_distinct(pairs, lambda rows, launches: _wave_excess(rows, n, k, launches, sms, tile_m, tile_n))


def _per_distinct(keys: np.ndarray, formula: Callable[..., float]) -> np.ndarray:
    """`formula(*row)` of every row of `keys` (one per step of a `StepBatch`), each distinct row
    computed once by the scalar formula, so a batch's floats are the ones a step alone gets."""
    distinct, at = np.unique(keys, axis=0, return_inverse=True)
    return np.array([formula(*row) for row in distinct.tolist()], dtype=np.float64)[at.reshape(-1)]


@functools.lru_cache(maxsize=1024)
def _wave_excess(m: float, n: int, k: int, batch: float, sms: int, tile_m: int, tile_n: int) -> float:
    """The FLOPs one GEMM launch's waves last beyond its own (`wave_flops`); remembered, since a
    run's steps repeat a few shapes (graph-padded decode batches); bounded, so memory does not
    grow with the steps."""
    if m <= 1 or batch <= 0:  # a matrix-vector product, or no launch (shared experts of a model without any)
        return 0.0
    rows_tile = min(tile_m, max(MIN_TILE_M, 1 << (math.ceil(m) - 1).bit_length()))
    tiles = batch * math.ceil(m / rows_tile) * math.ceil(n / tile_n)
    waves = math.ceil(tiles / sms) if tiles >= sms else 1.0 / (sms // tiles)
    return 2.0 * k * (waves * sms * rows_tile * tile_n - m * n * batch)


# ---- the kernels of a step ----------------------------------------------------------------------
def block_kind(model: Model, block: int) -> BlockKind:
    moe = model.backbone.moe
    return "moe" if moe is not None and block >= moe.dense_layers else "dense"


def experts_touched(model: Model, tokens: Amount) -> Amount:
    """Expected experts whose weights a step of `tokens` tokens reads: shared experts plus
    E·(1-(1-k/E)^n) distinct routed ones, assuming uniform, independent routing."""
    moe = model.backbone.moe
    if moe is None:
        return 0.0
    e, k = moe.experts, moe.top_k
    if isinstance(tokens, np.ndarray):  # each distinct count by the same float power as one step's
        return moe.shared_experts + e * (1.0 - _per_distinct(tokens.reshape(-1, 1), lambda n: (1.0 - k / e) ** n))
    return moe.shared_experts + e * (1.0 - (1.0 - k / e) ** tokens)


def residual_elems(bb: Backbone) -> int:
    """Elements per token a sublayer's last GEMM adds for the plain residual add (read 2, write 1);
    none under mHC, whose post/residual mix (`mhc_kernels`) does it."""
    return 3 * bb.hidden if bb.hc_mult == 1 else 0


class Sequences(NamedTuple):
    """A step's sequences as attention sees them: those feeding one token (decode) and the others
    (prefills, prompt chunks), with their context (KV length after the step) and causal
    query-key pairs (a sequence with n new tokens and context c: n·(c-n) + n(n+1)/2; decode: c)."""

    decode: Amount
    decode_ctx: Amount
    multi_tokens: Amount
    multi_ctx: Amount
    multi_pairs: Amount

    @property
    def tokens(self) -> Amount:
        return self.decode + self.multi_tokens


@dataclass(frozen=True)
class StepBatch:
    """Many steps as the kernel inventory sees one, each attribute an array over the steps: every
    formula here then prices them all at once, element for element the floats it gives one step
    (`RooflineCostModel.price`). Built by `of`."""

    compute_tokens: np.ndarray
    num_tokens: np.ndarray
    num_seqs: np.ndarray
    pad: np.ndarray
    seqs: Sequences

    @classmethod
    def of(cls, steps: list[Step]) -> StepBatch:
        """The batch of `steps`: their sequences' sums by segment reductions over all their sequences at once."""
        sizes = np.array([step.seq_ids.size for step in steps], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        new = np.concatenate([step.new_tokens for step in steps]).astype(np.int64, copy=False)
        ctx = np.concatenate([step.context_lens for step in steps]).astype(np.int64, copy=False)
        one = new == 1
        multi_new, multi_ctx = np.where(one, 0, new), np.where(one, 0, ctx)
        pairs = multi_new * (multi_ctx - multi_new) + multi_new * (multi_new + 1) // 2

        def per_step(values: np.ndarray) -> np.ndarray:
            return np.add.reduceat(values, starts) if values.size else np.zeros(len(steps), dtype=np.int64)

        seqs = Sequences(per_step(one.astype(np.int64)), per_step(np.where(one, ctx, 0)).astype(np.float64),
                         per_step(multi_new).astype(np.float64), per_step(multi_ctx).astype(np.float64), per_step(pairs).astype(np.float64))
        tokens = np.array([step.num_tokens for step in steps], dtype=np.int64)
        pad = np.array([step.pad for step in steps], dtype=np.int64)
        return cls(tokens + pad, tokens, sizes, pad, seqs)

    def take(self, at: np.ndarray) -> StepBatch:
        """The steps at indices `at`."""
        return StepBatch(self.compute_tokens[at], self.num_tokens[at], self.num_seqs[at], self.pad[at],
                         Sequences(*(np.asarray(column)[at] for column in self.seqs)))


StepLike = Union[Step, StepBatch]
"""What the kernel inventory prices: one step, or a batch of steps at once."""


def sequences(step: StepLike) -> Sequences:
    """`Sequences` of the step: a few numpy reductions, whatever the batch size."""
    if isinstance(step, StepBatch):
        return step.seqs
    new, ctx = step.new_tokens, step.context_lens
    one = new == 1
    decode = int(one.sum())
    if decode == new.size:  # a decode step: no prompt tokens
        return Sequences(decode, float(ctx.sum()), 0.0, 0.0, 0.0)
    n, c = new[~one], ctx[~one]
    pairs = n * (c - n) + n * (n + 1) // 2  # exact: n(n+1) is even
    return Sequences(decode, float(ctx[one].sum()), float(n.sum()), float(c.sum()), float(pairs.sum()))


def attention_kernels(model: Model, step: StepLike) -> list[Work]:
    """The attention sublayer: GQA's [input RMSNorm + qkv GEMM, attention core, o GEMM + residual
    add], or MLA's (`mla_kernels`).

    GQA: each causal pair costs 4·head_dim FLOPs per head (QK^T and PV). The KV cache of c tokens
    is read once per sequence (decode sequences' reads are the core's `attention_bytes`) and the
    new tokens' K/V are written once.
    """
    bb = model.backbone
    if bb.attention.kind == "mla":
        return mla_kernels(bb, step)
    b = DTYPE_BYTES[bb.dtype]
    att, hidden = bb.attention, bb.hidden
    rows, seqs = step.compute_tokens, sequences(step)
    tokens = seqs.tokens
    qkv_out = (att.heads + 2 * att.kv_heads) * att.head_dim
    o_in = att.heads * att.head_dim
    kv_token_bytes = kv_bytes_per_token(bb) / bb.layers
    qkv = gemm(rows, hidden, qkv_out, b, extra_elems=2 * hidden)  # + RMSNorm read/write
    core = Work(4.0 * att.heads * att.head_dim * (seqs.decode_ctx + seqs.multi_pairs),
                (seqs.decode_ctx + seqs.multi_ctx + tokens) * kv_token_bytes + tokens * 2 * o_in * b,  # read q, write output
                attention_bytes=seqs.decode_ctx * kv_token_bytes)
    o = gemm(rows, o_in, hidden, b, extra_elems=residual_elems(bb))
    return [qkv, core, o]


def mla_kernels(bb: Backbone, step: StepLike) -> list[Work]:
    """Multi-head latent attention (H heads, d = head_dim, r = rope_head_dim, L = kv_lora_rank,
    Q = q_lora_rank): [query GEMM(s), KV down GEMM + latent write, decode sequences' absorbed form,
    multi-token sequences' up-projection + core, o GEMM + residual add].

    Query: hidden -> H(d+r) (Q = 0; + the input RMSNorm), or hidden -> Q, RMSNorm, Q -> H(d+r).
    KV down: hidden -> L + r, RMSNorm on the latent; each new token's L + r values written to the
    cache. A sequence feeding one token (decode) absorbs W_UK into its query ([H, d] x [H, d, L],
    one launch for all of them, weights read once), scores every head over the cached latent +
    rotary key (2H(L+r) FLOPs per pair, reading ctx·(L+r) values once for all heads), sums values
    in latent space (2HL per pair) and multiplies by W_UV ([H, L] x [H, L, d]). A sequence feeding
    more tokens up-projects its whole context's latent ([ctx, L] x [L, 2Hd]: k_nope and v) and
    attends like MHA (2H(d+r) + 2Hd FLOPs per pair, reading the up-projected K/V and the rotary
    key). Graph padding rows are decode rows: they join the absorbed GEMMs, not the core.
    """
    att, hidden = bb.attention, bb.hidden
    b = DTYPE_BYTES[bb.dtype]
    h, d, r, lat = att.heads, att.head_dim, att.rope_head_dim, att.kv_lora_rank
    rows, seqs = step.compute_tokens, sequences(step)
    kv_token_bytes = kv_bytes_per_token(bb) / bb.layers  # the latent + the rotary key
    q_out = h * (d + r)
    if att.q_lora_rank == 0:
        works = [gemm(rows, hidden, q_out, b, extra_elems=2 * hidden)]  # + input RMSNorm read/write
    else:
        works = [gemm(rows, hidden, att.q_lora_rank, b, extra_elems=2 * hidden),
                 gemm(rows, att.q_lora_rank, q_out, b, extra_elems=2 * att.q_lora_rank)]  # + query-latent RMSNorm
    works.append(gemm(rows, hidden, lat + r, b, extra_elems=2 * lat) + Work(0.0, seqs.tokens * kv_token_bytes))
    if np.any(seqs.decode):  # a batch's steps all have decode sequences or none (`RooflineCostModel.price` groups them)
        absorbed = seqs.decode + step.pad
        works += [
            gemm(absorbed, d, lat, b, batch=h),  # q_nope x W_UK
            Work(seqs.decode_ctx * (2.0 * h * (lat + r) + 2.0 * h * lat),
                 seqs.decode_ctx * kv_token_bytes + seqs.decode * h * ((lat + r) + lat) * b,  # read the cache and q, write the output
                 attention_bytes=seqs.decode_ctx * kv_token_bytes),
            gemm(absorbed, lat, d, b, batch=h),  # x W_UV
        ]
    if np.any(seqs.multi_tokens):
        works += [
            gemm(seqs.multi_ctx, lat, 2 * h * d, b),  # the context's latent -> k_nope, v
            Work(seqs.multi_pairs * (2.0 * h * (d + r) + 2.0 * h * d),
                 (seqs.multi_ctx * (2 * h * d + r) + seqs.multi_tokens * (h * (d + r) + h * d)) * b),  # read K/V + rotary key and q, write output
        ]
    works.append(gemm(rows, h * d, hidden, b, extra_elems=residual_elems(bb)))
    return works


def mlp_kernels(model: Model, step: StepLike) -> list[Work]:
    """Dense SwiGLU MLP (3·hidden·intermediate weights): [norm + gate/up GEMM, SiLU(gate)·up,
    down GEMM + residual add]."""
    bb = model.backbone
    b = DTYPE_BYTES[bb.dtype]
    hidden, inter = bb.hidden, bb.intermediate
    rows = step.compute_tokens
    return [
        gemm(rows, hidden, 2 * inter, b, extra_elems=2 * hidden),  # + post-attention RMSNorm
        Work(0.0, rows * 3 * inter * b),  # SiLU(gate) * up: read 2, write 1
        gemm(rows, inter, hidden, b, extra_elems=residual_elems(bb)),
    ]


def moe_kernels(model: Model, step: StepLike) -> list[Work]:
    """Norm + router, the experts' gate/up GEMMs + SwiGLU, their down GEMMs + weighted combine +
    residual add (shared + top-k routed experts).

    FLOPs follow the rows (each runs shared + top_k experts); weight bytes follow the distinct
    experts the step touches (`experts_touched`, each read once; a graph's padding rows are
    identical, so they route as one token). Each touched routed
    expert sees tokens·top_k / (routed experts touched) rows, each shared expert every token.
    """
    bb = model.backbone
    b = DTYPE_BYTES[bb.dtype]
    moe = bb.moe
    if moe is None:
        raise ValueError("the model has no MoE layers")
    hidden, inter = bb.hidden, moe.expert_intermediate
    rows = step.compute_tokens
    paths = moe.shared_experts + moe.top_k  # experts each token runs through
    touched = experts_touched(model, step.num_tokens + _nonzero(step.pad))  # padding rows are alike: one routing among them
    routed = touched - moe.shared_experts
    routed_rows: Amount
    if isinstance(routed, np.ndarray):
        with np.errstate(divide="ignore", invalid="ignore"):
            routed_rows = np.where(routed > 0, rows * moe.top_k / routed, 0.0)
    else:
        routed_rows = rows * moe.top_k / routed if routed > 0 else 0.0  # an empty step touches none

    def shapes(n: int, k: int) -> tuple[Gemm, ...]:
        return Gemm(rows, n, k, moe.shared_experts), Gemm(routed_rows, n, k, routed)

    router = gemm(rows, hidden, moe.experts, b, extra_elems=2 * hidden)  # + post-attention RMSNorm
    up = Work(2.0 * rows * paths * hidden * 2 * inter,
              (touched * hidden * 2 * inter + rows * paths * (hidden + 2 * inter + 3 * inter)) * b,
              gemm_weights(rows, touched * hidden * 2 * inter), gemms=shapes(2 * inter, hidden))
    down = Work(2.0 * rows * paths * inter * hidden,
                (touched * inter * hidden + rows * (paths * (inter + hidden) + paths * hidden + hidden + residual_elems(bb))) * b,
                gemm_weights(rows, touched * inter * hidden), gemms=shapes(hidden, inter))
    return [router, up, down]


def _nonzero(values: Amount) -> Amount:
    """1 where `values` is not 0, else 0 (a step's, or each step's of a batch)."""
    return (values != 0).astype(np.int64) if isinstance(values, np.ndarray) else (1 if values else 0)


def mhc_kernels(model: Model, step: StepLike) -> tuple[Work, Work]:
    """mHC around one sublayer (n = hc_mult streams of C = hidden): [RMSNorm of the flattened
    n·C stream + GEMM n·C -> n² + 2n mixing coefficients + pre-mix (read n·C, write C), post +
    residual mix (read n·C + C, write n·C)] per token."""
    bb = model.backbone
    b = DTYPE_BYTES[bb.dtype]
    n, c = bb.hc_mult, bb.hidden
    rows = step.compute_tokens
    pre = gemm(rows, n * c, n * n + 2 * n, b, extra_elems=2 * n * c + n * c + c)  # norm read + write, pre-mix
    post = Work(0.0, rows * (n * c + c + n * c) * b)
    return pre, post


def block_kernels(model: Model, step: StepLike, block: int) -> list[Work]:
    """The kernels of one transformer block (attention + MLP or MoE) for the step, each sublayer
    wrapped in its mHC kernels when the backbone has more than one residual stream."""
    mlp = moe_kernels(model, step) if block_kind(model, block) == "moe" else mlp_kernels(model, step)
    attention = attention_kernels(model, step)
    if model.backbone.hc_mult == 1:
        return attention + mlp
    pre, post = mhc_kernels(model, step)
    return [pre, *attention, post, pre, *mlp, post]


def engram_kernels(model: Model, step: StepLike, rows: int | np.ndarray) -> list[Work]:
    """The Engram layer's GPU work after its rows are on the device: [conversion (when the dtypes
    differ), gather, fused projection, gating + short conv + residual].

    Conversion: a table stored in another dtype than the backbone computes in (fp8 or int8 rows
    with their scales, or fp32 under bf16) is turned into compute-dtype values once per unique row,
    as the real backends do after the link (backends/tables.py `row_values`): the stored row read,
    the values written, a multiply (and an add, for the scale) per value. None when the dtypes
    match.
    Gather: the step's `rows` unique rows read from device memory (from the table in HBM, or from
    the buffer the link filled: the same traffic either way, so offloading never makes this
    cheaper), and the memory vector e_t written for every token (graph padding included, as every
    kernel of a padded step).
    Fused projection d_mem -> (hc_mult+1)·hidden (the W_k per branch and the shared W_v).
    Gating, short conv and residual: `ENGRAM_ELEMENTWISE_PASSES` passes over
    [tokens, hc_mult, hidden] plus the depthwise conv's FLOPs.
    """
    engram = model.engram
    b = DTYPE_BYTES[model.backbone.dtype]
    hidden, hc = model.backbone.hidden, engram.hc_mult
    tokens = step.compute_tokens  # inside the padded CUDA graph; padding rows read the step's first row
    value_bytes = engram.head_dim * b  # one head's row in the compute dtype
    e_t = engram.heads_per_layer * value_bytes  # one token's memory vector, bytes
    convert = [Work(2.0 * rows * engram.head_dim, rows * (engram.row_bytes + value_bytes))] if engram.dtype != model.backbone.dtype else []
    gather = Work(0.0, rows * value_bytes + tokens * e_t)
    out = (hc + 1) * hidden
    params = engram.d_mem * out
    projection = Work(2.0 * tokens * params, params * b + tokens * (e_t + out * b), gemm_weights(tokens, params),
                      gemms=(Gemm(tokens, out, engram.d_mem),))
    branch_elems = tokens * hc * hidden
    elementwise = Work(2.0 * engram.kernel_size * branch_elems, ENGRAM_ELEMENTWISE_PASSES * branch_elems * b)
    return [*convert, gather, projection, elementwise]


def head_kernels(model: Model, step: StepLike) -> list[Work]:
    """[embedding lookup + final RMSNorm (graph-padded rows), LM head GEMM for one sampled token per
    sequence]."""
    bb = model.backbone
    b = DTYPE_BYTES[bb.dtype]
    seqs = step.num_seqs
    lookup_norm = Work(0.0, 4.0 * step.compute_tokens * bb.hidden * b)  # embedding read + write, norm read + write
    params = bb.hidden * bb.vocab
    head = Work(2.0 * seqs * params, params * b + seqs * bb.hidden * b + 2.0 * seqs * bb.vocab * LOGIT_BYTES,
                gemm_weights(seqs, params), gemms=(Gemm(seqs, bb.vocab, bb.hidden),))
    return [lookup_norm, head]


# ---- pricing --------------------------------------------------------------------------------------
def _maximum(a: Num, b: Num) -> Num:
    """Element-wise max; plain floats stay plain floats (the simulator prices one kernel at a time)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.maximum(a, b)
    return a if a >= b else b


def roofline(flops: Num, nbytes: Num, weights: Num, flops_s: float, bytes_s: float,
             exponent: float | None = None, half_rows: float = 0.0,
             attention_bytes: Num | float = 0.0, attention_bytes_s: float | None = None,
             grouped: Num | float = 0.0, grouped_half_rows: float | None = None) -> Num:
    """Seconds of kernels at achieved compute and memory rates: the slower of the two, or their
    `exponent`-norm (tc^n + tm^n)^(1/n) (no fixed cost). A GEMM of M rows computes at
    M / (M + half_rows) of the peak (Hockney's half-performance length): as if it ran `half_rows`
    more rows, 2 FLOPs per weight each; the `grouped` weights among `weights` (`grouped_weights`)
    take `grouped_half_rows` instead, when it is given. A GPU overlaps memory traffic with math
    (the max, n = infinity); one CPU core running a small-batch GEMM hardly does (n near 1, the
    sum). The `attention_bytes` among `nbytes` (decode attention's paged KV reads) move at
    `attention_bytes_s` when it is given, the rest at `bytes_s`."""
    grouped_extra = 0.0 if grouped_half_rows is None else 2.0 * (grouped_half_rows - half_rows) * grouped
    tc = (flops + 2.0 * half_rows * weights + grouped_extra) / flops_s
    tm = nbytes / bytes_s if attention_bytes_s is None else (nbytes - attention_bytes) / bytes_s + attention_bytes / attention_bytes_s
    hi = _maximum(tc, tm)
    if exponent is None:
        return hi
    scale = np.where(hi > 0, hi, 1.0) if isinstance(hi, np.ndarray) else (hi or 1.0)  # no overflow at large n, no 0/0
    return scale * ((tc / scale) ** exponent + (tm / scale) ** exponent) ** (1.0 / exponent)


def gather_seconds(rows: Num, row_bytes: Num, threads: int, rows_per_s: float, dram_bytes_s: float,
                   overhead_s: float) -> Num:
    """Host CPU gather of `rows` random rows into pinned staging: overhead + rows / (threads x
    rows_per_s), bounded below by the DRAM traffic (each row read from the table and written to
    staging). Random rows are latency-bound, so the row rate usually binds."""
    return overhead_s + _maximum(rows / (threads * rows_per_s), 2.0 * rows * row_bytes / dram_bytes_s)


PAGE_BYTES = 4096
HUGE_PAGE_BYTES = 2 << 20
PTE_BYTES = 8  # one page-table entry per page


def miss_fraction(footprint: float, reach: float) -> float:
    """Uniformly random accesses over `footprint` bytes that miss a cache or TLB covering `reach`
    bytes of it (the rest of the footprint)."""
    return max(0.0, 1.0 - reach / footprint) if footprint > 0 else 0.0


def gather_row_penalty_s(table_bytes: float, huge_pages: bool, l2_bytes: float, llc_bytes: float, stlb_entries: int,
                         data_miss_s: float, tlb_miss_s: float, pte_miss_s: float) -> float:
    """Seconds one random row of a `table_bytes` table costs a gather thread beyond a row whose
    data, page and page-table entry all hit: its data missing the last-level cache, its page the
    STLB (reach: entries x page), and the walk's page-table entry L2 (the page tables are
    `PTE_BYTES` per page, so 4 KiB pages make them 512 times smaller than the table; 2 MiB pages,
    262,144 times)."""
    page = HUGE_PAGE_BYTES if huge_pages else PAGE_BYTES
    return (data_miss_s * miss_fraction(table_bytes, llc_bytes) + tlb_miss_s * miss_fraction(table_bytes, stlb_entries * page)
            + pte_miss_s * miss_fraction(table_bytes * PTE_BYTES / page, l2_bytes))


def gather_row_seconds(rows_per_s: float, table_bytes: float, huge_pages: bool, reference_bytes: float, reference_huge_pages: bool,
                       l2_bytes: float, llc_bytes: float, stlb_entries: int, hit_s: float, data_miss_s: float, tlb_miss_s: float,
                       pte_miss_s: float) -> float:
    """One gather thread's seconds per random row of a `table_bytes` table, from its rate measured
    on a table of `reference_bytes`: that row time scaled by the modelled row time here over the
    modelled row time there (a row that hits everywhere, `hit_s`, plus `gather_row_penalty_s`).
    A ratio, so a rate measured on another CPU or row size keeps its own scale."""
    misses = (l2_bytes, llc_bytes, stlb_entries, data_miss_s, tlb_miss_s, pte_miss_s)
    here = hit_s + gather_row_penalty_s(table_bytes, huge_pages, *misses)
    there = hit_s + gather_row_penalty_s(reference_bytes, reference_huge_pages, *misses)
    return here / there / rows_per_s


def dma_seconds(nbytes: Num, latency_s: float, bytes_s: float) -> Num:
    """One DMA copy: a fixed latency, then the bytes at the link's bandwidth."""
    return latency_s + nbytes / bytes_s


def wire_bytes(rows: Num, row_bytes: Num, transaction_bytes: int) -> Num:
    """Bytes a zero-copy read moves: each row rounded up to whole transactions."""
    return rows * -(-row_bytes // transaction_bytes) * transaction_bytes


def zero_copy_seconds(rows: Num, row_bytes: Num, latency_s: float, bytes_s: float, transaction_bytes: int) -> Num:
    """A GPU kernel reading rows from pinned host memory: launch + first round trip, then the
    transaction-rounded bytes at the zero-copy bandwidth."""
    return latency_s + wire_bytes(rows, row_bytes, transaction_bytes) / bytes_s


def cxl_gather_seconds(rows: Num, row_bytes: Num, threads: int, rows_in_flight: float, load_latency_s: float,
                       cxl_bytes_s: float, overhead_s: float) -> Num:
    """Host CPU gather of `rows` random rows from CXL memory: overhead + the slower of the load
    latency (rows x latency / the loads in flight over all threads) and the expanders' bandwidth."""
    return overhead_s + _maximum(rows * load_latency_s / (threads * rows_in_flight), rows * row_bytes / cxl_bytes_s)


def nvme_pages(rows: np.ndarray, row_bytes: int, page_bytes: int) -> int:
    """Pages a read of these row ids (within one table, laid out in row order on the drives)
    touches: rows packed whole into pages share one read; a row larger than a page costs its
    pages alone."""
    if row_bytes > page_bytes:
        return int(rows.size) * -(-row_bytes // page_bytes)
    per_page = page_bytes // row_bytes
    pages = rows // per_page
    if pages.size > 1 and not bool((np.diff(pages) >= 0).all()):
        pages = np.sort(pages)
    return int(np.count_nonzero(np.diff(pages)) + 1) if pages.size else 0


def nvme_iops(read_iops: float, queue_depth: int, latency_s: float) -> float:
    """One drive's random-read rate at a queue depth: Little's law (queue_depth / latency) up to
    the datasheet's IOPS."""
    return min(read_iops, queue_depth / latency_s)


def nvme_read_seconds(pages: Num, page_bytes: int, drives: int, iops: float, drive_bytes_s: float, latency_s: float) -> Num:
    """`pages` random page reads striped over `drives`: the first read's latency, then the pages
    at the slower of the drives' IOPS and their bandwidth."""
    return latency_s + _maximum(pages / (drives * iops), pages * page_bytes / (drives * drive_bytes_s))


ZERO_COPY_GATHER_SMS = 16
"""SMs a zero-copy gather kernel is assumed to hold while it runs when the profile does not give
`gpu.zero_copy_slowdown` (an assumption; compute keeps sms - 16 of them)."""


def sm_share_slowdown(sms: int | None, held_sms: int) -> float:
    """How much longer compute takes when a kernel beside it holds `held_sms` of the GPU's `sms`
    (compute keeps the rest); 1 when the SMs are unknown or too few."""
    if sms is None or sms <= held_sms:
        return 1.0
    return sms / (sms - held_sms)

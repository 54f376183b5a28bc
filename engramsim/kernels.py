"""The kernel inventory of a step and the formulas that price it, shared by the simulator's cost
model and the calibration's fits, so what is fitted is exactly what is simulated.

A step's GPU work is a list of kernels (a GEMM with the small ops fused around it, the attention
core, ...), each a `Work`: FLOPs, HBM bytes and the weight elements its GEMMs multiply by, counted
explicitly so tests can check them by hand and a calibration can fit the rates. `roofline` prices
kernels; `gather_seconds`, `dma_seconds` and `zero_copy_seconds` price fetches. Every formula
takes plain numbers or numpy arrays (the fits evaluate them over all samples at once).

Modelled: the GEMMs of attention (q, k, v, o with grouped KV heads), the attention itself
(causal query-key pairs, reading the KV cache), the dense SwiGLU MLP or an MoE layer (shared +
top-k routed experts; weights read once per step for the experts the step touches), the Engram
layer (HBM row gather, fused key/value projection, gating and short-conv traffic), embedding,
final norm and LM head; activations are read and written once per kernel.

Ignored: mHC branches in the backbone (only the Engram layer sees `hc_mult`), fp8 tensor-core
speed-ups (every GEMM runs at the bf16 peak whatever the dtype), kernel fusion that saves
activation traffic, caches (L2) that would save re-reads, the attention kernel re-reading K/V
per query tile in long prefills (compute dominates there), MoE load imbalance, tensor/expert
parallelism, and the Engram short-conv's decode state.

Units: FLOPs, bytes, seconds, bytes/s, FLOP/s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np

from engramsim.scenario import DTYPE_BYTES, Model
from engramsim.steps import Step

LOGIT_BYTES = 4  # logits are written in fp32 and read once more by the sampler
ENGRAM_ELEMENTWISE_PASSES = 15
"""Reads/writes of a [tokens, hc_mult, hidden] tensor by the Engram layer's small kernels: key
RMSNorm (r+w), hidden-state RMSNorm (r+w), key-query dot product (2 r), gate x value (r+w),
short-conv RMSNorm (r+w), depthwise conv + SiLU (r+w), residual add (2 r + w)."""

BlockKind = Literal["dense", "moe"]
Num = TypeVar("Num", float, np.ndarray)
"""Every pricing formula takes plain numbers or numpy arrays, and returns what it was given."""


@dataclass(frozen=True)
class Work:
    """What a kernel group costs before the hardware is known: FLOPs, HBM bytes moved, and the
    weight elements its GEMMs multiply by (what a GEMM's small-batch inefficiency scales with)."""

    flops: float = 0.0
    bytes: float = 0.0
    weights: float = 0.0

    def __add__(self, other: Work) -> Work:
        return Work(self.flops + other.flops, self.bytes + other.bytes, self.weights + other.weights)


def total(kernels: list[Work]) -> Work:
    return sum(kernels, Work())


def gemm(tokens: int, k: int, n: int, dtype_bytes: float, extra_elems: int = 0) -> Work:
    """[tokens, k] @ [k, n]: weights read once, input read, output written, plus `extra_elems`
    per token of small ops fused around it (norms, residual adds)."""
    return Work(2.0 * tokens * k * n, (k * n + tokens * (k + n + extra_elems)) * dtype_bytes, gemm_weights(tokens, k * n))


def gemm_weights(rows: int, weights: float) -> float:
    """The weights a GEMM over `rows` rows pays the small-batch penalty on: none for one row,
    which libraries run as a matrix-vector product streaming the weights (no tiling to waste)."""
    return weights if rows > 1 else 0.0


# ---- the kernels of a step ----------------------------------------------------------------------
def block_kind(model: Model, block: int) -> BlockKind:
    moe = model.backbone.moe
    return "moe" if moe is not None and block >= moe.dense_layers else "dense"


def experts_touched(model: Model, tokens: int) -> float:
    """Expected experts whose weights a step of `tokens` tokens reads: shared experts plus
    E·(1-(1-k/E)^n) distinct routed ones, assuming uniform, independent routing."""
    moe = model.backbone.moe
    if moe is None:
        return 0.0
    e, k = moe.experts, moe.top_k
    return moe.shared_experts + e * (1.0 - (1.0 - k / e) ** tokens)


def attention_kernels(model: Model, step: Step) -> list[Work]:
    """[input RMSNorm + qkv GEMM, attention core, o GEMM + residual add].

    Query-key pairs per sequence with n new tokens and context c after the step:
    n·(c-n) + n(n+1)/2 (prefill of a whole prompt: n(n+1)/2; decode: c). Each pair costs
    4·head_dim FLOPs per head (QK^T and PV). The KV cache of c tokens is read once per
    sequence and the n new tokens' K/V are written once.
    """
    bb = model.backbone
    b = DTYPE_BYTES[bb.dtype]
    att, hidden = bb.attention, bb.hidden
    tokens = step.num_tokens
    new = step.new_tokens.astype(np.float64)
    ctx = step.context_lens.astype(np.float64)
    qkv_out = (att.heads + 2 * att.kv_heads) * att.head_dim
    o_in = att.heads * att.head_dim
    pairs = float(np.sum(new * (ctx - new) + new * (new + 1.0) / 2.0))
    kv_token_bytes = 2 * att.kv_heads * att.head_dim * b
    qkv = gemm(tokens, hidden, qkv_out, b, extra_elems=2 * hidden)  # + RMSNorm read/write
    core = Work(4.0 * att.heads * att.head_dim * pairs,
                (float(ctx.sum()) + tokens) * kv_token_bytes + tokens * 2 * o_in * b)  # read q, write output
    o = gemm(tokens, o_in, hidden, b, extra_elems=3 * hidden)  # + residual add: read 2, write 1
    return [qkv, core, o]


def mlp_kernels(model: Model, step: Step) -> list[Work]:
    """Dense SwiGLU MLP (3·hidden·intermediate weights): [norm + gate/up GEMM, SiLU(gate)·up,
    down GEMM + residual add]."""
    bb = model.backbone
    b = DTYPE_BYTES[bb.dtype]
    hidden, inter = bb.hidden, bb.intermediate
    tokens = step.num_tokens
    return [
        gemm(tokens, hidden, 2 * inter, b, extra_elems=2 * hidden),  # + post-attention RMSNorm
        Work(0.0, tokens * 3 * inter * b),  # SiLU(gate) * up: read 2, write 1
        gemm(tokens, inter, hidden, b, extra_elems=3 * hidden),  # + residual add
    ]


def moe_kernels(model: Model, step: Step) -> list[Work]:
    """Norm + router, the experts' gate/up GEMMs + SwiGLU, their down GEMMs + weighted combine +
    residual add (shared + top-k routed experts).

    FLOPs follow the tokens (each token runs shared + top_k experts); weight bytes follow the
    distinct experts the step touches (`experts_touched`), each read once.
    """
    bb = model.backbone
    b = DTYPE_BYTES[bb.dtype]
    moe = bb.moe
    if moe is None:
        raise ValueError("the model has no MoE layers")
    hidden, inter = bb.hidden, moe.expert_intermediate
    tokens = step.num_tokens
    paths = moe.shared_experts + moe.top_k  # experts each token runs through
    touched = experts_touched(model, tokens)
    router = gemm(tokens, hidden, moe.experts, b, extra_elems=2 * hidden)  # + post-attention RMSNorm
    up = Work(2.0 * tokens * paths * hidden * 2 * inter,
              (touched * hidden * 2 * inter + tokens * paths * (hidden + 2 * inter + 3 * inter)) * b,
              gemm_weights(tokens, touched * hidden * 2 * inter))
    down = Work(2.0 * tokens * paths * inter * hidden,
                (touched * inter * hidden + tokens * (paths * (inter + hidden) + paths * hidden + hidden + 3 * hidden)) * b,
                gemm_weights(tokens, touched * inter * hidden))
    return [router, up, down]


def block_kernels(model: Model, step: Step, block: int) -> list[Work]:
    """The kernels of one transformer block (attention + MLP or MoE) for the step."""
    mlp = moe_kernels(model, step) if block_kind(model, block) == "moe" else mlp_kernels(model, step)
    return attention_kernels(model, step) + mlp


def engram_kernels(model: Model, step: Step, rows: int) -> list[Work]:
    """The Engram layer's GPU work after its rows are on the device: [gather, fused projection,
    gating + short conv + residual].

    Gather: the step's `rows` unique rows read from device memory (from the table in HBM, or from
    the buffer the link filled: the same traffic either way, so offloading never makes this
    cheaper), and the memory vector e_t written for every token.
    Fused projection d_mem -> (hc_mult+1)·hidden (the W_k per branch and the shared W_v).
    Gating, short conv and residual: `ENGRAM_ELEMENTWISE_PASSES` passes over
    [tokens, hc_mult, hidden] plus the depthwise conv's FLOPs.
    """
    engram = model.engram
    b = DTYPE_BYTES[model.backbone.dtype]
    hidden, hc = model.backbone.hidden, engram.hc_mult
    tokens = step.num_tokens
    e_t = engram.heads_per_layer * engram.row_bytes  # one token's memory vector, bytes
    gather = Work(0.0, rows * engram.row_bytes + tokens * e_t)
    out = (hc + 1) * hidden
    params = engram.d_mem * out
    projection = Work(2.0 * tokens * params, params * b + tokens * (e_t + out * b), gemm_weights(tokens, params))
    branch_elems = tokens * hc * hidden
    elementwise = Work(2.0 * engram.kernel_size * branch_elems, ENGRAM_ELEMENTWISE_PASSES * branch_elems * b)
    return [gather, projection, elementwise]


def head_kernels(model: Model, step: Step) -> list[Work]:
    """[embedding lookup + final RMSNorm, LM head GEMM for one sampled token per sequence]."""
    bb = model.backbone
    b = DTYPE_BYTES[bb.dtype]
    tokens, seqs = step.num_tokens, step.num_seqs
    lookup_norm = Work(0.0, 4.0 * tokens * bb.hidden * b)  # embedding read + write, norm read + write
    params = bb.hidden * bb.vocab
    head = Work(2.0 * seqs * params, params * b + seqs * bb.hidden * b + 2.0 * seqs * bb.vocab * LOGIT_BYTES,
                gemm_weights(seqs, params))
    return [lookup_norm, head]


# ---- pricing --------------------------------------------------------------------------------------
def _maximum(a: Num, b: Num) -> Num:
    """Element-wise max; plain floats stay plain floats (the simulator prices one kernel at a time)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.maximum(a, b)
    return a if a >= b else b


def roofline(flops: Num, nbytes: Num, weights: Num, flops_s: float, bytes_s: float,
             exponent: float | None = None, half_rows: float = 0.0) -> Num:
    """Seconds of kernels at achieved compute and memory rates: the slower of the two, or their
    `exponent`-norm (tc^n + tm^n)^(1/n) (no fixed cost). A GEMM of M rows computes at
    M / (M + half_rows) of the peak (Hockney's half-performance length): as if it ran `half_rows`
    more rows, 2 FLOPs per weight each. A GPU overlaps memory traffic with math (the max, n =
    infinity); one CPU core running a small-batch GEMM hardly does (n near 1, the sum)."""
    tc = (flops + 2.0 * half_rows * weights) / flops_s
    tm = nbytes / bytes_s
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

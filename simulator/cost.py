"""The cost model: seconds for each piece of a step, from the model's shapes and a hardware profile.

GPU work is priced kernel by kernel with a roofline: each kernel (a GEMM with the small ops fused
around it, the attention core, ...) takes `max(flops / (peak * compute_efficiency), bytes / (hbm *
memory_efficiency))`, a block is the sum of its kernels plus a fixed per-block overhead. A
profile may soften the max into `(tc^n + tm^n)^(1/n)` (`gpu.roofline_exponent`): a GPU overlaps
memory traffic with math (the max, n = infinity), one CPU core running a small-batch GEMM hardly
does (n near 1, the sum). GEMMs over few rows fall short of the compute peak by the profile's
half-performance length (`gpu.gemm_half_rows`, 0 for the presets). FLOPs and bytes are counted explicitly (see `Work`) so tests can check
them by hand and a calibration can fit the rates. Fetches are priced by small latency + bandwidth formulas for the host's gather
threads, the DMA copy engines and GPU zero-copy reads.

Units: GB/s = 1e9 B/s, TFLOP/s = 1e12 FLOP/s, `*_us` fields are microseconds; every method
returns seconds.

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from engramsim.scenario import DTYPE_BYTES, Model
from engramsim.simulator.profile import HardwareProfile
from engramsim.steps import Step
from engramsim.strategies import Stage

GB = 1e9
TFLOP = 1e12
US = 1e-6
LOGIT_BYTES = 4  # logits are written in fp32 and read once more by the sampler
ENGRAM_ELEMENTWISE_PASSES = 15
"""Reads/writes of a [tokens, hc_mult, hidden] tensor by the Engram layer's small kernels: key
RMSNorm (r+w), hidden-state RMSNorm (r+w), key-query dot product (2 r), gate x value (r+w),
short-conv RMSNorm (r+w), depthwise conv + SiLU (r+w), residual add (2 r + w)."""

BlockKind = Literal["dense", "moe"]


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


def gemm(tokens: int, k: int, n: int, dtype_bytes: int, extra_elems: int = 0) -> Work:
    """[tokens, k] @ [k, n]: weights read once, input read, output written, plus `extra_elems`
    per token of small ops fused around it (norms, residual adds)."""
    return Work(2.0 * tokens * k * n, (k * n + tokens * (k + n + extra_elems)) * dtype_bytes, gemm_weights(tokens, k * n))


def gemm_weights(rows: int, weights: float) -> float:
    """The weights a GEMM over `rows` rows pays the small-batch penalty on: none for one row,
    which libraries run as a matrix-vector product streaming the weights (no tiling to waste)."""
    return weights if rows > 1 else 0.0


class CostModel:
    """Prices steps of `model` on `profile`. Cheap to call per step: block times are cached for
    the step being priced (blocks of one kind cost the same within a step)."""

    def __init__(self, model: Model, profile: HardwareProfile) -> None:
        self.model = model
        self.profile = profile
        self.dtype_bytes = DTYPE_BYTES[model.backbone.dtype]
        gpu = profile.gpu
        self.flops_per_s = gpu.bf16_tflops * TFLOP * gpu.compute_efficiency
        self.hbm_bytes_per_s = gpu.hbm_gbps * GB * gpu.memory_efficiency
        self.layer_overhead_s = gpu.layer_overhead_us * US
        self.engram_overhead_s = self.layer_overhead_s if gpu.engram_overhead_us is None else gpu.engram_overhead_us * US
        self.exponent = gpu.roofline_exponent
        self.half_rows = gpu.gemm_half_rows
        self._cached_step: Step | None = None
        self._cache: dict[BlockKind, float] = {}

    # ---- GPU: roofline ---------------------------------------------------------------------
    def roofline(self, work: Work) -> float:
        """Seconds of one kernel at the profile's achieved compute and memory rates: the slower of
        the two, or their `roofline_exponent`-norm (no fixed cost). A GEMM of M rows computes at
        M / (M + gemm_half_rows) of the peak (Hockney's half-performance length): as if it ran
        `gemm_half_rows` more rows, 2 FLOPs per weight each."""
        tc = (work.flops + 2.0 * self.half_rows * work.weights) / self.flops_per_s
        tm = work.bytes / self.hbm_bytes_per_s
        n = self.exponent
        if n is None or tc == 0.0 or tm == 0.0:
            return max(tc, tm)
        hi = max(tc, tm)  # scaled so large exponents cannot overflow
        return hi * ((tc / hi) ** n + (tm / hi) ** n) ** (1.0 / n)

    def kernels_time(self, kernels: list[Work]) -> float:
        """Seconds of kernels run one after another."""
        return sum(self.roofline(k) for k in kernels)

    def block_kind(self, block: int) -> BlockKind:
        moe = self.model.backbone.moe
        return "moe" if moe is not None and block >= moe.dense_layers else "dense"

    def experts_touched(self, tokens: int) -> float:
        """Expected experts whose weights a step of `tokens` tokens reads: shared experts plus
        E·(1-(1-k/E)^n) distinct routed ones, assuming uniform, independent routing."""
        moe = self.model.backbone.moe
        if moe is None:
            return 0.0
        e, k = moe.experts, moe.top_k
        return moe.shared_experts + e * (1.0 - (1.0 - k / e) ** tokens)

    def attention_work(self, step: Step) -> Work:
        """Norm, q/k/v/o projections (GQA), causal attention over the KV cache, residual add."""
        return total(self.attention_kernels(step))

    def attention_kernels(self, step: Step) -> list[Work]:
        """[input RMSNorm + qkv GEMM, attention core, o GEMM + residual add].

        Query-key pairs per sequence with n new tokens and context c after the step:
        n·(c-n) + n(n+1)/2 (prefill of a whole prompt: n(n+1)/2; decode: c). Each pair costs
        4·head_dim FLOPs per head (QK^T and PV). The KV cache of c tokens is read once per
        sequence and the n new tokens' K/V are written once.
        """
        bb, b = self.model.backbone, self.dtype_bytes
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

    def mlp_kernels(self, step: Step) -> list[Work]:
        """Dense SwiGLU MLP (3·hidden·intermediate weights): [norm + gate/up GEMM, SiLU(gate)·up,
        down GEMM + residual add]."""
        bb, b = self.model.backbone, self.dtype_bytes
        hidden, inter = bb.hidden, bb.intermediate
        tokens = step.num_tokens
        return [
            gemm(tokens, hidden, 2 * inter, b, extra_elems=2 * hidden),  # + post-attention RMSNorm
            Work(0.0, tokens * 3 * inter * b),  # SiLU(gate) * up: read 2, write 1
            gemm(tokens, inter, hidden, b, extra_elems=3 * hidden),  # + residual add
        ]

    def moe_kernels(self, step: Step) -> list[Work]:
        """Norm + router, the experts' gate/up GEMMs + SwiGLU, their down GEMMs + weighted
        combine + residual add (shared + top-k routed experts).

        FLOPs follow the tokens (each token runs shared + top_k experts); weight bytes follow
        the distinct experts the step touches (`experts_touched`), each read once.
        """
        bb, b = self.model.backbone, self.dtype_bytes
        moe = bb.moe
        assert moe is not None
        hidden, inter = bb.hidden, moe.expert_intermediate
        tokens = step.num_tokens
        paths = moe.shared_experts + moe.top_k  # experts each token runs through
        touched = self.experts_touched(tokens)
        router = gemm(tokens, hidden, moe.experts, b, extra_elems=2 * hidden)  # + post-attention RMSNorm
        up = Work(2.0 * tokens * paths * hidden * 2 * inter,
                  (touched * hidden * 2 * inter + tokens * paths * (hidden + 2 * inter + 3 * inter)) * b,
                  gemm_weights(tokens, touched * hidden * 2 * inter))
        down = Work(2.0 * tokens * paths * inter * hidden,
                    (touched * inter * hidden + tokens * (paths * (inter + hidden) + paths * hidden + hidden + 3 * hidden)) * b,
                    gemm_weights(tokens, touched * inter * hidden))
        return [router, up, down]

    def mlp_work(self, step: Step) -> Work:
        return total(self.mlp_kernels(step))

    def moe_work(self, step: Step) -> Work:
        return total(self.moe_kernels(step))

    def block_kernels(self, step: Step, block: int) -> list[Work]:
        """The kernels of one transformer block (attention + MLP or MoE) for the step."""
        mlp = self.moe_kernels(step) if self.block_kind(block) == "moe" else self.mlp_kernels(step)
        return self.attention_kernels(step) + mlp

    def block_work(self, step: Step, block: int) -> Work:
        """FLOPs and bytes of one transformer block for the step."""
        return total(self.block_kernels(step, block))

    def block_time(self, step: Step, block: int) -> float:
        """Seconds of one block: its kernels' rooflines + the profile's layer overhead."""
        if self._cached_step is not step:
            self._cached_step, self._cache = step, {}
        kind = self.block_kind(block)
        if kind not in self._cache:
            self._cache[kind] = self.kernels_time(self.block_kernels(step, block)) + self.layer_overhead_s
        return self._cache[kind]

    def blocks_time(self, step: Step, start: int, stop: int) -> float:
        """Seconds of blocks start..stop-1, back to back (two roofline evaluations per step at most)."""
        layers = self.model.backbone.layers
        if not 0 <= start <= stop <= layers:
            raise ValueError(f"block range {start}..{stop} is outside 0..{layers}")
        moe = self.model.backbone.moe
        split = min(max(moe.dense_layers, start), stop) if moe is not None else stop
        total = 0.0
        if split > start:
            total += (split - start) * self.block_time(step, start)
        if stop > split:
            total += (stop - split) * self.block_time(step, split)
        return total

    # ---- GPU: Engram layer and head ----------------------------------------------------------
    def engram_kernels(self, step: Step, rows: int) -> list[Work]:
        """The Engram layer's GPU work after its rows are on the device: [gather, fused
        projection, gating + short conv + residual].

        Gather: the step's `rows` unique rows read from device memory (from the table in HBM, or
        from the buffer the link filled: the same traffic either way, so offloading never makes
        this cheaper), and the memory vector e_t written for every token.
        Fused projection d_mem -> (hc_mult+1)·hidden (the W_k per branch and the shared W_v).
        Gating, short conv and residual: `ENGRAM_ELEMENTWISE_PASSES` passes over
        [tokens, hc_mult, hidden] plus the depthwise conv's FLOPs.
        """
        engram, b = self.model.engram, self.dtype_bytes
        hidden, hc = self.model.backbone.hidden, engram.hc_mult
        tokens = step.num_tokens
        e_t = engram.heads_per_layer * engram.row_bytes  # one token's memory vector, bytes
        gather = Work(0.0, rows * engram.row_bytes + tokens * e_t)
        out = (hc + 1) * hidden
        params = engram.d_mem * out
        projection = Work(2.0 * tokens * params, params * b + tokens * (e_t + out * b), gemm_weights(tokens, params))
        branch_elems = tokens * hc * hidden
        elementwise = Work(2.0 * engram.kernel_size * branch_elems, ENGRAM_ELEMENTWISE_PASSES * branch_elems * b)
        return [gather, projection, elementwise]

    def engram_work(self, step: Step, rows: int) -> Work:
        return total(self.engram_kernels(step, rows))

    def engram_time(self, step: Step, rows: int) -> float:
        """Seconds of the Engram layer's own GPU work (its kernels + the Engram layer overhead)."""
        return self.kernels_time(self.engram_kernels(step, rows)) + self.engram_overhead_s

    def head_kernels(self, step: Step) -> list[Work]:
        """[embedding lookup + final RMSNorm, LM head GEMM for one sampled token per sequence]."""
        bb, b = self.model.backbone, self.dtype_bytes
        tokens, seqs = step.num_tokens, step.num_seqs
        lookup_norm = Work(0.0, 4.0 * tokens * bb.hidden * b)  # embedding read + write, norm read + write
        params = bb.hidden * bb.vocab
        head = Work(2.0 * seqs * params, params * b + seqs * bb.hidden * b + 2.0 * seqs * bb.vocab * LOGIT_BYTES,
                    gemm_weights(seqs, params))
        return [lookup_norm, head]

    def head_work(self, step: Step) -> Work:
        return total(self.head_kernels(step))

    def head_time(self, step: Step) -> float:
        """Seconds of embedding + final norm + LM head."""
        return self.kernels_time(self.head_kernels(step))

    def host_time(self, step: Step) -> float:
        """The profile's per-step host cost (scheduling, planning, input layout, launches), paid
        before block 0 and before the step's first fetch is issued."""
        return self.profile.step_overhead_us * US

    # ---- fetches -------------------------------------------------------------------------------
    def gather_time(self, rows: int, row_bytes: int) -> float:
        """Host CPU gather of `rows` random rows into pinned staging.

        gather_overhead + rows / (threads × rows_per_s per thread), bounded below by the DRAM
        traffic (each row read from the table and written to staging: 2 × rows × row_bytes).
        Random rows are latency-bound, so the row rate usually binds. 0 rows cost nothing.
        """
        if rows <= 0:
            return 0.0
        host = self.profile.host
        by_rate = rows / (host.gather_threads * host.gather_rows_per_s)
        by_dram = 2.0 * rows * row_bytes / (host.dram_gbps * GB)
        return host.gather_overhead_us * US + max(by_rate, by_dram)

    def h2d_latency(self) -> float:
        """Fixed cost of one async host-to-device copy (paid before the copy takes the link)."""
        return self.profile.link.dma_latency_us * US

    def h2d_wire_time(self, nbytes: int) -> float:
        """Seconds `nbytes` occupy the link in a DMA copy."""
        return max(0, nbytes) / (self.profile.link.h2d_gbps * GB)

    def h2d_time(self, nbytes: int) -> float:
        """One DMA copy: dma_latency + bytes / h2d bandwidth; 0 bytes cost nothing."""
        return 0.0 if nbytes <= 0 else self.h2d_latency() + self.h2d_wire_time(nbytes)

    def zero_copy_latency(self) -> float:
        """Launch + first round trip of a GPU kernel reading pinned host memory."""
        return self.profile.link.zero_copy_latency_us * US

    def zero_copy_wire_time(self, rows: int, row_bytes: int) -> float:
        """Seconds the link is busy: each row rounded up to whole transactions."""
        tx = self.profile.link.transaction_bytes
        wire_bytes = max(0, rows) * math.ceil(row_bytes / tx) * tx
        return wire_bytes / (self.profile.link.zero_copy_gbps * GB)

    def zero_copy_time(self, rows: int, row_bytes: int) -> float:
        """zero_copy_latency + rows × ceil(row_bytes / tx) × tx / zero-copy bandwidth; 0 rows cost nothing."""
        return 0.0 if rows <= 0 else self.zero_copy_latency() + self.zero_copy_wire_time(rows, row_bytes)

    def stage_time(self, stage: Stage, row_bytes: int) -> float:
        """Seconds of one transport stage run alone (no contention), by its resource."""
        if stage.resource == "gather":
            return self.gather_time(stage.rows, row_bytes)
        if stage.resource == "h2d":
            return self.h2d_time(stage.bytes)
        if stage.resource == "zero_copy":
            return self.zero_copy_time(stage.rows, row_bytes)
        raise ValueError(f"transport stage names unknown resource {stage.resource!r}")

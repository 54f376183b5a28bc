"""The cost model: hand-computed FLOPs/bytes on a tiny model, exact fetch formulas, sanity ranges."""

from __future__ import annotations

import itertools
import math
from typing import Any, Literal

import numpy as np
import pytest

from engramsim import hbm, kernels
from engramsim.hardware.presets import load_profile
from engramsim.hardware.profile import HardwareProfile
from engramsim.kernels import Work
from engramsim.scenario import Model
from engramsim.simulator.cost import CostModel, RooflineCostModel
from engramsim.steps import Step

# A profile with round numbers: 1e12 FLOP/s * 0.5 and 1 GB/s * 0.5 achieved.
ROUND: dict[str, Any] = {
    "name": "round",
    "gpu": {"name": "g", "bf16_tflops": 1.0, "hbm_gbps": 1.0, "hbm_gib": 1.0, "compute_efficiency": 0.5,
            "memory_efficiency": 0.5, "layer_overhead_us": 2.0},
    "link": {"name": "l", "h2d_gbps": 10.0, "d2h_gbps": 10.0, "dma_latency_us": 5.0, "zero_copy_gbps": 4.0,
             "zero_copy_latency_us": 3.0, "transaction_bytes": 64},
    "host": {"name": "h", "dram_gbps": 100.0, "dram_gib": 8.0, "gather_rows_per_s": 1e6, "gather_threads": 4,
             "gather_overhead_us": 7.0},
    "step_overhead_us": 100.0,
    "provenance": {"kind": "preset", "source": "test"},
}

# One block: hidden 8, intermediate 16, 2 query heads, 1 KV head, head dim 4, vocab 32, bf16.
# Engram at block 0: 2-/3-grams x 2 heads (4 heads/layer), head dim 4 bf16 (8 B rows), d_mem 16, hc_mult 2.
TINY: dict[str, Any] = {
    "backbone": {"layers": 1, "hidden": 8, "intermediate": 16, "vocab": 32, "dtype": "bf16",
                 "attention": {"heads": 2, "kv_heads": 1, "head_dim": 4}},
    "engram": {"layers": [0], "max_ngram": 3, "heads": 2, "head_dim": 4, "rows_per_head": 101, "dtype": "bf16",
               "hc_mult": 2, "kernel_size": 4},
}

DENSE_4B = {
    "backbone": {"layers": 36, "hidden": 2560, "intermediate": 9728, "vocab": 151936, "dtype": "bf16",
                 "attention": {"heads": 32, "kv_heads": 8, "head_dim": 128}},
    "engram": {"layers": [1], "heads": 8, "head_dim": 80, "rows_per_head": 78_125_000, "hc_mult": 1},
}


def make_step(new: list[int], ctx: list[int], kind: Literal["prefill", "decode", "mixed"] = "prefill", index: int = 0, pad: int = 0) -> Step:
    new_a, ctx_a = np.asarray(new, dtype=np.int64), np.asarray(ctx, dtype=np.int64)
    return Step(index, kind, np.arange(new_a.size, dtype=np.int64), new_a, ctx_a,
                np.zeros(int(new_a.sum()), dtype=np.int64), pad=pad)


def work(of, cost: RooflineCostModel, *args) -> Work:
    """The summed FLOPs, bytes and weights of the kernels `of` (an inventory function of
    engramsim/kernels.py) for `cost`'s model: the numbers these tests check by hand."""
    summed = kernels.total(of(cost.model, *args))
    return Work(summed.flops, summed.bytes, summed.weights)


@pytest.fixture
def tiny() -> RooflineCostModel:
    return RooflineCostModel(Model.model_validate(TINY), HardwareProfile.model_validate(ROUND))


@pytest.fixture(scope="module")
def dense4b_h800() -> RooflineCostModel:
    return RooflineCostModel(Model.model_validate(DENSE_4B), load_profile("h800"))


# ---- hand-computed work on the tiny model -----------------------------------------------------
def test_attention_work_by_hand_prefill(tiny):
    # qkv_out = (2 + 2*1)*4 = 16, o_in = 8, params = 8*16 + 8*8 = 192
    # 3 new tokens, context 3: causal pairs = 3*4/2 = 6
    # flops = 2*3*192 + 4*heads 2*head_dim 4*6 = 1152 + 192 = 1344
    # KV: (context 3 read + 3 written) * (2*1*4*2 B) = 96 B
    # activations per token: norm 16 + qkv (8+16) + attn 16 + o (8+8) + residual 24 = 96 elems
    # bytes = 192*2 + 96 + 3*96*2 = 1056
    assert work(kernels.attention_kernels, tiny, make_step([3], [3])) == Work(1344.0, 1056.0, 192.0)


def test_attention_work_by_hand_decode(tiny):
    # two sequences, one new token each, contexts 5 and 9: pairs = 5 + 9 = 14
    # flops = 2*2*192 + 32*14 = 768 + 448 = 1216; bytes = 384 + (14 + 2)*16 + 2*96*2 = 1024
    assert work(kernels.attention_kernels, tiny, make_step([1, 1], [5, 9], "decode")) == Work(1216.0, 1024.0, 192.0)


def test_chunked_prefill_pairs(tiny):
    # 2 new tokens after 4 cached: pairs = 2*4 + 2*3/2 = 11
    attention = work(kernels.attention_kernels, tiny, make_step([2], [6]))
    assert attention.flops == 2 * 2 * 192 + 32 * 11


def test_mlp_work_by_hand(tiny):
    # params = 3*8*16 = 384; flops = 2*3*384 = 2304
    # per token: norm 16 + gate_up (8+32) + swiglu 48 + down (16+8) + residual 24 = 152 elems
    # bytes = 384*2 + 3*152*2 = 1680
    assert work(kernels.mlp_kernels, tiny, make_step([3], [3])) == Work(2304.0, 1680.0, 384.0)


def test_block_time_is_roofline_plus_overhead(tiny):
    step = make_step([3], [3])
    # work = (1344 + 2304, 1056 + 1680) = (3648 FLOP, 2736 B); 5e11 FLOP/s, 5e8 B/s: memory-bound
    assert work(kernels.block_kernels, tiny, step, 0) == Work(3648.0, 2736.0, 576.0)
    assert tiny.block_time(step, 0) == pytest.approx(2736 / 5e8 + 2e-6, rel=1e-12)
    assert tiny.blocks_time(step, 0, 1) == tiny.block_time(step, 0)
    assert tiny.blocks_time(step, 0, 0) == 0.0
    with pytest.raises(ValueError):
        tiny.blocks_time(step, 0, 2)


def test_engram_work_by_hand(tiny):
    # rows of 8 B; e_t = 4 heads * 8 B = 32 B/token; 3 tokens, 5 rows from HBM
    # gather: 5*8 + 3*32 = 136 B
    # projection 16 -> (2+1)*8 = 24: params 384, flops 2*3*384 = 2304, bytes 768 + 3*(32 + 48) = 1008
    # elementwise over 3*2*8 = 48 elems: flops 2*4*48 = 384, bytes 15*48*2 = 1440
    step = make_step([3], [3])
    assert work(kernels.engram_kernels, tiny, step, 5) == Work(2688.0, 2584.0, 384.0)
    assert tiny.engram_time(step, 5) == pytest.approx(2584 / 5e8 + 2e-6, rel=1e-12)
    assert tiny.engram_time(step, 50) > tiny.engram_time(step, 5)


def test_a_table_in_another_dtype_is_converted_once_per_unique_row(tiny):
    """fp8 rows under a bf16 backbone: one more kernel reads the 5 stored rows (4 values + one
    ue8m0 scale: 5 B) and writes their bf16 values (8 B), a multiply and an add per value; the
    gather and everything after it see bf16 values, as with a bf16 table. Guards: quantised bytes
    priced on the link but their dequantise free on the GPU."""
    step = make_step([3], [3])
    fp8 = RooflineCostModel(tiny.model.model_copy(update={"engram": tiny.model.engram.model_copy(update={"dtype": "fp8"})}), tiny.profile)
    assert fp8.model.engram.row_bytes == 5
    converted, *rest = kernels.engram_kernels(fp8.model, step, 5)
    assert (converted.flops, converted.bytes) == (2.0 * 5 * 4, 5 * (5 + 8))
    assert rest == kernels.engram_kernels(tiny.model, step, 5)
    assert fp8.engram_time(step, 5) == pytest.approx(tiny.engram_time(step, 5) + 65 / 5e8, rel=1e-12)  # memory-bound; no kernel overhead here


def test_head_work_by_hand(tiny):
    # embedding 2*3*8*2 = 96 B, norm 96 B; LM head 8x32: flops 2*1*256 = 512,
    # bytes 256*2 + 8*2 + 2*32*4 = 784 -> 976 B; the 100 us step overhead is the host's, not the head's
    step = make_step([3], [3])
    assert work(kernels.head_kernels, tiny, step) == Work(512.0, 976.0, 0.0)  # one sequence: a matrix-vector product, no GEMM penalty
    assert tiny.head_time(step) == pytest.approx(976 / 5e8, rel=1e-12)
    assert tiny.host_time(step) == pytest.approx(100e-6)  # the step overhead, paid once per step


# ---- MoE -------------------------------------------------------------------------------------
def moe_model(layers: int = 3) -> Model:
    data = {**TINY, "backbone": {**TINY["backbone"], "layers": layers,
                                 "moe": {"experts": 8, "top_k": 2, "shared_experts": 1, "expert_intermediate": 4,
                                         "dense_layers": 1}}}
    return Model.model_validate(data)


def test_experts_touched():
    cost = RooflineCostModel(moe_model(), HardwareProfile.model_validate(ROUND))
    assert kernels.experts_touched(cost.model, 1) == pytest.approx(1 + 2)  # one token: shared + top_k
    assert kernels.experts_touched(cost.model, 2) == pytest.approx(1 + 8 * (1 - 0.75**2))
    assert kernels.experts_touched(cost.model, 10_000) == pytest.approx(1 + 8)  # every expert
    counts = [kernels.experts_touched(cost.model, n) for n in range(1, 50)]
    assert all(a < b for a, b in itertools.pairwise(counts))


def test_moe_work_by_hand():
    cost = RooflineCostModel(moe_model(), HardwareProfile.model_validate(ROUND))
    step = make_step([1], [1], "decode")
    # expert = 3*8*4 = 96 params, router 8*8 = 64; one token runs 3 experts
    # flops = 2*1*(3*96 + 64) = 704; weights = (3*96 + 64)*2 = 704 B
    # per token: norm 16 + router (8+8) + 3*(8+8+12+4+8) + combine (3*8 + 8) + residual 24 = 208 elems
    assert work(kernels.moe_kernels, cost, step) == Work(704.0, 704.0 + 208 * 2, 0.0)  # one token: matrix-vector products only
    assert kernels.block_kind(cost.model, 0) == "dense" and kernels.block_kind(cost.model, 1) == "moe"
    assert work(kernels.block_kernels, cost, step, 1) == work(kernels.attention_kernels, cost, step) + work(kernels.moe_kernels, cost, step)


def test_blocks_time_mixes_dense_and_moe():
    cost = RooflineCostModel(moe_model(layers=4), HardwareProfile.model_validate(ROUND))
    step = make_step([5, 7], [5, 7])
    dense, moe = cost.block_time(step, 0), cost.block_time(step, 1)
    assert dense != moe
    assert cost.blocks_time(step, 0, 4) == pytest.approx(dense + 3 * moe)
    assert cost.blocks_time(step, 2, 4) == pytest.approx(2 * moe)
    assert cost.blocks_time(step, 0, 1) == pytest.approx(dense)


def test_block_cache_follows_the_step(tiny):
    a, b = make_step([3], [3], index=7), make_step([9], [9], index=7)  # same index, different step
    assert tiny.block_time(a, 0) < tiny.block_time(b, 0)
    assert tiny.block_time(a, 0) == tiny.kernels_time(kernels.block_kernels(tiny.model, a, 0)) + tiny.layer_overhead_s


def test_kernels_sum_to_the_work_and_each_pays_its_own_roofline(tiny):
    step = make_step([3], [3])
    works = kernels.block_kernels(tiny.model, step, 0)
    assert len(works) == 6  # qkv, attention core, o, gate/up, SwiGLU, down
    summed = sum(works, Work())
    assert Work(summed.flops, summed.bytes, summed.weights) == Work(3648.0, 2736.0, 576.0)
    # GEMM shapes (m, n, k): qkv [3, 8] x [8, 16], o [3, 8] x [8, 8], gate/up [3, 8] x [8, 32], down [3, 16] x [16, 8]
    assert summed.gemms == ((3, 16, 8, 1), (3, 8, 8, 1), (3, 32, 8, 1), (3, 8, 16, 1))
    # per kernel max(compute, memory) is never below the roofline of the sum
    assert tiny.kernels_time(works) >= tiny.roofline(work(kernels.block_kernels, tiny, step, 0)) * (1 - 1e-12)
    by_hand = sum(max(k.flops / 0.5e12, k.bytes / 0.5e9) for k in works)
    assert tiny.kernels_time(works) == pytest.approx(by_hand)


def test_gemm_half_rows_slow_small_gemms_but_not_a_single_row():
    slow = {**ROUND["gpu"], "bf16_tflops": 1e-6, "gemm_half_rows": 8.0}  # 5e5 FLOP/s achieved: compute-bound
    cost = RooflineCostModel(Model.model_validate(TINY), HardwareProfile.model_validate({**ROUND, "gpu": slow}))
    one, four = make_step([1], [5], "decode"), make_step([1] * 4, [5] * 4, "decode")
    assert work(kernels.head_kernels, cost, one).weights == 0.0  # one row: a matrix-vector product
    assert work(kernels.head_kernels, cost, four).weights == 8 * 32
    head = kernels.head_kernels(cost.model, four)[1]
    # compute as if 4 + 8 rows ran: 2 * 12 * 256 FLOPs at 5e5 FLOP/s; one row: just its own 2 * 256
    assert cost.roofline(head) == pytest.approx(2 * 12 * 256 / 5e5)
    assert cost.roofline(kernels.head_kernels(cost.model, one)[1]) == pytest.approx(2 * 256 / 5e5)


TINY_MHC = {**TINY, "backbone": {**TINY["backbone"], "hc_mult": 4}}


def test_every_kernel_pays_the_kernel_overhead_on_top_of_the_layer_and_engram_overheads():
    """A fixed cost per kernel of the inventory (blocks, Engram layer and head alike); 0, the default,
    leaves every price as it was."""
    gpu = {**ROUND["gpu"], "kernel_overhead_us": 3.0, "engram_overhead_us": 5.0}
    cost = RooflineCostModel(Model.model_validate(TINY_MHC), HardwareProfile.model_validate({**ROUND, "gpu": gpu}))
    plain = RooflineCostModel(Model.model_validate(TINY_MHC),
                              HardwareProfile.model_validate({**ROUND, "gpu": {**gpu, "kernel_overhead_us": 0.0}}))
    step = make_step([1, 1], [4, 6], "decode")
    blocks = kernels.block_kernels(cost.model, step, 0)
    assert len(blocks) == 10  # mHC pre + qkv, core, o + mHC post, mHC pre + gate/up, SwiGLU, down + mHC post
    assert cost.block_time(step, 0) == pytest.approx(sum(cost.roofline(w) for w in blocks) + 10 * 3e-6 + 2e-6, rel=1e-12)
    assert cost.block_time(step, 0) - plain.block_time(step, 0) == pytest.approx(10 * 3e-6, rel=1e-9)
    assert cost.engram_time(step, 7) - plain.engram_time(step, 7) == pytest.approx(3 * 3e-6, rel=1e-9)  # gather, projection, gating
    assert cost.head_time(step) - plain.head_time(step) == pytest.approx(2 * 3e-6, rel=1e-9)  # lookup + norm, LM head
    assert HardwareProfile.model_validate(ROUND).gpu.kernel_overhead_us == 0.0


def test_grouped_launches_take_their_own_half_rows_and_nothing_else_does():
    """Routed experts and per-head products (GEMMs of batch != 1 over more than one row) pay
    `grouped_gemm_half_rows`; shared experts and plain GEMMs `gemm_half_rows`; null: one for all."""
    moe = moe_model()
    up = kernels.moe_kernels(moe, make_step([2], [2]))[1]
    # 2 tokens: shared expert (batch 1) 2 rows; 3.5 routed experts of 8 x 8 each, 4 / 3.5 rows each: 3.5 * 64 weights grouped
    assert kernels.grouped_weights(up) == pytest.approx(3.5 * 64) and up.weights == pytest.approx(4.5 * 64)
    assert kernels.grouped_weights(kernels.moe_kernels(moe, make_step([1], [1], "decode"))[1]) == 0.0  # one row per expert
    assert all(kernels.grouped_weights(w) == 0.0 for w in kernels.block_kernels(moe, make_step([5], [5]), 0))  # dense
    absorbed = kernels.attention_kernels(mla_cost().model, make_step([1, 1], [5, 9], "decode"))[2]
    assert kernels.grouped_weights(absorbed) == absorbed.weights == 48  # q_nope x W_UK: 2 heads x [4, 6]

    def priced(grouped_half_rows: float | None, sms: int | None = None) -> float:
        gpu = {**ROUND["gpu"], "bf16_tflops": 1e-6, "gemm_half_rows": 8.0, "grouped_gemm_half_rows": grouped_half_rows, "sms": sms}
        return RooflineCostModel(moe, HardwareProfile.model_validate({**ROUND, "gpu": gpu})).roofline(up)

    # compute-bound at 5e5 FLOP/s: 768 FLOPs + 2 * 8 half-rows * 64 shared weights + 2 * h * 224 routed weights
    assert priced(20.0) == pytest.approx((768 + 2 * 8 * 64 + 2 * 20 * 224) / 5e5)
    assert priced(None) == pytest.approx((768 + 2 * 8 * 288) / 5e5)
    assert priced(20.0, sms=132) == priced(None, sms=132)  # the wave model replaces both


@pytest.mark.parametrize("n", [1.0, 2.0, 64.0])
def test_roofline_exponent_combines_compute_and_memory(n):
    profile = HardwareProfile.model_validate({**ROUND, "gpu": {**ROUND["gpu"], "roofline_exponent": n}})
    cost = RooflineCostModel(Model.model_validate(TINY), profile)
    tc, tm = 3e-6, 4e-6  # 1.5e6 FLOP at 0.5e12 FLOP/s, 2000 B at 0.5e9 B/s
    work = Work(1.5e6, 2000.0)
    assert cost.roofline(work) == pytest.approx(1e-6 * (3 ** n + 4 ** n) ** (1 / n))
    assert max(tc, tm) <= cost.roofline(work) <= tc + tm + 1e-18
    assert cost.roofline(Work(0.0, 2000.0)) == pytest.approx(tm)  # pure traffic: no compute term


# ---- MLA ------------------------------------------------------------------------------------------
# The tiny model with MLA: H 2 heads, d 4, rope r 2, KV latent L 6, no query latent; hidden C 8, bf16.
# Cached per token and block: L + r = 8 values = 16 B. Weights: q 8*12 = 96, KV down 8*8 = 64,
# up-projection 6*(2*2*4) = 96 (W_UK + W_UV, 48 each), o 8*8 = 64: 320.
TINY_MLA = {**TINY, "backbone": {**TINY["backbone"], "attention": {"kind": "mla", "heads": 2, "head_dim": 4, "rope_head_dim": 2,
                                                                   "kv_lora_rank": 6}}}


def mla_cost(**attention) -> RooflineCostModel:
    data = {**TINY_MLA, "backbone": {**TINY_MLA["backbone"], "attention": {**TINY_MLA["backbone"]["attention"], **attention}}}
    return RooflineCostModel(Model.model_validate(data), HardwareProfile.model_validate(ROUND))


def test_mla_decode_work_by_hand():
    cost = mla_cost()
    works = kernels.attention_kernels(cost.model, make_step([1, 1], [5, 9], "decode"))
    # 2 decode sequences, contexts 5 + 9 = 14 cached tokens (pairs); 2 rows in every GEMM
    # query 8 -> 12 + input norm 16: flops 2*2*96 = 384, bytes (96 + 2*(8+12+16))*2 = 336
    # KV down 8 -> 8 + latent norm 12: flops 2*2*64 = 256, bytes (64 + 2*(8+8+12))*2 = 240, + 2 tokens * 16 B written = 272
    # q_nope x W_UK, per head [2, 4] x [4, 6]: flops 2*2*48 = 192, bytes (48 + 2*2*(4+6))*2 = 176
    # core: 14 pairs * (2*2*(6+2) + 2*2*6) = 14*56 = 784 FLOPs; cache 14*16 = 224 B + q 2*2*8*2 = 64 B + out 2*2*6*2 = 48 B
    # x W_UV, per head [2, 6] x [6, 4]: flops 192, bytes 176
    # o 8 -> 8 + residual 24: flops 2*2*64 = 256, bytes (64 + 2*(8+8+24))*2 = 288
    assert [(w.flops, w.bytes, w.attention_bytes) for w in works] == [
        (384.0, 336.0, 0.0), (256.0, 272.0, 0.0), (192.0, 176.0, 0.0), (784.0, 336.0, 224.0), (192.0, 176.0, 0.0), (256.0, 288.0, 0.0)]
    assert work(kernels.attention_kernels, cost, make_step([1, 1], [5, 9], "decode")) == Work(2064.0, 1584.0, 320.0)
    assert 320 == hbm.attention_params(cost.model.backbone)  # every weight read once
    assert 224 == 14 * hbm.kv_bytes_per_token(cost.model.backbone)  # the one block's latent + rotary key per token


def test_mla_prefill_work_by_hand():
    cost = mla_cost()
    works = kernels.attention_kernels(cost.model, make_step([3], [3]))
    # one prompt of 3 tokens: 3 rows, 3 context tokens, 3*4/2 = 6 causal pairs
    # query: flops 2*3*96 = 576, bytes (96 + 3*36)*2 = 408; KV down: 2*3*64 = 384, (64 + 3*28)*2 + 3*16 = 344
    # up-projection [3, 6] x [6, 16]: flops 2*3*96 = 576, bytes (96 + 3*(6+16))*2 = 324
    # core: 6 pairs * (2*2*(4+2) + 2*2*4) = 240 FLOPs; K/V 3*(16 + 2) + q 3*12 + out 3*8 = 114 elems = 228 B
    # o: flops 384, bytes (64 + 3*40)*2 = 368
    assert [(w.flops, w.bytes, w.attention_bytes) for w in works] == [
        (576.0, 408.0, 0.0), (384.0, 344.0, 0.0), (576.0, 324.0, 0.0), (240.0, 228.0, 0.0), (384.0, 368.0, 0.0)]
    assert work(kernels.attention_kernels, cost, make_step([3], [3])) == Work(2160.0, 1672.0, 320.0)


def test_mla_mixed_step_runs_each_sequence_in_its_form():
    cost = mla_cost()
    mixed = kernels.attention_kernels(cost.model, make_step([1, 3], [5, 3], "mixed"))
    decode = kernels.attention_kernels(cost.model, make_step([1], [5], "decode"))
    prefill = kernels.attention_kernels(cost.model, make_step([3], [3]))
    # [query, KV down, W_UK, decode core, W_UV, up-projection, prefill core, o]: the shared GEMMs over 4 rows
    assert len(mixed) == 8
    assert mixed[2:5] == decode[2:5] and mixed[5:7] == prefill[2:4]
    assert mixed[0] == kernels.gemm(4, 8, 12, 2.0, extra_elems=16)


def test_mla_query_latent_by_hand():
    cost = mla_cost(q_lora_rank=4)
    works = kernels.attention_kernels(cost.model, make_step([1, 1], [5, 9], "decode"))
    # 8 -> 4 + input norm 16: flops 2*2*32 = 128, bytes (32 + 2*(8+4+16))*2 = 176
    # 4 -> 12 + query-latent norm 8: flops 2*2*48 = 192, bytes (48 + 2*(4+12+8))*2 = 192
    assert [(w.flops, w.bytes, w.weights) for w in works[:2]] == [(128.0, 176.0, 32.0), (192.0, 192.0, 48.0)]
    assert work(kernels.attention_kernels, cost, make_step([1, 1], [5, 9], "decode")).weights == 304 == hbm.attention_params(cost.model.backbone)


# ---- mHC ------------------------------------------------------------------------------------------
def test_mhc_work_by_hand(tiny):
    data = {**TINY, "backbone": {**TINY["backbone"], "hc_mult": 4}}
    cost = RooflineCostModel(Model.model_validate(data), HardwareProfile.model_validate(ROUND))
    step = make_step([3], [3])
    pre, post = kernels.mhc_kernels(cost.model, step)
    # n 4 streams of C 8, 3 tokens: GEMM 32 -> 16 + 8 = 24 coefficients, 768 weights: flops 2*3*768 = 4608
    # per token: norm 64 (r+w of 32) + GEMM (32 + 24) + pre-mix (read 32, write 8) = 160 elems: bytes (768 + 3*160)*2 = 2496
    assert (pre.flops, pre.bytes, pre.weights) == (4608.0, 2496.0, 768.0)
    # post + residual mix: read 32 + 8, write 32 per token: 3*72*2 = 432 B
    assert (post.flops, post.bytes) == (0.0, 432.0)
    works = kernels.block_kernels(cost.model, step, 0)
    assert len(works) == 10 and works[0] == works[5] == pre and works[4] == works[9] == post
    # the plain block (3648, 2736, 576) + two sublayers' mHC, less the two residual adds (3 tokens * 24 elems * 2 B each)
    assert work(kernels.block_kernels, cost, step, 0) == Work(3648.0 + 2 * 4608, 2736.0 + 2 * (2496 + 432) - 2 * 144, 576.0 + 2 * 768)
    assert 2 * 768 == hbm.mhc_params(cost.model.backbone)
    assert work(kernels.attention_kernels, tiny, step).bytes - work(kernels.attention_kernels, cost, step).bytes == 144


# ---- GEMM waves -----------------------------------------------------------------------------------
# 1e15 FLOP/s * 0.5 = 5e14 achieved; HBM fast enough that every GEMM below is compute-bound; 132 SMs, 128 x 128 tiles.
WAVES = {**ROUND, "gpu": {**ROUND["gpu"], "bf16_tflops": 1000.0, "hbm_gbps": 1e9, "sms": 132}}


def test_gemm_waves_by_hand():
    cost = RooflineCostModel(Model.model_validate(TINY), HardwareProfile.model_validate(WAVES))
    tile = 2 * 128 * 128  # FLOPs per unit of k of one tile
    # [512, 2560] x [2560, 6144]: 4 * 48 = 192 tiles on 132 SMs: 2 waves, each one tile's time on every SM
    assert cost.roofline(kernels.gemm(512, 2560, 6144, 2.0)) == pytest.approx(2 * 132 * tile * 2560 / 5e14)
    # 11 * 12 = 132 tiles: exactly one wave, the plain roofline; one row more: 12 * 12 = 144 tiles, 2 waves
    assert cost.roofline(kernels.gemm(1408, 2560, 1536, 2.0)) == pytest.approx(2 * 1408 * 1536 * 2560 / 5e14)
    assert cost.roofline(kernels.gemm(1409, 2560, 1536, 2.0)) == pytest.approx(2 * 132 * tile * 2560 / 5e14)
    # fewer tiles than SMs, split-K: [512, 10240] x [10240, 24]: 4 tiles, k split 132 // 4 = 33 ways: the 4 tiles' FLOPs
    assert cost.roofline(kernels.gemm(512, 10240, 24, 2.0)) == pytest.approx(4 * tile * 10240 / 5e14)
    # 10 * 10 = 100 tiles: 132 // 100 = 1 split, one whole wave
    assert cost.roofline(kernels.gemm(1280, 2560, 1280, 2.0)) == pytest.approx(132 * tile * 2560 / 5e14)
    # 40 rows: 64-row tiles (the next power of two), 1 * 48 = 48 tiles, 132 // 48 = 2 splits: half a wave
    assert cost.roofline(kernels.gemm(40, 2560, 6144, 2.0)) == pytest.approx(0.5 * 132 * 2 * 64 * 128 * 2560 / 5e14)
    # one row: a matrix-vector product, no tiles
    assert cost.roofline(kernels.gemm(1, 2560, 6144, 2.0)) == pytest.approx(2 * 6144 * 2560 / 5e14)
    # without the SM count: the plain roofline (Hockney with 0 half-rows)
    plain = RooflineCostModel(Model.model_validate(TINY), HardwareProfile.model_validate({**WAVES, "gpu": {**WAVES["gpu"], "sms": None}}))
    assert plain.roofline(kernels.gemm(512, 2560, 6144, 2.0)) == pytest.approx(2 * 512 * 6144 * 2560 / 5e14)


def test_moe_expert_gemm_shapes():
    cost = RooflineCostModel(moe_model(), HardwareProfile.model_validate(WAVES))
    up = kernels.moe_kernels(cost.model, make_step([2], [2]))[1]
    # 2 tokens: 1 shared expert sees both; 8 * (1 - 0.75^2) = 3.5 routed experts touched share 2 * 2 = 4 rows
    assert [x for shape in up.gemms for x in shape] == pytest.approx([2, 8, 8, 1, 4 / 3.5, 8, 8, 3.5])
    assert sum(2 * m * n * k * batch for m, n, k, batch in up.gemms) == pytest.approx(up.flops)  # 2 * 2 * 3 * 8 * 8 = 768
    # skinny GEMMs run 16-row tiles; fewer tiles than SMs, split-K: shared 1 tile over 132 SMs: 1/132 of
    # a 16 x 128 x 8 wave; routed 3.5 tiles, 132 // 3.5 = 37 splits each: 1/37 of a wave
    wave = 132 * 2 * 16 * 128 * 8
    assert kernels.wave_flops(up, 132, 128, 128) == pytest.approx(wave / 132 + wave / 37)
    # padding rows are alike: a decode of 2 sequences padded to 4 touches the experts of 3 tokens, not 4
    padded = kernels.moe_kernels(cost.model, make_step([1, 1], [3, 3], "decode", pad=2))[1]
    assert padded.gemms[1].batch == pytest.approx(8 * (1 - 0.75 ** 3))


# ---- CUDA-graph padding, decode attention rate, host cost ---------------------------------------------
def test_padding_runs_gemms_over_padded_rows_and_attention_over_real_tokens(tiny):
    plain, padded = make_step([1] * 3, [5] * 3, "decode"), make_step([1] * 3, [5] * 3, "decode", pad=5)
    a, b = kernels.attention_kernels(tiny.model, plain), kernels.attention_kernels(tiny.model, padded)
    assert b[0] == kernels.gemm(8, 8, 16, 2.0, extra_elems=16)  # qkv over 3 + 5 rows: 2*8*128 = 2048 FLOPs
    assert (a[0].flops, b[0].flops) == (768.0, 2048.0)
    assert b[1] == a[1]  # core: 3 tokens, 15 cached tokens read
    assert b[2] == kernels.gemm(8, 8, 8, 2.0, extra_elems=24)
    assert kernels.mlp_kernels(tiny.model, padded)[1] == Work(0.0, 8 * 48 * 2)  # SwiGLU over the padded rows too
    assert tiny.block_time(padded, 0) > tiny.block_time(plain, 0)
    head_a, head_b = kernels.head_kernels(tiny.model, plain), kernels.head_kernels(tiny.model, padded)
    assert head_b[1] == head_a[1]  # the LM head samples 3 sequences either way
    mla = mla_cost()
    a, b = (kernels.attention_kernels(mla.model, make_step([1, 1], [5, 9], "decode", pad=p)) for p in (0, 2))
    assert b[2] == kernels.gemm(4, 4, 6, 2.0, batch=2) and b[4] == kernels.gemm(4, 6, 4, 2.0, batch=2)  # absorbed: 2 + 2 rows
    assert b[3] == a[3]


def test_attention_efficiency_prices_only_the_decode_kv_read(tiny):
    slow = RooflineCostModel(tiny.model, HardwareProfile.model_validate({**ROUND, "gpu": {**ROUND["gpu"], "attention_efficiency": 0.25}}))
    decode = make_step([1, 1], [5, 9], "decode")
    qkv, core, o = kernels.attention_kernels(tiny.model, decode)
    # core: 448 FLOPs; 320 B of which the cache read is 14 * 16 = 224 B at 0.25 GB/s, the other 96 B at 0.5 GB/s
    assert (core.flops, core.bytes, core.attention_bytes) == (448.0, 320.0, 224.0)
    assert slow.roofline(core) == pytest.approx(96 / 0.5e9 + 224 / 0.25e9)
    assert tiny.roofline(core) == pytest.approx(320 / 0.5e9)
    assert slow.roofline(qkv) == tiny.roofline(qkv) and slow.roofline(o) == tiny.roofline(o)
    prefill = make_step([3], [3])  # no decode sequence: nothing read at the attention rate
    assert slow.block_time(prefill, 0) == tiny.block_time(prefill, 0)
    same = RooflineCostModel(tiny.model, HardwareProfile.model_validate({**ROUND, "gpu": {**ROUND["gpu"], "attention_efficiency": 0.5}}))
    assert same.block_time(decode, 0) == pytest.approx(tiny.block_time(decode, 0), rel=1e-12)


def test_host_time_is_a_fixed_part_plus_a_part_per_sequence(tiny):
    per_seq = RooflineCostModel(tiny.model, HardwareProfile.model_validate({**ROUND, "step_overhead_per_seq_us": 3.0}))
    four = make_step([1] * 4, [5] * 4, "decode")
    assert per_seq.host_time(four) == pytest.approx((100 + 3 * 4) * 1e-6)
    assert per_seq.host_time(make_step([7], [7])) == pytest.approx((100 + 3) * 1e-6)
    assert tiny.host_time(four) == pytest.approx(100e-6)


# ---- monotonicity and regimes on a real-sized model -------------------------------------------
def test_monotone_in_tokens_context_and_seqs(dense4b_h800):
    cost = dense4b_h800
    prefill = [cost.blocks_time(make_step([n], [n]), 0, 36) for n in (16, 256, 1024, 4096)]
    assert all(a < b for a, b in itertools.pairwise(prefill))
    decode = [cost.blocks_time(make_step([1] * 64, [c] * 64, "decode"), 0, 36) for c in (100, 600, 2000, 8000)]
    assert all(a < b for a, b in itertools.pairwise(decode))
    seqs = [cost.blocks_time(make_step([1] * s, [600] * s, "decode"), 0, 36) for s in (1, 32, 256, 512)]
    assert all(a < b for a, b in itertools.pairwise(seqs))
    heads = [cost.head_time(make_step([1] * s, [600] * s, "decode")) for s in (1, 256, 4096)]
    assert all(a < b for a, b in itertools.pairwise(heads))


def test_decode_is_memory_bound_and_prefill_compute_bound(dense4b_h800):
    cost = dense4b_h800
    decode = work(kernels.block_kernels, cost, make_step([1] * 256, [600] * 256, "decode"), 0)
    assert decode.bytes / cost.hbm_bytes_per_s > 2 * decode.flops / cost.flops_per_s
    # decode bytes are dominated by weights (~202 MB) + KV cache (256*600*4 KiB ~ 629 MB);
    # activations of 256 tokens add ~58 MB (~7%)
    weights = (2560 * (32 + 16) * 128 + 32 * 128 * 2560 + 3 * 2560 * 9728) * 2
    kv = 256 * 600 * 2 * 8 * 128 * 2
    assert weights + kv < decode.bytes < 1.10 * (weights + kv)
    prefill = work(kernels.block_kernels, cost, make_step([1024] * 8, [1024] * 8), 0)
    assert prefill.flops / cost.flops_per_s > 2 * prefill.bytes / cost.hbm_bytes_per_s


def test_dense_4b_decode_step_on_h800(dense4b_h800, capsys):
    """Dense 4B-like model (36 blocks, hidden 2560, intermediate 9728, 32 heads, 8 KV heads,
    head dim 128) on h800: one decode step of 256 sequences at context 600 takes ~16.6 ms when
    this was written: 0.81 ms on the host (300 us + 2 us x 256 sequences), ~0.43 ms per block
    (202 MB of weights at 80% of HBM, 629 MB of KV cache at the 60% decode-attention rate; the
    qkv and gate/up GEMMs a little above their memory time, in 1 and 3 waves) and 0.41 ms for
    the head."""
    cost = dense4b_h800
    step = make_step([1] * 256, [600] * 256, "decode")
    seconds = cost.host_time(step) + cost.blocks_time(step, 0, 36) + cost.head_time(step)
    with capsys.disabled():
        print(f"\n[dense 4B, h800] decode step, 256 seqs at context 600: {seconds * 1e3:.2f} ms")
    assert 3e-3 < seconds < 20e-3


# ---- fetch formulas ----------------------------------------------------------------------------
def test_h2d_time_exact(tiny):
    assert tiny.h2d_time(1_000_000) == pytest.approx(5e-6 + 1e6 / 10e9, rel=1e-12)
    assert tiny.h2d_latency() + tiny.h2d_wire_time(1_000_000) == pytest.approx(tiny.h2d_time(1_000_000))
    assert tiny.h2d_time(0) == 0.0


def test_zero_copy_time_exact(tiny):
    # 64 B transactions: a 100 B row costs 128 B on the wire, a 64 B row 64 B
    assert tiny.zero_copy_time(10, 100) == pytest.approx(3e-6 + 10 * 128 / 4e9, rel=1e-12)
    assert tiny.zero_copy_time(10, 64) == pytest.approx(3e-6 + 10 * 64 / 4e9, rel=1e-12)
    assert tiny.zero_copy_time(0, 100) == 0.0


def test_gather_time_exact(tiny):
    # row-rate bound: 4 threads x 1e6 rows/s
    assert tiny.gather_time(1000, 128) == pytest.approx(7e-6 + 1000 / 4e6, rel=1e-12)
    # DRAM bound: 1 MB rows, read + written at 100 GB/s
    assert tiny.gather_time(10, 1_000_000) == pytest.approx(7e-6 + 2 * 10 * 1e6 / 100e9, rel=1e-12)
    assert tiny.gather_time(0, 128) == 0.0


def test_preset_fetch_numbers(dense4b_h800):
    """h800 (PCIe Gen5): 16 rows x 160 B per token for 256 decode tokens."""
    cost, rows, row_bytes = dense4b_h800, 256 * 16, 160
    assert cost.h2d_time(rows * row_bytes) == pytest.approx(6.5e-6 + rows * row_bytes / 53e9)
    assert cost.zero_copy_time(rows, row_bytes) == pytest.approx(4e-6 + rows * 256 / 35e9)
    # 23 M rows/s per thread measured on ~1 GiB; the Dense-4B's 200 GB table misses every cache and the STLB
    assert cost.table_bytes == 2 * 8 * 78_125_000 * 160 and 15e6 < cost.gather_rows_per_s < 18e6
    assert cost.gather_time(rows, row_bytes) == pytest.approx(10e-6 + rows / (8 * cost.gather_rows_per_s))
    assert cost.gather_overhead() == pytest.approx(10e-6) and cost.gather_latency_time(rows) == rows / (8 * cost.gather_rows_per_s)
    assert math.isclose(cost.zero_copy_wire_time(rows, 128), rows * 128 / 35e9)
    assert cost.zero_copy_wire_bytes(rows, 129) == rows * 256  # whole 128 B transactions


# ---- one set of formulas: the protocol, floats and arrays -----------------------------------------
def test_roofline_cost_model_implements_the_engine_protocol(tiny):
    assert isinstance(tiny, CostModel)
    engine_calls = {"host_time", "blocks_time", "engram_time", "head_time", "gather_time", "gather_overhead", "gather_latency_time",
                    "h2d_latency", "h2d_wire_time", "zero_copy_latency", "zero_copy_wire_bytes", "zero_copy_wire_time", "cxl_gather_time",
                    "cxl_latency", "cxl_wire_time", "nvme_latency", "nvme_stream_time"}
    assert {name for name in vars(CostModel) if not name.startswith("_")} == engine_calls


@pytest.mark.parametrize("n", [None, 1.0, 1.7, 32.0])
def test_shared_formulas_price_arrays_as_the_cost_model_prices_floats(n):
    """The fits evaluate kernels.py on arrays, the simulator on one float at a time: same numbers."""
    gpu = {**ROUND["gpu"], "roofline_exponent": n, "gemm_half_rows": 8.0, "grouped_gemm_half_rows": 20.0, "attention_efficiency": 0.25}
    cost = RooflineCostModel(moe_model(), HardwareProfile.model_validate({**ROUND, "gpu": gpu}))
    works = [*kernels.block_kernels(cost.model, make_step([3, 1], [9, 5], "mixed"), 1), Work(0.0, 0.0, 0.0), Work(0.0, 10.0),
             Work(10.0, 0.0)]
    k = np.array([[w.flops, w.bytes, w.weights, w.attention_bytes, kernels.grouped_weights(w)] for w in works])
    assert k[:, 4].any(), "routed experts: grouped weights priced"
    as_array = kernels.roofline(k[:, 0], k[:, 1], k[:, 2], cost.flops_per_s, cost.hbm_bytes_per_s, n, 8.0, k[:, 3], cost.attention_bytes_per_s,
                                k[:, 4], 20.0)
    assert as_array == pytest.approx([cost.roofline(w) for w in works], rel=1e-14, abs=0.0)
    assert as_array[len(works) - 3] == 0.0 and cost.roofline(Work()) == 0.0

    host, link = cost.profile.host, cost.profile.link
    rows, row_bytes = np.array([1.0, 64.0, 5000.0]), np.array([8.0, 100.0, 1_000_000.0])
    gather = kernels.gather_seconds(rows, row_bytes, host.gather_threads, host.gather_rows_per_s, host.dram_gbps * 1e9,
                                    host.gather_overhead_us * 1e-6)
    zero_copy = kernels.zero_copy_seconds(rows, row_bytes, cost.zero_copy_latency(), link.zero_copy_gbps * 1e9,
                                          link.transaction_bytes)
    dma = kernels.dma_seconds(rows * row_bytes, cost.h2d_latency(), link.h2d_gbps * 1e9)
    for i, (r, b) in enumerate(zip(rows.astype(int), row_bytes.astype(int), strict=True)):
        assert gather[i] == pytest.approx(cost.gather_time(r, b), rel=1e-15)
        assert zero_copy[i] == pytest.approx(cost.zero_copy_time(r, b), rel=1e-15)
        assert dma[i] == pytest.approx(cost.h2d_time(r * b), rel=1e-15)


# ---- the gather against its table's size ------------------------------------------------------------
def test_miss_fractions_and_the_row_penalty_by_hand():
    """A 4 GiB table in 4 KiB pages on a CPU with 2 MiB L2, 64 MiB LLC and 1,024 STLB entries:
    data misses 1 - 64/4096, STLB misses 1 - 4/4096 (4 MiB reach), page-table entries (8 MiB of
    them) miss L2 1 - 2/8; in 2 MiB pages the reach is 2 GiB (half the table) and the entries
    (16 KiB) all hit."""
    gib, mib = 1 << 30, 1 << 20
    assert kernels.miss_fraction(4 * gib, 64 * mib) == pytest.approx(1 - 64 / 4096)
    assert kernels.miss_fraction(mib, 64 * mib) == 0.0 and kernels.miss_fraction(0, 1) == 0.0
    small = kernels.gather_row_penalty_s(4 * gib, False, 2 * mib, 64 * mib, 1024, 10.0, 20.0, 40.0)
    assert small == pytest.approx(10 * (1 - 64 / 4096) + 20 * (1 - 4 / 4096) + 40 * (1 - 2 / 8))
    huge = kernels.gather_row_penalty_s(4 * gib, True, 2 * mib, 64 * mib, 1024, 10.0, 20.0, 40.0)
    assert huge == pytest.approx(10 * (1 - 64 / 4096) + 20 * 0.5)
    # the measured rate scaled by the modelled row times: here over at the reference size
    there = 5.0 + kernels.gather_row_penalty_s(gib, False, 2 * mib, 64 * mib, 1024, 10.0, 20.0, 40.0)
    assert kernels.gather_row_seconds(1e7, 4 * gib, False, gib, False, 2 * mib, 64 * mib, 1024, 5.0, 10.0, 20.0, 40.0) == pytest.approx(
        1e-7 * (5.0 + small) / there)


def test_a_bigger_table_gathers_slower_only_with_a_size_model(tiny):
    """The cost model prices the gather at the rate its host reaches on one Engram layer's table.
    Guards: a 200 GB table gathered at the rate measured on 1 GiB."""
    from engramsim.hardware.profile import GatherSize
    size = GatherSize(reference_gib=1.0, l2_mib=2, llc_mib=100, stlb_entries=2048, hit_ns=40, data_miss_ns=20, tlb_miss_ns=20, pte_miss_ns=30)

    def model(rows_per_head: int, huge: bool = False, with_size: bool = True) -> RooflineCostModel:
        engram = tiny.model.engram.model_copy(update={"rows_per_head": [rows_per_head]})
        host = tiny.profile.host.model_copy(update={"gather_size": size if with_size else None, "huge_pages": huge})
        return RooflineCostModel(tiny.model.model_copy(update={"engram": engram}), tiny.profile.model_copy(update={"host": host}))

    rate = tiny.profile.host.gather_rows_per_s
    assert model(101, with_size=False).gather_rows_per_s == model(10**9, with_size=False).gather_rows_per_s == rate
    small, big = model(101), model(10**9)
    assert small.table_bytes == 101 * 2 * 2 * 8  # two orders x 2 heads x 8 B rows
    assert small.gather_rows_per_s > rate > big.gather_rows_per_s  # below and above the 1 GiB reference
    assert model(10**9, huge=True).gather_rows_per_s > big.gather_rows_per_s
    assert big.gather_time(1000, 8) > model(10**9, with_size=False).gather_time(1000, 8)

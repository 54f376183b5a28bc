"""Calibration: the fits recover known parameters from synthetic timings (the tests that can fail),
the whole fit path agrees with the simulator's RooflineCostModel (one set of formulas,
engramsim/kernels.py), and `engramsim calibrate` writes a profile that loads, with residuals and
provenance, or refuses in one line."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engramsim.backends.calibration.budgets import BUDGETS, backbone_cases, make_step, shape_model
from engramsim.backends.calibration.fits import (
    ATTENTION_RSE_MAX,
    GatherSizeFit,
    fit_gather,
    fit_gather_size,
    fit_host,
    fit_latency_bandwidth,
    fit_roofline,
    fit_zero_copy,
    fixed_costs,
    kernel_times,
    residual,
)
from engramsim.backends.calibration.machine import check_profile_host, machine_host
from engramsim.backends.calibration.measurements import Measurements, kernel_fields
from engramsim.backends.calibration.profile import fit_profile, profile_yaml, spreads
from engramsim.cli import main
from engramsim.hardware.presets import load_profile
from engramsim.hardware.profile import HardwareProfile
from engramsim.kernels import Work, block_kernels, engram_kernels, head_kernels
from engramsim.simulator.cost import RooflineCostModel

NOISE = 0.03  # 3 % multiplicative noise on every synthetic timing
UNIT_PROFILE: dict[str, Any] = {
    "name": "unit", "step_overhead_us": 0.0, "provenance": {"kind": "preset", "source": "calibration units"},
    "gpu": {"name": "unit", "bf16_tflops": 1.0, "hbm_gbps": 1.0, "hbm_gib": 1.0, "compute_efficiency": 1.0,
            "memory_efficiency": 1.0, "layer_overhead_us": 0.0},
    "link": {"name": "unit", "h2d_gbps": 1.0, "d2h_gbps": 1.0, "dma_latency_us": 0.0, "zero_copy_gbps": 1.0,
             "zero_copy_latency_us": 0.0},
    "host": {"name": "unit", "dram_gbps": 1.0, "dram_gib": 1.0, "gather_rows_per_s": 1.0, "gather_threads": 1,
             "gather_overhead_us": 0.0},
}

ATTENTION_TRUTH = HardwareProfile.model_validate({  # decode KV reads at 0.3 x the memory rate
    **UNIT_PROFILE, "gpu": {**UNIT_PROFILE["gpu"], "bf16_tflops": 0.1, "hbm_gbps": 12.0, "layer_overhead_us": 80.0, "kernel_overhead_us": 20.0,
                            "roofline_exponent": 4.0, "gemm_half_rows": 10.0, "attention_efficiency": 0.3}})


def as_array(works: list[Work]) -> np.ndarray:
    return np.array(kernel_fields(works)["kernels"])


def noisy(seconds: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return seconds * (1.0 + rng.normal(0.0, NOISE, size=seconds.shape))


# ---- the fits recover known parameters ------------------------------------------------------------
def test_latency_bandwidth_fit_recovers_known_parameters():
    rng = np.random.default_rng(1)
    latency, bandwidth = 7e-6, 12e9
    sizes = np.array([4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20], dtype=float)
    fit_lat, fit_bw = fit_latency_bandwidth(sizes, noisy(latency + sizes / bandwidth, rng))
    assert fit_bw == pytest.approx(bandwidth, rel=0.05)
    assert fit_lat == pytest.approx(latency, rel=0.10)


def test_latency_bandwidth_fit_is_not_fooled_by_a_wrong_model():
    """The check can fail: a different true latency gives a visibly different answer."""
    sizes = np.geomspace(4 << 10, 64 << 20, 8)
    a = fit_latency_bandwidth(sizes, 5e-6 + sizes / 10e9)
    b = fit_latency_bandwidth(sizes, 50e-6 + sizes / 10e9)
    assert b[0] > 5 * a[0]


@pytest.mark.parametrize("threads", [1, 4])
def test_gather_fit_recovers_rate_overhead_and_dram_bound(threads):
    rng = np.random.default_rng(2)
    rate, overhead, dram = 20e6, 12e-6, 40e9  # per-thread rows/s; at 4 threads 256 and 512 B rows are DRAM-bound
    rows = np.tile(np.geomspace(64, 262144, 10).round(), 4)
    row_bytes = np.repeat([128.0, 160.0, 256.0, 512.0], 10)
    true = overhead + np.maximum(rows / (threads * rate), 2 * rows * row_bytes / dram)
    fit_rate, fit_overhead, fit_dram = fit_gather(rows, row_bytes, noisy(true, rng), threads, dram_max=60e9)
    assert fit_rate == pytest.approx(rate, rel=0.05)
    assert fit_overhead == pytest.approx(overhead, rel=0.15)
    if threads == 4:  # only then does any sample bind on DRAM
        assert fit_dram == pytest.approx(dram, rel=0.05)


def test_zero_copy_fit_recovers_transaction_size():
    rng = np.random.default_rng(3)
    rows = np.tile(np.geomspace(64, 65536, 8).round(), 4)
    row_bytes = np.repeat([96.0, 160.0, 256.0, 320.0], 8)
    for tx in (64, 128):
        wire = rows * np.ceil(row_bytes / tx) * tx
        latency, gbps, fit_tx = fit_zero_copy(rows, row_bytes, noisy(4e-6 + wire / 30e9, rng))
        assert fit_tx == tx
        assert gbps == pytest.approx(30e9, rel=0.05) and latency == pytest.approx(4e-6, rel=0.25)


def cost_model_samples(budget: str) -> tuple[list[np.ndarray], np.ndarray]:
    """The kernels of every block and head a calibration of `budget` measures, and their fixed-cost matrix."""
    blocks, heads = [], []
    for shape, steps in backbone_cases("cpu", BUDGETS[budget]):
        model = shape_model(shape, "fp32", 64, "fp32")
        for kind, new, ctx in steps:
            step = make_step(kind, new, ctx)
            blocks.append(as_array(block_kernels(model, step, 0)))
            heads.append(as_array(head_kernels(model, step)))
    kernels = blocks + heads
    return kernels, fixed_costs([len(blocks), len(heads)], [len(a) for a in kernels])


@pytest.mark.parametrize(("exponent", "half_rows", "grouped_half_rows"), [(1.0, 0.0, 0.0), (2.5, 16.0, 40.0), (32.0, 4.0, 24.0)])
def test_roofline_fit_recovers_peaks_exponent_and_overheads_on_cost_model_kernels(exponent, half_rows, grouped_half_rows):
    """Kernels of real calibration cases from engramsim/kernels.py (dense, MoE and MLA + mHC blocks, heads); times from
    a known profile with a fixed cost per block, per step (the head's) and per kernel."""
    rng = np.random.default_rng(4)
    kernels, k = cost_model_samples("quick")
    assert k.shape[1] == 3, "MLA + mHC blocks run more kernels than the others: the per-kernel cost is fitted"
    peak, bandwidth, layer_o, step_o, kernel_o = 120e9, 9e9, 150e-6, 400e-6, 40e-6
    true = kernel_times(kernels, peak, bandwidth, exponent, half_rows, grouped_half_rows) + k @ np.array([layer_o, step_o, kernel_o])
    fit = fit_roofline(kernels, noisy(true, rng), k)
    predicted = fit.kernel_times(kernels) + k @ fit.overheads_s
    assert np.max(np.abs(predicted / true - 1)) < 4 * NOISE
    if exponent > 1.0:  # at exponent 1 the half-rows term adds time in proportion to the weight bytes: bandwidth and
        # half-rows trade off exactly, only their combination (checked through `predicted`) is determined
        assert fit.flops_s == pytest.approx(peak, rel=0.05)
        assert fit.overheads_s[0] + 6 * fit.overheads_s[2] == pytest.approx(layer_o + 6 * kernel_o, rel=0.1)  # a GQA block's fixed cost
        assert fit.overheads_s[2] == pytest.approx(kernel_o, rel=0.25)
        assert fit.overheads_s[1] == pytest.approx(step_o, rel=0.35)  # 20 head samples, a few ms each
        assert fit.bytes_s == pytest.approx(bandwidth, rel=0.05)
        # the exponent through what it does: the norm of two equal times exceeds their max by 2^(1/n) (2.2 % at n = 32,
        # where n itself is barely determined)
        assert 2 ** (1 / fit.exponent) == pytest.approx(2 ** (1 / exponent), abs=0.04)
        assert fit.half_rows == pytest.approx(half_rows, rel=0.25, abs=1.0)  # 3 % noise: it trades off with the exponent
        assert fit.grouped_half_rows == pytest.approx(grouped_half_rows, rel=0.25, abs=2.0)


@pytest.mark.parametrize(("exponent", "efficiency"), [(1.6, 0.3), (32.0, 0.7)])
def test_roofline_fit_recovers_the_decode_attention_rate(exponent, efficiency):
    """Decode attention's KV reads at their own rate (a fraction of the memory rate): the quick budget's decode steps,
    one batch at several contexts, tell that rate apart from the weights' and activations'."""
    kernels, k = cost_model_samples("quick")
    bandwidth = 9e9
    true = kernel_times(kernels, 120e9, bandwidth, exponent, 16.0, 40.0, efficiency * bandwidth) + k @ np.array([150e-6, 400e-6, 40e-6])
    fit = fit_roofline(kernels, noisy(true, np.random.default_rng(7)), k)
    assert fit.attention_bytes_s is not None and fit.attention_rse is not None and fit.attention_rse <= ATTENTION_RSE_MAX
    assert fit.attention_bytes_s / fit.bytes_s == pytest.approx(efficiency, rel=0.1)
    assert fit.bytes_s == pytest.approx(bandwidth, rel=0.05)
    assert np.max(np.abs(fit.kernel_times(kernels) + k @ fit.overheads_s - true) / true) < 4 * NOISE


def test_roofline_fit_leaves_an_unidentified_attention_rate_out():
    """The tiny budget's two short decode steps: KV reads are under 1 % of a block's bytes, their rate is not
    determined, and the fit prices them at the memory rate rather than report noise."""
    kernels, k = cost_model_samples("tiny")
    true = kernel_times(kernels, 120e9, 9e9, 1.6, 16.0, 40.0, 0.3 * 9e9) + k @ np.full(k.shape[1], 150e-6)
    fit = fit_roofline(kernels, noisy(true, np.random.default_rng(8)), k)
    assert fit.attention_bytes_s is None and fit.attention_rse is not None and fit.attention_rse > ATTENTION_RSE_MAX
    prefills = [a for a in kernels if not a[:, 4].any()]  # prefill blocks and every head
    assert fit_roofline(prefills, np.full(len(prefills), 1e-3)).attention_rse is None, "no KV reads in decode: nothing to tell"


def test_fixed_costs_fit_a_per_kernel_cost_only_where_kernel_counts_tell_it_apart():
    # blocks of 6 and 14 kernels, heads of 2: a column per group and one of kernel counts
    assert fixed_costs([2, 1], [6, 14, 2]).tolist() == [[1, 0, 6], [1, 0, 14], [0, 1, 2]]
    # every block 6 kernels, every head 2: the counts are a multiple of the groups' columns, no per-kernel cost
    assert fixed_costs([2, 2], [6, 6, 2, 2]).tolist() == [[1, 0], [1, 0], [0, 1], [0, 1]]


def test_samples_written_before_grouped_weights_or_attention_bytes_refit():
    """A samples file's kernels of three columns (no grouped weights) or four (no attention bytes) price as kernels of
    five with none of them, and refit to a profile whose attention_efficiency is null, saying why."""
    works = block_kernels(shape_model(backbone_cases("cpu", BUDGETS["quick"])[1][0], "fp32", 64, "fp32"), make_step(
        "decode", np.ones(4, dtype=np.int64), np.full(4, 64, dtype=np.int64)), 0)
    full = as_array(works)
    assert full[:, 3].any() and full[:, 4].any(), "an MoE block has grouped weights, a decode step KV reads"
    three, four = [full[:, :3]], [full[:, :4]]
    assert kernel_times(three, 1e11, 1e10, 2.0, 8.0, 8.0) == pytest.approx(kernel_times([full], 1e11, 1e10, 2.0, 8.0, 8.0))
    assert kernel_times([full], 1e11, 1e10, 2.0, 8.0, 30.0)[0] > kernel_times(three, 1e11, 1e10, 2.0, 8.0, 30.0)[0]
    assert kernel_times(four, 1e11, 1e10, 2.0, 8.0, 30.0, 2e9) == pytest.approx(kernel_times([full[:, :4]], 1e11, 1e10, 2.0, 8.0, 30.0))
    assert kernel_times([full], 1e11, 1e10, 2.0, 8.0, 30.0, 2e9)[0] > kernel_times(four, 1e11, 1e10, 2.0, 8.0, 30.0, 2e9)[0]
    m = synthetic_measurements(ATTENTION_TRUTH)
    for row in m.block + m.engram + m.head:
        row["kernels"] = [kernel[:4] for kernel in row["kernels"]]
    old = fit_profile(m, "old")
    assert old.gpu.attention_efficiency is None and "decode_attention" not in old.residuals
    assert "attention_efficiency is null: no sample records decode attention's KV reads" in (old.description or "")


def test_fit_roofline_predicts_what_the_cost_model_prices():
    """One roofline: a fitted profile's RooflineCostModel prices blocks and heads exactly as the
    fit predicted them (same kernels, same formula, only unit conversions between them)."""
    truth = HardwareProfile.model_validate({**UNIT_PROFILE, "gpu": {**UNIT_PROFILE["gpu"], "bf16_tflops": 0.2, "hbm_gbps": 12.0,
                                                                    "layer_overhead_us": 40.0, "roofline_exponent": 1.7,
                                                                    "gemm_half_rows": 8.0, "attention_efficiency": 0.5}})
    shape, steps = backbone_cases("cpu", BUDGETS["quick"])[0]
    truth_cost = RooflineCostModel(shape_model(shape, "fp32", 64, "fp32"), truth)
    cases = [make_step(kind, new, ctx) for kind, new, ctx in steps]
    model = truth_cost.model
    kernels = [as_array(block_kernels(model, step, 0)) for step in cases] + [as_array(head_kernels(model, step)) for step in cases]
    seconds = np.array([truth_cost.block_time(step, 0) for step in cases] + [truth_cost.head_time(step) + 1e-4 for step in cases])
    k = np.repeat(np.eye(2), len(cases), axis=0)
    fit = fit_roofline(kernels, seconds * (1.0 + np.random.default_rng(5).normal(0.0, NOISE, seconds.size)), k)
    fitted = HardwareProfile.model_validate({**UNIT_PROFILE, "gpu": {**UNIT_PROFILE["gpu"], "bf16_tflops": fit.flops_s / 1e12,
                                                                     "hbm_gbps": fit.bytes_s / 1e9,
                                                                     "layer_overhead_us": fit.overheads_s[0] * 1e6,
                                                                     "roofline_exponent": fit.exponent, "gemm_half_rows": fit.half_rows,
                                                                     "attention_efficiency": (fit.attention_bytes_s or fit.bytes_s) / fit.bytes_s}})
    cost = RooflineCostModel(shape_model(shape, "fp32", 64, "fp32"), fitted)
    predicted = fit.kernel_times(kernels) + k @ fit.overheads_s
    priced = [cost.block_time(step, 0) for step in cases] + [cost.head_time(step) + fit.overheads_s[1] for step in cases]
    assert fit.attention_bytes_s is not None, "the decode KV reads' rate is part of what the cost model prices"
    assert predicted == pytest.approx(priced, rel=1e-12)
    assert predicted == pytest.approx(seconds, rel=4 * NOISE)


def test_host_fit_recovers_a_plus_b_per_sequence_despite_slow_steps():
    rng = np.random.default_rng(6)
    a, b = 180e-6, 4e-6
    seqs = np.repeat([1, 2, 4, 8, 16, 32, 64], 12)
    seconds = noisy(a + b * seqs, rng)
    seconds[::9] *= rng.uniform(3, 10, size=seconds[::9].size)  # a descheduled thread now and then
    fit_a, fit_b = fit_host(seqs, seconds)
    assert fit_a == pytest.approx(a, rel=0.08) and fit_b == pytest.approx(b, rel=0.08)
    assert fit_host([8] * 5, [2e-4] * 5) == pytest.approx((2e-4, 0.0)), "one batch size: all of it is the fixed part"
    other = fit_host(seqs, noisy(a + 4 * b * seqs, rng))
    assert other[1] > 3 * fit_b, "the check can fail: a steeper slope is seen"


def test_moe_and_mla_mhc_shapes_are_in_the_backbone_budget():
    """Guards: MoE blocks priced with rates fitted on dense blocks only (the MoE's grouped GEMMs,
    router and gather/scatter measured nowhere); MLA + mHC blocks priced with a fixed cost per block
    fitted on blocks of 6 kernels (their 14 kernels' fixed costs measured nowhere)."""
    from engramsim.kernels import block_kind

    for backend in ("cpu", "cuda"):
        for budget in ("quick", "full"):
            shapes = [shape for shape, _ in backbone_cases(backend, BUDGETS[budget])]
            moe = [s for s in shapes if s.moe is not None]
            assert moe and all(block_kind(shape_model(s, "fp32", 64, "fp32"), 0) == "moe" for s in moe), (backend, budget)
            assert any(s.moe is None for s in shapes), "dense shapes too"
            models = [shape_model(s, "fp32", 64, "fp32") for s in shapes if s.mla is not None and s.hc_mult > 1]
            assert models, (backend, budget)
            for model in models:
                assert model.backbone.attention.kind == "mla" and model.engram.hc_mult == model.backbone.hc_mult, "a branch per stream"


def test_fits_import_without_torch():
    """A samples file can be refitted where torch is missing: the fits never import it."""
    code = ("import sys; import engramsim.backends.calibration.fits, engramsim.backends.calibration.machine; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_residual_is_signed_mean_and_absolute_p95():
    r = residual([1.1, 0.9, 1.0, 1.2], [1.0, 1.0, 1.0, 1.0])
    assert r.samples == 4
    assert r.rel_error_mean == pytest.approx(0.05)
    assert r.rel_error_p95 == pytest.approx(np.percentile([0.1, 0.1, 0.0, 0.2], 95))


# ---- the whole fit path: measurements priced by the cost model of a known profile come back -------
def synthetic_measurements(truth: HardwareProfile) -> Measurements:
    """Every group `fit_profile` reads, timed by the simulator's own RooflineCostModel on `truth`."""
    m = Measurements("cpu", "synthetic", threads=truth.host.gather_threads, stream_gbps=truth.host.dram_gbps * 1.5)
    cost = RooflineCostModel(shape_model(backbone_cases("cpu", BUDGETS["quick"])[0][0], "fp32", 64, "fp32"), truth)
    for rb in (128, 160, 256, 512):
        for n in (64, 256, 1024, 4096, 16384, 65536):
            m.gather.append({"rows": n, "row_bytes": rb, "seconds": cost.gather_time(n, rb)})
            m.zero_copy.append({"rows": n, "row_bytes": rb, "seconds": cost.zero_copy_time(n, rb)})
    for size in (4 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20):
        m.copy.append({"bytes": size, "seconds": cost.h2d_time(size)})
    for seqs in (1, 2, 4, 8, 16, 32, 64):
        step = make_step("decode", np.ones(seqs), np.full(seqs, 100))
        host_s = cost.host_time(step) or 100e-6  # a profile without a step overhead still had host work to time
        m.host += [{"kind": "decode", "seqs": seqs, "tokens": seqs, "seconds": host_s}] * 3
    for shape, steps in backbone_cases("cpu", BUDGETS["quick"]):
        shaped = RooflineCostModel(shape_model(shape, "fp32", 64, "fp32"), truth)
        for kind, new, ctx in steps:
            step = make_step(kind, new, ctx)
            base = {"shape": shape.name, "kind": kind, "seqs": int(new.size), "tokens": int(new.sum()), "context": int(ctx.max())}
            rows = int(new.sum()) * 10
            for group, works, seconds in (
                ("block", block_kernels(shaped.model, step, 0), shaped.block_time(step, 0)),
                ("engram", engram_kernels(shaped.model, step, rows), shaped.engram_time(step, rows)),
                ("head", head_kernels(shaped.model, step), shaped.head_time(step)),
            ):
                getattr(m, group).append({**base, "rows": rows, **kernel_fields(works), "seconds": seconds})
    return m


def test_fit_profile_recovers_a_known_profile_exactly_as_the_simulator_prices_it():
    truth = HardwareProfile.model_validate({
        **UNIT_PROFILE, "name": "truth", "step_overhead_us": 250.0, "step_overhead_per_seq_us": 3.5,
        "gpu": {**UNIT_PROFILE["gpu"], "bf16_tflops": 0.11, "hbm_gbps": 7.5, "layer_overhead_us": 90.0, "roofline_exponent": 1.6,
                "engram_overhead_us": 300.0, "kernel_overhead_us": 25.0, "gemm_half_rows": 12.0, "grouped_gemm_half_rows": 30.0,
                "attention_efficiency": 0.45},
        "link": {**UNIT_PROFILE["link"], "h2d_gbps": 14.0, "d2h_gbps": 14.0, "dma_latency_us": 3.0, "zero_copy_gbps": 5.0,
                 "zero_copy_latency_us": 9.0, "transaction_bytes": 64},
        "host": {**UNIT_PROFILE["host"], "dram_gbps": 9.0, "gather_rows_per_s": 18e6, "gather_threads": 1, "gather_overhead_us": 11.0},
    })
    fitted = fit_profile(synthetic_measurements(truth), "fitted")
    close = {
        "gpu.bf16_tflops": (fitted.gpu.bf16_tflops, 0.11), "gpu.hbm_gbps": (fitted.gpu.hbm_gbps, 7.5),
        "gpu.layer_overhead_us": (fitted.gpu.layer_overhead_us, 90.0), "step_overhead_us": (fitted.step_overhead_us, 250.0),
        "step_overhead_per_seq_us": (fitted.step_overhead_per_seq_us, 3.5),
        "gpu.roofline_exponent": (fitted.gpu.roofline_exponent, 1.6), "gpu.engram_overhead_us": (fitted.gpu.engram_overhead_us, 300.0),
        "gpu.gemm_half_rows": (fitted.gpu.gemm_half_rows, 12.0), "gpu.kernel_overhead_us": (fitted.gpu.kernel_overhead_us, 25.0),
        "gpu.grouped_gemm_half_rows": (fitted.gpu.grouped_gemm_half_rows, 30.0),
        "gpu.attention_efficiency": (fitted.gpu.attention_efficiency, 0.45),
        "link.h2d_gbps": (fitted.link.h2d_gbps, 14.0), "link.dma_latency_us": (fitted.link.dma_latency_us, 3.0),
        "link.zero_copy_gbps": (fitted.link.zero_copy_gbps, 5.0), "link.zero_copy_latency_us": (fitted.link.zero_copy_latency_us, 9.0),
        "host.gather_rows_per_s": (fitted.host.gather_rows_per_s, 18e6), "host.gather_overhead_us": (fitted.host.gather_overhead_us, 11.0),
        "host.dram_gbps": (fitted.host.dram_gbps, 9.0),
    }
    for key, (got, want) in close.items():
        assert got == pytest.approx(want, rel=0.02), key
    assert fitted.link.transaction_bytes == 64
    assert fitted.gpu.compute_efficiency == fitted.gpu.memory_efficiency == 1.0
    for key in ("gather", "h2d", "zero_copy", "block", "engram", "head", "host", "decode_attention"):
        assert fitted.residuals[key].rel_error_p95 < 0.01, key  # noiseless: the model fits itself
    assert "Decode attention reads the KV cache at 3.38 GB/s, 0.45 x the memory rate" in (fitted.description or "")


def test_fitted_profile_prices_decode_steps_as_the_simulator_would():
    """Decode steps no calibration case ran (larger batches, longer contexts, every shape: GQA, MoE, MLA + mHC),
    priced on a profile fitted from synthetic samples, cost what the truth's cost model says; without the attention
    rate they would not (the check can fail)."""
    truth = ATTENTION_TRUTH
    fitted = fit_profile(synthetic_measurements(truth), "fitted")
    assert fitted.gpu.attention_efficiency == pytest.approx(0.3, rel=0.02)
    blind = fitted.model_copy(update={"gpu": fitted.gpu.model_copy(update={"attention_efficiency": None})})
    for shape, _ in backbone_cases("cpu", BUDGETS["quick"]):
        model = shape_model(shape, "fp32", 64, "fp32")
        for batch, context in ((24, 1024), (64, 2048)):
            step = make_step("decode", np.ones(batch), np.full(batch, context))
            want = RooflineCostModel(model, truth).blocks_time(step, 0, model.backbone.layers)
            assert RooflineCostModel(model, fitted).blocks_time(step, 0, model.backbone.layers) == pytest.approx(want, rel=0.02), shape.name
            assert RooflineCostModel(model, blind).blocks_time(step, 0, model.backbone.layers) < 0.8 * want, shape.name


# ---- provenance and the host check --------------------------------------------------------------------
def _calibrated(host: str | None, gpu: str | None = None, kind: str = "calibrated") -> HardwareProfile:
    return HardwareProfile.model_validate({**UNIT_PROFILE, "provenance": {"kind": kind, "source": "test", "host": host, "gpu": gpu}})


def test_check_profile_host():
    here = machine_host()
    assert check_profile_host(_calibrated(here)) is None
    assert check_profile_host(_calibrated(here.rsplit(" @ ", 1)[0] + " @ another-hostname")) is None, "hostname alone may differ"
    message = check_profile_host(_calibrated("AMD EPYC 9654 96-Core Processor x192 @ big"))
    assert message and "AMD EPYC 9654" in message and "calibrate" in message
    assert check_profile_host(_calibrated("AMD EPYC x2 @ h", kind="preset")) is None, "presets describe other hardware on purpose"
    assert check_profile_host(load_profile("h200")) is None
    if not torch.cuda.is_available():
        assert "GPU 'NVIDIA H200'" in (check_profile_host(_calibrated(here, gpu="NVIDIA H200")) or "")


# ---- the command ---------------------------------------------------------------------------------------
def test_tiny_calibration_writes_a_profile_that_loads(tmp_path, capsys):
    out = tmp_path / "profiles" / "tiny.yaml"
    samples = tmp_path / "samples.json"
    assert main(["calibrate", "--backend", "cpu", "--budget", "tiny", "--out", str(out), "--samples", str(samples), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    profile = load_profile(out)
    assert profile.name == "tiny" and samples.stat().st_size > 0
    prov = profile.provenance
    assert prov.kind == "calibrated" and prov.host == machine_host() and prov.gpu is None
    assert prov.source == "engramsim calibrate --backend cpu --budget tiny"
    assert {"torch", "python", "engramsim"} <= set(prov.versions) and prov.date and prov.date.endswith("+00:00")
    assert {"gather", "h2d", "zero_copy", "block", "engram", "head", "gather_size"} <= set(profile.residuals)
    size = profile.host.gather_size
    assert size is not None and size.reference_gib == 64 / 1024 and size.l2_mib > 0 and size.llc_mib >= size.l2_mib
    sweep = json.loads(samples.read_text())["gather_size"]
    assert {(r["table_bytes"], r["threads"]) for r in sweep} >= {(16 << 20, 1), (64 << 20, 1)}
    assert "Gather against table size (2 sizes, 16 MiB to 0 GiB" in profile.description
    assert all(r.samples > 0 and math.isfinite(r.rel_error_mean) for r in profile.residuals.values())
    host, link, gpu = profile.host, profile.link, profile.gpu
    assert host.gather_threads == 1, "the CPU backend gathers on one worker thread"
    assert 1e5 < host.gather_rows_per_s < 1e10 and 0 <= host.gather_overhead_us < 10_000 and 0.1 < host.dram_gbps < 10_000
    assert 0.05 < link.h2d_gbps < 10_000 and 0 <= link.dma_latency_us < 10_000
    assert 0.01 < link.zero_copy_gbps < 10_000 and link.transaction_bytes in (32, 64, 128)
    assert 1e-4 < gpu.bf16_tflops < 100 and 0.05 < gpu.hbm_gbps < 10_000 and gpu.compute_efficiency == 1.0
    assert profile.description and "Calibrated" in profile.description
    assert "host.gather_rows_per_s" in profile.uncertainty and profile.uncertainty == spreads(profile)  # read back as fitted
    assert (gpu.attention_efficiency is None) == ("attention_efficiency is null" in profile.description), "a null rate says why"
    assert check_profile_host(profile) is None


def _fails(capsys, args: list[str], expect: str) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and expect in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_calibration_without_a_gpu_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "cuda.yaml"
    _fails(capsys, ["calibrate", "--backend", "cuda", "--quick", "--out", str(out)], "cuda")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_calibrate_out_must_be_a_yaml_file(tmp_path, capsys):
    _fails(capsys, ["calibrate", "--backend", "cpu", "--budget", "tiny", "--out", str(tmp_path / "p.txt")], ".yaml")
    assert list(tmp_path.iterdir()) == []


def test_calibrated_profile_prices_a_scenario(tmp_path):
    """A calibrated profile is an ordinary hardware profile: `run` simulates a scenario on it."""
    out = tmp_path / "p.yaml"
    m = synthetic_measurements(HardwareProfile.model_validate({**UNIT_PROFILE, "host": {**UNIT_PROFILE["host"], "gather_rows_per_s": 1e7}}))
    out.write_text(profile_yaml(fit_profile(m, "p")))
    scenario = Path(__file__).parent.parent / "scenarios" / "validation" / "v01-base.yaml"
    assert main(["run", str(scenario), "--out", str(tmp_path / "run"), "--quiet", "--set", f"hardware.profile={out}",
                 "--set", "workload.requests=4"]) == 0


# ---- on a GPU (the device check runs these with `pytest -m cuda`) -----------------------------------------
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tiny_cuda_calibration_writes_a_profile_that_loads(tmp_path):
    out = tmp_path / "gpu.yaml"
    assert main(["calibrate", "--backend", "cuda", "--budget", "tiny", "--out", str(out), "--quiet"]) == 0
    profile = load_profile(out)
    assert profile.provenance.gpu == torch.cuda.get_device_name(0) == profile.gpu.name
    assert "cuda" in profile.provenance.versions and check_profile_host(profile) is None
    assert profile.host.gather_threads >= 1 and profile.link.h2d_gbps > 1 and profile.gpu.bf16_tflops > 1
    assert {"gather", "h2d", "zero_copy", "block", "engram", "head"} <= set(profile.residuals)


def test_budget_flags():
    from engramsim.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["calibrate", "--backend", "cpu"]).budget == "full"
    assert parse(["calibrate", "--backend", "cpu", "--quick"]).budget == "quick"
    assert parse(["calibrate", "--backend", "cpu", "--budget", "tiny"]).budget == "tiny"
    assert main(["calibrate", "--backend", "cpu", "--quick", "--budget", "tiny"]) == 2, "one or the other"


def test_the_gather_size_fit_recovers_its_costs_and_stlb_size():
    """Per-row times made by the model itself (2 MiB L2, 480 MiB LLC, 1,536 STLB entries) at the
    sizes a full calibration measures, in both page sizes: the fit gives back every cost and the
    STLB size. Guards: a design column in the wrong place, a candidate STLB size never tried."""
    truth = GatherSizeFit(base_s=45e-9, data_miss_s=20e-9, tlb_miss_s=15e-9, pte_miss_s=35e-9, stlb_entries=1536)
    sizes = np.array([(256 << 20) << k for k in range(7)] * 2, dtype=float)
    huge = np.array([False] * 7 + [True] * 7)
    times = truth.row_seconds(sizes, huge, 2 << 20, 480 << 20)
    fit = fit_gather_size(sizes, huge, times, 2 << 20, 480 << 20)
    assert fit.stlb_entries == 1536
    for name in ("base_s", "data_miss_s", "tlb_miss_s", "pte_miss_s"):
        assert getattr(fit, name) == pytest.approx(getattr(truth, name), rel=1e-6, abs=1e-15), name


def test_a_gather_size_fit_the_misses_explain_alone_keeps_a_positive_base():
    """Samples on a loaded machine can make the misses explain every row time (NNLS puts the base
    at 0, which a profile refuses): the base is then the floor, a share of the fastest row."""
    from engramsim.backends.calibration.fits import MIN_BASE_SHARE

    sizes = np.array([(256 << 20) << k for k in range(5)], dtype=float)
    huge = np.zeros(5, dtype=bool)
    times = np.array([1e-9, 60e-9, 90e-9, 110e-9, 120e-9])  # the smallest table far faster than its misses allow
    fit = fit_gather_size(sizes, huge, times, 2 << 20, 480 << 20)
    assert fit.base_s == pytest.approx(MIN_BASE_SHARE * times.min()) and fit.base_s > 0


def test_each_fitted_groups_residual_becomes_a_lognormal_spread_on_its_numbers():
    """sigma = ln(1 + rel_error_p95) / 1.96 on the numbers fitted from the group; none for a p95 of 0
    or a number that is null (h100-sxm's engram_overhead_us)."""
    from engramsim.hardware.profile import Residual

    base = load_profile("h100-sxm")
    res = {"gather": Residual(samples=9, rel_error_mean=0.0, rel_error_p95=0.2), "block": Residual(samples=4, rel_error_mean=0.01,
           rel_error_p95=0.05), "h2d": Residual(samples=3, rel_error_mean=0.0, rel_error_p95=0.0),
           "engram": Residual(samples=3, rel_error_mean=0.0, rel_error_p95=0.1)}
    got = spreads(base.model_copy(update={"residuals": res}))
    assert sorted(got) == ["gpu.bf16_tflops", "gpu.hbm_gbps", "host.gather_rows_per_s"]
    assert got["host.gather_rows_per_s"].sigma == pytest.approx(math.log(1.2) / 1.959964)
    assert got["gpu.hbm_gbps"].sigma == got["gpu.bf16_tflops"].sigma == pytest.approx(math.log(1.05) / 1.959964)
    assert got["host.gather_rows_per_s"].source == "fit residual gather: p95 |relative error| 0.2 over 9 samples"

"""From measurements to a calibrated `HardwareProfile`: the fits assembled into profile fields,
the residual of every group, a description of what was measured, the YAML file, and
`calibrate()`, the whole run behind `engramsim calibrate`."""

from __future__ import annotations

import datetime as _dt
import time
from typing import Any

import numpy as np
import torch
import yaml

from engramsim.hardware.profile import GPU, GatherSize, HardwareProfile, Host, Link, Provenance, Residual, Spread
from engramsim.kernels import dma_seconds, gather_seconds, zero_copy_seconds
from engramsim.uncertainty import sigma_for_p95

from .bench import Calibrator, Progress
from .budgets import BUDGETS, GIB, Budget
from .fits import (
    ATTENTION_RSE_MAX,
    fit_gather,
    fit_gather_size,
    fit_host,
    fit_latency_bandwidth,
    fit_roofline,
    fit_zero_copy,
    fixed_costs,
    kernel_rows,
    residual,
)
from .machine import cpu_model, link_name, machine_host, memory_gib, require_backend, versions
from .measurements import Measurements

GB = 1e9
TFLOP = 1e12
US = 1e-6
NS = 1e-9
MIB = 1 << 20


SPREAD_FIELDS = {  # residual group -> the profile numbers fitted from it
    "gather": ("host.gather_rows_per_s",),
    "h2d": ("link.h2d_gbps",),
    "zero_copy": ("link.zero_copy_gbps",),
    "block": ("gpu.bf16_tflops", "gpu.hbm_gbps"),
    "engram": ("gpu.engram_overhead_us",),
    "host": ("step_overhead_us",),
}


def spreads(profile: HardwareProfile) -> dict[str, Spread]:
    """A lognormal spread on every number fitted from a group with a residual: sigma such that the
    95th percentile of |log error| is ln(1 + the residual's rel_error_p95) (`uncertainty.sigma_for_p95`);
    none where that p95 is 0 or the number is null or 0 (a fixed cost the fit found absent)."""
    out = {}
    for group, keys in SPREAD_FIELDS.items():
        res = profile.residuals.get(group)
        if res is None or res.rel_error_p95 <= 0:
            continue
        for key in keys:
            section, _, name = key.rpartition(".")
            if getattr(getattr(profile, section) if section else profile, name):
                out[key] = Spread(dist="lognormal", sigma=min(sigma_for_p95(res.rel_error_p95), 5.0),
                                  source=f"fit residual {group}: p95 |relative error| {res.rel_error_p95:.3g} over {res.samples} samples")
    return out


def _col(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([float(r[key]) for r in rows], dtype=float)


def _kernels(rows: list[dict[str, Any]]) -> list[np.ndarray]:
    return [np.asarray(r["kernels"], dtype=float) for r in rows]


def fit_profile(m: Measurements, name: str, date: str | None = None) -> HardwareProfile:
    """The profile whose cost model best reproduces `m`, with the residual of every group.

    The achieved rates are stored as the peaks with `compute_efficiency = memory_efficiency =
    1.0` (no datasheet enters a calibrated profile). The fixed costs are fitted jointly: one per
    block, per Engram layer and per step (the head's), and one per kernel where the samples' kernel
    counts tell it apart from those (`fits.fixed_costs`). The per-step host time is fitted as a + b *
    sequences (`step_overhead_us`, `step_overhead_per_seq_us`); the head's fixed cost joins a
    (the cost model has no head overhead of its own).
    """
    backend = m.backend
    g_rows, g_rb, g_t = _col(m.gather, "rows"), _col(m.gather, "row_bytes"), _col(m.gather, "seconds")
    rate, g_overhead, dram = fit_gather(g_rows, g_rb, g_t, m.threads, m.stream_gbps * GB)
    c_bytes, c_t = _col(m.copy, "bytes"), _col(m.copy, "seconds")
    latency, h2d = fit_latency_bandwidth(c_bytes, c_t)
    zc_rows, zc_rb, zc_t = _col(m.zero_copy, "rows"), _col(m.zero_copy, "row_bytes"), _col(m.zero_copy, "seconds")
    zc_latency, zc_bw, tx = fit_zero_copy(zc_rows, zc_rb, zc_t)
    gpu_rows = m.block + m.engram + m.head  # each group pays its own fixed cost (layer, Engram layer, step) and each kernel its own
    k = fixed_costs([len(m.block), len(m.engram), len(m.head)], [len(r["kernels"]) for r in gpu_rows])
    roof = fit_roofline(_kernels(gpu_rows), _col(gpu_rows, "seconds"), k)
    layer_overhead, engram_overhead, head_overhead = roof.overheads_s[:3]
    kernel_overhead = roof.overheads_s[3] if k.shape[1] > 3 else 0.0
    gpu_predicted = roof.kernel_times(_kernels(gpu_rows)) + k @ roof.overheads_s
    attention_efficiency = None if roof.attention_bytes_s is None else min(1.0, roof.attention_bytes_s / roof.bytes_s)
    block_predicted, engram_predicted, head_predicted = np.split(gpu_predicted, [len(m.block), len(m.block) + len(m.engram)])

    if backend == "cuda":
        gpu_label = torch.cuda.get_device_name(0)
        hbm_gib = round(torch.cuda.mem_get_info()[1] / GIB, 1)
    else:
        gpu_label, hbm_gib = cpu_model(), memory_gib()
    gpu = GPU(name=gpu_label, bf16_tflops=roof.flops_s / TFLOP, hbm_gbps=roof.bytes_s / GB, hbm_gib=hbm_gib,
              compute_efficiency=1.0, memory_efficiency=1.0, layer_overhead_us=layer_overhead / US,
              engram_overhead_us=engram_overhead / US, kernel_overhead_us=kernel_overhead / US, roofline_exponent=roof.exponent,
              gemm_half_rows=roof.half_rows, grouped_gemm_half_rows=roof.grouped_half_rows,
              attention_efficiency=attention_efficiency, copy_engines=1)
    link = Link(name=link_name(backend), h2d_gbps=h2d / GB, d2h_gbps=h2d / GB, dma_latency_us=latency / US,
                zero_copy_gbps=zc_bw / GB, zero_copy_latency_us=zc_latency / US, transaction_bytes=tx)
    size, size_residual = gather_size(m, g_overhead)
    host = Host(name=cpu_model(), dram_gbps=dram / GB, dram_gib=memory_gib(), gather_rows_per_s=rate,
                gather_threads=m.threads, gather_overhead_us=g_overhead / US, gather_size=size)
    flag = {"quick": " --quick", "full": ""}.get(m.budget, f" --budget {m.budget}")
    provenance = Provenance(kind="calibrated", source=f"engramsim calibrate --backend {backend}{flag}",
                            date=date or _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
                            host=machine_host(), gpu=gpu_label if backend == "cuda" else None, versions=versions(backend))
    host_seqs, host_t = _col(m.host, "seqs"), _col(m.host, "seconds")
    host_a, host_b = fit_host(host_seqs, host_t) if m.host else (0.0, 0.0)
    draft = HardwareProfile(name=name, gpu=gpu, link=link, host=host, step_overhead_us=(host_a + head_overhead) / US,
                            step_overhead_per_seq_us=host_b / US, provenance=provenance)

    res: dict[str, Residual] = {
        "gather": residual(gather_seconds(g_rows, g_rb, m.threads, rate, dram, g_overhead), g_t),
        "h2d": residual(dma_seconds(c_bytes, latency, h2d), c_t),
        "zero_copy": residual(zero_copy_seconds(zc_rows, zc_rb, zc_latency, zc_bw, tx), zc_t),
        "block": residual(block_predicted, _col(m.block, "seconds")),
        "engram": residual(engram_predicted, _col(m.engram, "seconds")),
        "head": residual(head_predicted, _col(m.head, "seconds")),
    }
    decode = np.array([a[:, 4].any() for a in kernel_rows(_kernels(m.block))], dtype=bool)
    if decode.any():  # the blocks whose KV reads the attention rate prices
        res["decode_attention"] = residual(block_predicted[decode], _col(m.block, "seconds")[decode])
    if m.host:
        res["host"] = residual(host_a + host_b * host_seqs, host_t)
    if m.block_under_gather:
        under = _kernels(m.block_under_gather)
        res["block_under_gather"] = residual(roof.kernel_times(under) + layer_overhead + kernel_overhead * np.array([len(u) for u in under]),
                                             _col(m.block_under_gather, "seconds"))
    if size_residual is not None:
        res["gather_size"] = size_residual
    if m.gather_alone:
        quiet = m.gather_alone
        res["gather_alone"] = residual(gather_seconds(_col(quiet, "rows"), _col(quiet, "row_bytes"), m.threads, rate, dram,
                                                      g_overhead), _col(quiet, "seconds"))
    fitted = draft.model_copy(update={"description": describe(m, draft, dram, roof.attention_rse), "residuals": res})
    return fitted.model_copy(update={"uncertainty": spreads(fitted)})


def gather_size(m: Measurements, overhead_s: float) -> tuple[GatherSize | None, Residual | None]:
    """The gather's size model from the samples at the fetch worker's thread count (its per-row
    time: the gather less its fitted overhead, times the threads), with its residual there; none
    without two table sizes or without the CPU's cache sizes."""
    rows = [r for r in m.gather_size if r["threads"] == m.threads]
    if m.caches is None or len({r["table_bytes"] for r in rows}) < 2:
        return None, None
    l2, llc = m.caches
    b, h = _col(rows, "table_bytes"), np.array([bool(r["huge_pages"]) for r in rows])
    per_row = (_col(rows, "seconds") - overhead_s) * m.threads / _col(rows, "rows")
    fit = fit_gather_size(b, h, per_row, l2, llc)
    size = GatherSize(reference_gib=m.table_bytes / GIB, reference_huge_pages=m.backend == "cpu" and m.huge_page_mode == "always",
                      l2_mib=l2 / MIB, llc_mib=llc / MIB, stlb_entries=fit.stlb_entries, hit_ns=fit.base_s / NS, data_miss_ns=fit.data_miss_s / NS,
                      tlb_miss_ns=fit.tlb_miss_s / NS, pte_miss_ns=fit.pte_miss_s / NS)
    return size, residual(fit.row_seconds(b, h, l2, llc), per_row)


def interference(m: Measurements) -> tuple[float | None, float | None]:
    """(block time while a gather loops on another thread / alone, gather time handed over after a step /
    back to back on a quiet machine), medians over the cases measured both ways."""
    block = None
    if m.block_under_gather:
        alone = {(r["shape"], r["kind"], r["seqs"], r["tokens"], r["context"]): r["seconds"] for r in m.block}
        block = float(np.median([r["seconds"] / alone[(r["shape"], r["kind"], r["seqs"], r["tokens"], r["context"])]
                                 for r in m.block_under_gather]))
    gather = None
    quiet = {(r["rows"], r["row_bytes"]): r["seconds"] for r in m.gather_alone}
    ratios = [r["seconds"] / quiet[(r["rows"], r["row_bytes"])] for r in m.gather if (r["rows"], r["row_bytes"]) in quiet]
    if ratios:
        gather = float(np.median(ratios))
    return block, gather


def attention_sentence(p: HardwareProfile, rse: float | None) -> str:
    """What the fit found for decode attention's KV reads (`fits.fit_roofline`): their own rate, or why there is none."""
    eff = p.gpu.attention_efficiency
    if eff is not None and rse is not None:
        return (f"Decode attention reads the KV cache at {p.gpu.hbm_gbps * eff:.2f} GB/s, {eff:.2f} x the memory rate "
                f"(attention_efficiency, fitted jointly on decode steps at several contexts; standard error {rse:.0%}; "
                f"residual decode_attention).")
    if rse is None:
        return ("attention_efficiency is null: no sample records decode attention's KV reads (no decode steps, or a samples "
                "file written before they were recorded), so they are priced at the memory rate.")
    return (f"attention_efficiency is null: these samples do not identify a rate of its own for decode attention's KV reads "
            f"(standard error {rse:.0%} of the fitted ratio to the memory rate, over the {ATTENTION_RSE_MAX:.0%} kept), so "
            f"they are priced at the memory rate.")


def describe(m: Measurements, p: HardwareProfile, dram: float, attention_rse: float | None) -> str:
    """The profile's description: how it was measured, what the attention fit found, and the
    interference the cost model lacks."""
    block, gather = interference(m)
    what = "CPU" if m.backend == "cpu" else "GPU"
    parts = [
        f"Calibrated with `engramsim calibrate --backend {m.backend}` (budget {m.budget}, {m.wall_s:.0f} s) on {p.provenance.host}.",
        (f"The {what} rates are achieved ones fitted on stand-in blocks: efficiencies are 1.0 and bf16_tflops / hbm_gbps hold "
         f"the achieved FLOP/s and bytes/s of the backbone's {'fp32' if m.backend == 'cpu' else 'bf16'} kernels (no datasheet)."),
        ("Fetches are timed through the executor's fetch worker, each after a stand-in decode step and waited for as an "
         "Engram layer waits, in the simulator's stage boundaries: a gather from its hand-over to the worker (the worker's "
         "wake-up included) to its last row; an h2d copy from the gather's end, a zero-copy read from its issue, until the "
         "waiting thread resumed (its wake-up is the stage's latency)."),
        "The per-step host time is fitted as a + b x sequences on the host spans of short real passes at several batch sizes.",
        attention_sentence(p, attention_rse),
        f"Host streaming copy {m.stream_gbps:.1f} GB/s (read + write); the gather's fitted DRAM bound {dram / GB:.1f} GB/s.",
    ]
    if m.backend == "cpu":
        parts.append("On the CPU backend 'h2d' is a host memcpy into the landing buffer and 'zero-copy' an index_select straight into it.")
    if gather is not None:
        parts.append(f"Gathers timed that way take {gather:.2f}x as long as back to back on a quiet machine "
                     f"(residual gather_alone: this profile's error there).")
    if m.gather_size:
        parts.append(size_sentence(m, p))
    if block is not None:
        parts.append(f"Interference, which the cost model does not have: blocks take {block:.2f}x as long while gathers loop "
                     f"on another thread (residual block_under_gather).")
    return " ".join(parts)


def size_sentence(m: Measurements, p: HardwareProfile) -> str:
    """What the gather-against-table-size sweep measured: each page size's per-row time from the
    smallest table to the largest, the fitted costs, and how the rate scaled with threads."""
    per_row = {(r["table_bytes"], r["huge_pages"], r["threads"]): r["seconds"] * r["threads"] / r["rows"] for r in m.gather_size}
    sizes = sorted({k[0] for k in per_row})
    pages = sorted({k[1] for k in per_row})
    spans = [f"{'2 MiB' if huge else '4 KiB'} pages {per_row[(sizes[0], huge, 1)] / NS:.0f} -> {per_row[(sizes[-1], huge, 1)] / NS:.0f} ns"
             for huge in pages if (sizes[0], huge, 1) in per_row and (sizes[-1], huge, 1) in per_row]
    threads = sorted({k[2] for k in per_row if k[2] > 1})
    scaling = [f"{t} threads {per_row[(sizes[-1], False, 1)] / per_row[(sizes[-1], False, t)]:.2f}x one's rate" for t in threads
               if (sizes[-1], False, t) in per_row and (sizes[-1], False, 1) in per_row]
    size = p.host.gather_size
    fitted = ("" if size is None else
              f" Fitted (host.gather_size): {size.data_miss_ns:.1f} ns a last-level-cache miss ({size.llc_mib:.0f} MiB), "
              f"{size.tlb_miss_ns:.1f} ns an STLB miss ({size.stlb_entries} entries), {size.pte_miss_ns:.1f} ns a page-table entry "
              f"missing L2 ({size.l2_mib:.0f} MiB); residual gather_size.")
    return (f"Gather against table size ({len(sizes)} sizes, {sizes[0] / MIB:.0f} MiB to {sizes[-1] / GIB:.0f} GiB, one thread's "
            f"time per random {m.gather_size[0]['row_bytes']} B row): {'; '.join(spans) or 'one page size'}"
            f"{'; at the largest table ' + ', '.join(scaling) if scaling else ''} (huge pages: kernel mode "
            f"{m.huge_page_mode or 'unknown'}).{fitted}")


def profile_yaml(profile: HardwareProfile) -> str:
    data = profile.model_dump(mode="json")
    header = f"# {profile.name}: written by `{profile.provenance.source}` on {profile.provenance.date}.\n"
    return header + yaml.safe_dump(data, sort_keys=False, width=120)


def calibrate(backend: str, budget: str | Budget, name: str, progress: Progress | None = None,
              seed: int = 0) -> tuple[HardwareProfile, Measurements]:
    """Measure, fit, and return the calibrated profile with the measurements behind it."""
    require_backend(backend)
    plan = BUDGETS[budget] if isinstance(budget, str) else budget
    t0 = time.perf_counter()
    cal = Calibrator(backend, plan, progress, seed)
    try:
        cal.bench_fetches("staged")
        cal.bench_quiet_gather()
        cal.bench_gather_sizes()
        cal.bench_stream()
        cal.bench_fetches("zero-copy")
        cal.bench_backbone()
        cal.bench_host()
    finally:
        cal.close()
    cal.m.wall_s = time.perf_counter() - t0
    return fit_profile(cal.m, name), cal.m

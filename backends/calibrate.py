"""Calibration: micro-benchmarks on this machine, scipy fits, a `HardwareProfile` with residuals.

`engramsim calibrate --backend cpu|cuda` measures the pieces the cost model prices on the
backend's own operations (the `Device` of backends/device.py and the stand-in blocks the real
executor runs), then fits the cost model's formulas to the timings:

| group | measured | fitted (profile field) | formula (simulator/cost.py) |
|---|---|---|---|
| gather | `Device.gather` of sorted unique random rows vs rows and row bytes, each after a stand-in decode step, handed to a waiting worker thread and timed until the computing thread sees it done (what an Engram layer waiting for its rows pays) | host.gather_rows_per_s, gather_overhead_us, dram_gbps | overhead + max(rows / (threads * rate), 2 * rows * row_bytes / dram) |
| h2d | `Device.h2d` of 4 KiB .. 64 MiB, under service load | link.dma_latency_us, h2d_gbps (d2h_gbps = h2d) | latency + bytes / bandwidth |
| zero_copy | `Device.zero_copy` vs rows and row bytes, under service load | link.zero_copy_latency_us, zero_copy_gbps, transaction_bytes | latency + rows * ceil(row_bytes / tx) * tx / bandwidth |
| block | the stand-in blocks of a step (attention + SwiGLU MLP) vs prefill tokens and decode batch x context, per block | gpu.bf16_tflops, hbm_gbps, roofline_exponent, layer_overhead_us | sum over its kernels of roofline(flops, bytes) + layer overhead |
| engram | the Engram layer as the executor runs it (rows from the landing buffer, EngramModule) | engram_overhead_us (joint fit with block) | sum over its kernels of roofline + Engram layer overhead |
| head | final norm + LM head + sampling | its fixed cost (joint fit with block) | sum over its kernels of roofline + that fixed cost |
| host | the executor's per-step host work (plan, step layout, fetch hand-off): "host" spans of short real passes on a small built-in scenario | step_overhead_us = median host time + the head's fixed cost | step overhead, paid at the start of every step |

roofline(flops, bytes) = (tc^n + tm^n)^(1/n) with tc = (flops + 2 * half_rows * weights) / peak,
tm = bytes / hbm, the fitted exponent n in [1, 32] (1: the two add up, as on one CPU core at
small batch; 32: their max) and the fitted GEMM half-performance length `gpu.gemm_half_rows`.

"Service load" (`Calibrator.service_load`, for h2d and zero-copy): a compute thread keeps running
stand-in steps and each timed copy follows an idle wait, as the executor's fetch worker sees
them; gathers are timed the way a waiting Engram layer sees them (above); `gather_alone` repeats
the gathers back to back on a quiet machine, for comparison only.

The FLOPs and bytes of every kernel of a measured block, Engram layer and head are the cost
model's own (`CostModel.block_kernels` ...), so the fit is exactly the model the simulator
evaluates. The three parts are timed in place inside steps run as the executor runs them. The achieved
rates are stored as the peaks with `compute_efficiency = memory_efficiency = 1.0` (no datasheet
enters a calibrated profile). The non-linear fits (gather, roofline) minimise the squared log of
model / measured (scipy.optimize.least_squares), the linear ones (h2d, zero-copy) the squared
relative error: either way a 10 us gather counts as much as a 10 ms one, and the log makes a
2x overestimate cost as much as a 2x underestimate.

Copy/compute interference (a block timed while gathers loop on another thread) has no parameter
in the cost model: its slowdown goes into the profile's description and into the residual
"block_under_gather" (the model's error on those blocks).

Residuals: `rel_error_mean` is the signed mean of (model - measured) / measured (the bias),
`rel_error_p95` the 95th percentile of its absolute value (the band).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import platform
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.optimize import least_squares, lsq_linear

from engramsim import __version__
from engramsim.errors import InputError
from engramsim.simulator.profile import GPU, HardwareProfile, Host, Link, Provenance, Residual

if TYPE_CHECKING:
    import torch

    from engramsim.backends.device import Device

GIB = 1 << 30
MIB = 1 << 20
KIB = 1 << 10
US = 1e-6
GB = 1e9
TFLOP = 1e12

Progress = Callable[[str, int, int], None]  # (stage label, done, total)
FETCH_GAP_S = 0.01  # the fetch worker's idle wait before each timed fetch under service load: about a step
RATE_CEILING = 3.0  # a fitted peak is at most this many times the highest rate any sample reached
EXPONENT_MAX = 32.0  # the roofline exponent's upper bound: (a^32 + b^32)^(1/32) is within 2.2% of max(a, b)
HALF_ROWS_MAX = 256.0  # a GEMM's half-performance length is at most this many rows
FILL_BLOCK_WORDS = 1 << 22  # 16 MiB of float32: the random block repeated down the calibration table


# ---- budgets -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    """How much to measure. `tiny` is for tests (seconds), `quick` about a minute, `full` longer."""

    name: str
    table_bytes: int  # the gather's table: several times the last-level cache, like real Engram tables
    gather_rows: tuple[int, ...]
    row_bytes: tuple[int, ...]
    copy_bytes: tuple[int, ...]
    repeats: int  # timings per case; the median is the sample
    prefill_tokens: tuple[tuple[int, int], ...]  # (sequences, tokens each)
    decode_cases: tuple[tuple[int, int], ...]  # (batch, context)
    shapes: int  # how many backbone shapes of the backend's list
    interference_cases: int
    host_batches: tuple[int, ...]  # max_num_seqs of the short real passes that time the per-step host work
    host_steps: int  # steps of each of those passes


def _geometric(lo: int, hi: int, factor: int) -> tuple[int, ...]:
    out, v = [], lo
    while v <= hi:
        out.append(v)
        v *= factor
    return tuple(out)


BUDGETS: dict[str, Budget] = {
    "tiny": Budget("tiny", 64 * MIB, (64, 512, 4096, 16384), (128, 256), _geometric(4 * KIB, 4 * MIB, 8), 3,
                   ((1, 16), (2, 64)), ((1, 64), (4, 128)), 1, 1, (2,), 6),
    "quick": Budget("quick", 1 * GIB, _geometric(64, 65536, 4), (128, 160, 256, 512), _geometric(4 * KIB, 64 * MIB, 4), 7,
                    ((1, 32), (1, 128), (2, 256), (4, 256), (8, 256)), ((1, 128), (2, 128), (4, 256), (8, 512), (16, 256), (32, 512)),
                    2, 3, (4, 16), 40),
    "full": Budget("full", 2 * GIB, _geometric(16, 262144, 2), (128, 160, 256, 512), _geometric(4 * KIB, 64 * MIB, 2), 9,
                   ((1, 16), (1, 64), (1, 256), (2, 256), (4, 256), (8, 256), (4, 512), (16, 128)),
                   ((1, 64), (1, 1024), (2, 128), (4, 256), (8, 512), (16, 128), (16, 1024), (32, 256), (64, 512)), 3, 6,
                   (2, 8, 32), 60),
}


# ---- who we are ---------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU model from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_host() -> str:
    """'<CPU model> x<cores> @ <hostname>': what a calibrated profile records as its host."""
    import os

    return f"{cpu_model()} x{os.cpu_count() or 1} @ {socket.gethostname()}"


def _hardware_part(host: str | None) -> str | None:
    """The host string without its hostname (a CI runner's name changes every run; its CPU does not)."""
    return None if host is None else host.rsplit(" @ ", 1)[0].strip()


def gpu_name() -> str | None:
    """This machine's first GPU by NVML, without initialising CUDA; None when there is none."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            if pynvml.nvmlDeviceGetCount() == 0:
                return None
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
            return name.decode() if isinstance(name, bytes) else str(name)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no library, no driver, no device: no GPU as far as a profile is concerned
        return None


def check_profile_host(profile: HardwareProfile) -> str | None:
    """A warning when `profile` was calibrated on other hardware than this machine, else None.

    Only calibrated profiles are checked (a preset describes hardware you may not have, on
    purpose). The CPU model and core count must match (not the hostname); so must the GPU when
    the profile names one.
    """
    prov = profile.provenance
    if prov.kind != "calibrated":
        return None
    problems = []
    here = machine_host()
    if prov.host and _hardware_part(prov.host) != _hardware_part(here):
        problems.append(f"host {_hardware_part(prov.host)!r} (this machine: {_hardware_part(here)!r})")
    if prov.gpu:
        gpu = gpu_name()
        if gpu != prov.gpu:
            problems.append(f"GPU {prov.gpu!r} (this machine: {gpu or 'none'!r})")
    if not problems:
        return None
    return (f"profile {profile.name!r} was calibrated on {' and '.join(problems)}; "
            f"its numbers may not hold here (run `engramsim calibrate` on this machine)")


def versions(backend: str) -> dict[str, str]:
    import torch

    out = {"engramsim": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "numpy": np.__version__}
    import scipy

    out["scipy"] = scipy.__version__
    if backend == "cuda" and torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
        with contextlib.suppress(Exception):
            import pynvml

            pynvml.nvmlInit()
            drv = pynvml.nvmlSystemGetDriverVersion()
            out["driver"] = drv.decode() if isinstance(drv, bytes) else str(drv)
            pynvml.nvmlShutdown()
    return out


def require_backend(backend: str) -> None:
    """InputError (one line, exit 2) when `backend` cannot run here."""
    if backend not in ("cpu", "cuda"):
        raise InputError("--backend", f"expected 'cpu' or 'cuda', got {backend!r}")
    if backend == "cuda":
        import torch

        if not torch.cuda.is_available():
            build = f"torch {torch.__version__}" + ("" if torch.version.cuda else " (a CPU-only build)")
            raise InputError("--backend", f"'cuda' needs a CUDA GPU, and {build} sees none; use --backend cpu")


# ---- fits (pure functions of the measurements) ---------------------------------------------------
def rel_errors(predicted: Sequence[float], measured: Sequence[float]) -> np.ndarray:
    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    return (p - m) / m


def residual(predicted: Sequence[float], measured: Sequence[float]) -> Residual:
    """Signed mean and 95th-percentile absolute relative error of a model against its samples."""
    err = rel_errors(predicted, measured)
    return Residual(samples=int(err.size), rel_error_mean=float(err.mean()),
                    rel_error_p95=float(np.percentile(np.abs(err), 95)))


def fit_latency_bandwidth(nbytes: Sequence[float], seconds: Sequence[float]) -> tuple[float, float]:
    """(latency s, bytes/s) of t = latency + bytes / bandwidth, least relative error, latency >= 0.

    Weighted linear least squares: divide each equation by its own time, so
    [1/t, x/t] . [latency, 1/bandwidth] = 1.
    """
    x, t = np.asarray(nbytes, dtype=float), np.asarray(seconds, dtype=float)
    a = np.column_stack([1.0 / t, x / t])
    scale = np.array([np.median(t), np.median(t) / np.median(x)])
    min_inv_bw = 1.0 / (RATE_CEILING * float(np.max(x / t)))  # no bandwidth beyond RATE_CEILING x the best seen
    sol = lsq_linear(a * scale, np.ones_like(t), bounds=([0.0, min_inv_bw / scale[1]], [np.inf, np.inf]))
    latency, inv_bw = sol.x * scale
    return float(latency), float(1.0 / inv_bw)


def fit_gather(rows: Sequence[float], row_bytes: Sequence[float], seconds: Sequence[float], threads: int,
               dram_max: float) -> tuple[float, float, float]:
    """(rows/s per thread, overhead s, DRAM bytes/s) of
    t = overhead + max(rows / (threads * rate), 2 * rows * row_bytes / dram), least squared log error.

    The DRAM bound is capped at `dram_max` (the streaming-copy bandwidth); where no sample is
    bandwidth-bound the fit leaves it there.
    """
    n, b, t = (np.asarray(v, dtype=float) for v in (rows, row_bytes, seconds))

    def model(p: np.ndarray) -> np.ndarray:
        rate, dram, overhead = math.exp(p[0]), math.exp(p[1]), p[2] * 1e-6
        return overhead + np.maximum(n / (threads * rate), 2.0 * n * b / dram)

    def res(p: np.ndarray) -> np.ndarray:
        return np.log(model(p) / t)

    best = None
    rate0 = float(np.median(n / t)) / threads
    rate_max = RATE_CEILING * float(np.max(n / t)) / threads
    for rate_guess in (rate0, rate0 * 2, rate0 / 2):
        for dram_guess in (dram_max * 0.999, dram_max * 0.3):
            p0 = np.array([math.log(min(rate_guess, rate_max * 0.99)), math.log(dram_guess), float(np.min(t)) * 0.2e6])
            sol = least_squares(res, p0, bounds=([-np.inf, math.log(dram_max * 1e-3), 0.0], [math.log(rate_max), math.log(dram_max), np.inf]),
                                x_scale=[1.0, 1.0, max(1.0, p0[2])])
            if best is None or sol.cost < best.cost:
                best = sol
    assert best is not None
    return math.exp(best.x[0]), best.x[2] * 1e-6, math.exp(best.x[1])


def wire_bytes(rows: np.ndarray, row_bytes: np.ndarray, tx: int) -> np.ndarray:
    return rows * np.ceil(row_bytes / tx) * tx


def fit_zero_copy(rows: Sequence[float], row_bytes: Sequence[float], seconds: Sequence[float],
                  transactions: Sequence[int] = (32, 64, 128)) -> tuple[float, float, int]:
    """(latency s, bytes/s, transaction bytes) of t = latency + rows * ceil(b / tx) * tx / bandwidth.

    The transaction size is the candidate whose fit has the least squared relative error (ties:
    the larger, the simulator's default granularity being a GPU's 128 B read).
    """
    n, b, t = (np.asarray(v, dtype=float) for v in (rows, row_bytes, seconds))
    best: tuple[float, float, float, int] | None = None
    for tx in sorted(transactions, reverse=True):
        wire = wire_bytes(n, b, tx)
        latency, bw = fit_latency_bandwidth(wire, t)
        cost = float(np.sum(((latency + wire / bw) - t) ** 2 / t ** 2))
        if best is None or cost < best[0] * (1 - 1e-9):
            best = (cost, latency, bw, tx)
    assert best is not None
    return best[1], best[2], best[3]


def kernel_times(kernels: Sequence[np.ndarray], flops_s: float, bytes_s: float, exponent: float | None,
                 half_rows: float = 0.0) -> np.ndarray:
    """Seconds of each sample's kernels (an array [kernels, (flops, bytes, weights)] per sample),
    summed per sample, each kernel priced as simulator/cost.py `CostModel.roofline` prices it."""
    arrays = [np.asarray(k, dtype=float).reshape(-1, 3) for k in kernels]
    stacked = np.concatenate(arrays)
    owner = np.repeat(np.arange(len(arrays)), [a.shape[0] for a in arrays])
    tc = (stacked[:, 0] + 2.0 * half_rows * stacked[:, 2]) / flops_s
    tm = stacked[:, 1] / bytes_s
    hi = np.maximum(tc, tm)
    if exponent is None:
        per_kernel = hi
    else:
        safe = np.where(hi > 0, hi, 1.0)
        per_kernel = np.where(hi > 0, safe * ((tc / safe) ** exponent + (tm / safe) ** exponent) ** (1.0 / exponent), 0.0)
    return np.bincount(owner, weights=per_kernel, minlength=len(arrays))


@dataclass(frozen=True)
class RooflineFit:
    flops_s: float
    bytes_s: float
    exponent: float
    half_rows: float
    overheads_s: np.ndarray


def fit_roofline(kernels: Sequence[np.ndarray], seconds: Sequence[float],
                 overheads: np.ndarray | Sequence[Sequence[float]] | None = None) -> RooflineFit:
    """The rates, exponent n, GEMM half-rows and fixed costs of t = sum over the sample's kernels
    of (tc^n + tm^n)^(1/n) + K . overheads, least squared log error.

    `kernels` holds one array [kernels, (flops, bytes, weights)] per sample. `overheads` is K, one
    row per sample and one column per fixed cost (e.g. [1, 0] for a block, which pays one layer
    overhead, [0, 1] for the head, which pays its own fixed cost); default one column of ones. The
    exponent runs from 1 (compute and memory time add up) to EXPONENT_MAX (practically their max),
    the half-rows from 0 to HALF_ROWS_MAX. Each peak is bounded by `RATE_CEILING` x the highest
    rate a sample reached. The problem is not convex: several starts, the best kept.
    """
    t = np.asarray(seconds, dtype=float)
    arrays = [np.asarray(k, dtype=float).reshape(-1, 3) for k in kernels]
    f = np.array([a[:, 0].sum() for a in arrays])
    by = np.array([a[:, 1].sum() for a in arrays])
    k = np.ones((t.size, 1)) if overheads is None else np.asarray(overheads, dtype=float).reshape(t.size, -1)
    m = k.shape[1]

    def res(p: np.ndarray) -> np.ndarray:
        pred = kernel_times(arrays, math.exp(p[0]), math.exp(p[1]), 1.0 + math.exp(p[2]), p[3]) + k @ p[4:] * 1e-6
        return np.log(pred / t)

    # No extrapolation: a rate may not exceed RATE_CEILING x the highest one any sample reached
    # (where no sample is bound by it, e.g. none is memory-bound, the fit would run it to infinity).
    f_hi, b_hi = float(np.max(f / t)), float(np.max(by / t))
    n_lo, n_hi = math.log(1e-3), math.log(EXPONENT_MAX - 1.0)
    lower = np.r_[math.log(f_hi / 100), math.log(b_hi / 100), n_lo, 0.0, np.zeros(m)]
    upper = np.r_[math.log(f_hi * RATE_CEILING), math.log(b_hi * RATE_CEILING), n_hi, HALF_ROWS_MAX, np.full(m, np.inf)]
    o0 = float(np.min(t)) * 1e6
    best = None
    for fs in (1.0, RATE_CEILING * 0.99):
        for bs in (0.3, 1.0, RATE_CEILING * 0.99):
            for n0 in (n_lo + 0.1, n_hi - 0.1):
                for h0 in (0.0, 16.0):
                    p0 = np.concatenate([[math.log(f_hi * fs), math.log(b_hi * bs), n0, h0], np.full(m, o0 * 0.1)])
                    sol = least_squares(res, p0, bounds=(lower, upper),
                                        x_scale=np.r_[1.0, 1.0, 1.0, 8.0, np.full(m, max(1.0, o0))])
                    if best is None or sol.cost < best.cost:
                        best = sol
    assert best is not None
    x = best.x
    return RooflineFit(math.exp(x[0]), math.exp(x[1]), 1.0 + math.exp(x[2]), float(x[3]), x[4:] * 1e-6)


# ---- timing helpers ------------------------------------------------------------------------------
def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _sorted_unique_rows(gen: np.random.Generator, total: int, n: int) -> np.ndarray:
    """n distinct random rows of a table of `total`, sorted, as the planner hands fetches over."""
    if n >= total:
        return np.arange(total, dtype=np.int64)
    rows = np.unique(gen.integers(0, total, size=int(n * 1.05) + 8, dtype=np.int64))
    while rows.size < n:
        rows = np.unique(np.concatenate([rows, gen.integers(0, total, size=n, dtype=np.int64)]))
    return np.sort(gen.choice(rows, size=n, replace=False))


def _fill_table(flat: torch.Tensor) -> None:
    """Random values, a seeded 16 MiB block repeated down the buffer, as the executor fills real
    tables (backends/executor.py `fill_table`): the same memory content, so the same behaviour
    (on an overcommitted VM, random pages read back slower than constant ones)."""
    import torch

    block = torch.randn(FILL_BLOCK_WORDS, generator=torch.Generator().manual_seed(0)).to(flat.device)
    for start in range(0, flat.numel(), block.numel()):
        n = min(block.numel(), flat.numel() - start)
        flat[start : start + n].copy_(block[:n])


# ---- the backbone cases ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    """A stand-in backbone measured by the calibration (blocks cycled like a real step)."""

    name: str
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    layers: int  # distinct blocks cycled through, so the weights do not all sit in cache


# CPU: fp32, CPU-sized (like the CPU validation scenarios). CUDA: bf16, 4B/8B-class dense backbones and a small one.
CPU_SHAPES = (
    Shape("cpu-h512", 512, 1408, 8, 2, 64, 8192, 6),
    Shape("cpu-h1024", 1024, 2816, 16, 4, 64, 16384, 4),
    Shape("cpu-h768", 768, 2048, 12, 4, 64, 12288, 4),
)
CUDA_SHAPES = (
    Shape("cuda-4b", 2560, 9728, 32, 8, 128, 151936, 4),
    Shape("cuda-h1024", 1024, 2816, 16, 4, 64, 16384, 8),  # launch-bound: the layer overhead's regime
    Shape("cuda-8b", 4096, 12288, 32, 8, 128, 151936, 4),
)
CUDA_SCALE = 16  # CUDA cases: 16x the sequences of the CPU cases (a GPU step batches far more)


def backbone_cases(backend: str, budget: Budget) -> list[tuple[Shape, list[tuple[str, np.ndarray, np.ndarray]]]]:
    """Per shape, (kind, new tokens per sequence, context lengths) of every measured step."""
    shapes = (CUDA_SHAPES if backend == "cuda" else CPU_SHAPES)[: budget.shapes]
    scale = CUDA_SCALE if backend == "cuda" else 1
    steps: list[tuple[str, np.ndarray, np.ndarray]] = []
    for seqs, tokens in budget.prefill_tokens:
        lens = np.full(seqs * scale, tokens, dtype=np.int64)
        steps.append(("prefill", lens, lens.copy()))
    for batch, context in budget.decode_cases:
        ctx = np.full(batch * scale, context, dtype=np.int64)
        steps.append(("decode", np.ones(batch * scale, dtype=np.int64), ctx))
    return [(shape, steps) for shape in shapes]


def shape_model(shape: Shape, dtype: str, engram_head_dim: int, engram_dtype: str):
    """The scenario `Model` of a shape: the cost model prices the calibration's cases with it."""
    from engramsim.scenario import Model

    return Model.model_validate({
        "backbone": {"layers": shape.layers, "hidden": shape.hidden, "intermediate": shape.intermediate,
                     "vocab": shape.vocab, "dtype": dtype,
                     "attention": {"heads": shape.heads, "kv_heads": shape.kv_heads, "head_dim": shape.head_dim}},
        "engram": {"layers": [0], "max_ngram": 3, "heads": 8, "head_dim": engram_head_dim, "rows_per_head": 1000,
                   "dtype": engram_dtype, "hc_mult": 1},
    })


def make_step(kind: str, new: np.ndarray, ctx: np.ndarray, index: int = 0):
    from engramsim.steps import Step

    return Step(index, kind, np.arange(new.size, dtype=np.int64), new.astype(np.int64), ctx.astype(np.int64),  # type: ignore[arg-type]
                np.zeros(int(new.sum()), dtype=np.int64))


UNIT_PROFILE = {
    "name": "unit", "step_overhead_us": 0.0, "provenance": {"kind": "preset", "source": "calibration units"},
    "gpu": {"name": "unit", "bf16_tflops": 1.0, "hbm_gbps": 1.0, "hbm_gib": 1.0, "compute_efficiency": 1.0,
            "memory_efficiency": 1.0, "layer_overhead_us": 0.0},
    "link": {"name": "unit", "h2d_gbps": 1.0, "d2h_gbps": 1.0, "dma_latency_us": 0.0, "zero_copy_gbps": 1.0,
             "zero_copy_latency_us": 0.0},
    "host": {"name": "unit", "dram_gbps": 1.0, "dram_gib": 1.0, "gather_rows_per_s": 1.0, "gather_threads": 1,
             "gather_overhead_us": 0.0},
}


# ---- measurements ------------------------------------------------------------------------------------
@dataclass
class Measurements:
    """Every timing the fits use (seconds; one median per case), kept for the samples file."""

    backend: str
    budget: str
    threads: int = 1
    gather: list[dict[str, float]] = field(default_factory=list)  # rows, row_bytes, seconds
    copy: list[dict[str, float]] = field(default_factory=list)  # bytes, seconds
    zero_copy: list[dict[str, float]] = field(default_factory=list)  # rows, row_bytes, seconds
    stream_gbps: float = 0.0
    block: list[dict[str, Any]] = field(default_factory=list)  # shape, kind, seqs, tokens, context, flops, bytes, seconds
    engram: list[dict[str, Any]] = field(default_factory=list)  # as block, plus rows
    head: list[dict[str, Any]] = field(default_factory=list)
    host: list[dict[str, Any]] = field(default_factory=list)  # kind, seqs, tokens, seconds: per step of a real pass
    block_under_gather: list[dict[str, Any]] = field(default_factory=list)
    gather_alone: list[dict[str, float]] = field(default_factory=list)  # rows, row_bytes, seconds: back to back, quiet
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


class Calibrator:
    """Runs the micro-benchmarks of one backend on its `Device`."""

    def __init__(self, backend: str, budget: Budget, progress: Progress | None = None, seed: int = 0) -> None:
        import torch

        from engramsim.backends.device import make_device

        self.backend = backend
        self.budget = budget
        self.progress = progress or (lambda stage, done, total: None)
        self.rng = np.random.default_rng(seed)
        self.device: Device = make_device(backend, "calibration")
        self.dtype = torch.bfloat16 if backend == "cuda" else torch.float32
        self.dtype_name = "bf16" if backend == "cuda" else "fp32"
        self.esize = torch.tensor([], dtype=self.dtype).element_size()
        self.m = Measurements(backend, budget.name, threads=self._gather_threads())
        self._table: torch.Tensor | None = None
        self.device.start_clock()

    def _gather_threads(self) -> int:
        """Threads the backend's gather runs with (CPU: its one fetch worker; CUDA: `gather_threads`)."""
        import importlib

        import torch

        threads = getattr(self.device, "gather_threads", None)
        if isinstance(threads, int):
            return threads
        threads = getattr(importlib.import_module(f"engramsim.backends.{self.backend}"), "THREADS", None)
        return threads if isinstance(threads, int) else torch.get_num_threads()

    # ---- plumbing ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        """The gather threads for the fetch benchmarks; torch's thread count restored afterwards."""
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(self.m.threads)
        try:
            with self.device.worker():
                yield
        finally:
            torch.set_num_threads(previous)

    def _timed(self, marks: tuple[Any, Any]) -> float:
        self.device.synchronize()
        start, end = marks
        return self.device.seconds(end) - self.device.seconds(start)

    def table(self) -> torch.Tensor:
        """One flat float32 host buffer of `table_bytes`, every page written, then read (warm)."""
        import torch

        if self._table is None:
            words = self.budget.table_bytes // 4
            flat = self.device.host_table(words, 1, torch.float32).view(-1)
            _fill_table(flat)
            self._table = flat
            self._warm()
        return self._table

    def _warm(self) -> None:
        """A sequential read of the whole table and a few untimed gathers: on some VMs the first
        random reads after a large write run many times slower for a while."""
        import torch

        flat = self.table()
        float(flat.sum())
        rb = self.budget.row_bytes[0]
        total = self.budget.table_bytes // rb
        table = self.view_rows(flat, total, rb)
        for n in (64, 256, 1024) * 4:
            torch.index_select(table, 0, self._index(_sorted_unique_rows(self.rng, total, n)))

    def view_rows(self, flat: torch.Tensor, rows: int, row_bytes: int) -> torch.Tensor:
        """`rows` rows of `row_bytes` in the backend's table dtype, viewed over a flat buffer."""
        import torch

        width = row_bytes // self.esize
        return flat.view(torch.uint8)[: rows * row_bytes].view(self.dtype).view(rows, width)

    def _index(self, rows: np.ndarray) -> torch.Tensor:
        import torch

        return torch.from_numpy(rows)

    # ---- service conditions -----------------------------------------------------------------------
    @contextlib.contextmanager
    def service_load(self) -> Iterator[None]:
        """Copy benchmarks run as the executor runs them: a compute thread keeps running stand-in
        steps (alternating a decode and a prefill step, a synchronize after each), and every timed
        copy starts after the worker sat idle for `FETCH_GAP_S`, as it waits for the next step's fetch.

        Why: on the 2-core VM this was written on, 128 random rows out of a 1-2 GiB table take ~20 us
        back to back on a quiet machine; with the idle gap and a compute thread running, one gather
        in ten or more takes 150-700 us (cold TLB and caches), and gathers inside real runs took
        30-1000 us. Timing them alone would make every stall look too small.
        """
        import torch

        dev = self.device
        steps = self._service_steps()
        stop, failure = threading.Event(), []

        def loop() -> None:
            try:
                with dev.compute(), torch.no_grad():
                    i = 0
                    while not stop.is_set():
                        steps[i % len(steps)]()
                        i += 1
            except BaseException as exc:  # surfaced in the calibrating thread
                failure.append(exc)

        worker = threading.Thread(target=loop, name="calibrate-compute", daemon=True)
        worker.start()
        try:
            time.sleep(0.02)
            yield
        finally:
            stop.set()
            worker.join()
        if failure:
            raise failure[0]

    def _service_steps(self) -> list[Callable[[], None]]:
        """A decode and a prefill step of the first backbone shape (blocks, LM head, synchronize),
        each a call that runs it on the calling thread: the compute the executor runs between fetches."""
        from engramsim.backends.standin import Limits, StandIn, step_layout

        dev = self.device
        shape, steps = backbone_cases(self.backend, self.budget)[0]
        decode = [s for s in steps if s[0] == "decode"]
        prefill = [s for s in steps if s[0] == "prefill"]
        picked = [decode[len(decode) // 2], prefill[len(prefill) // 2]]
        model = shape_model(shape, self.dtype_name, 256 // self.esize, self.dtype_name)
        limits = Limits(tokens=max(int(n.sum()) for _, n, _ in picked), seqs=max(n.size for _, n, _ in picked),
                        context=max(int(c.max()) for _, _, c in picked))
        standin = StandIn(model.backbone, limits, dev.torch_device, dev.compute_dtype(self.dtype_name), dev.generator(1),
                          dev.linear())

        def runner(kind: str, new: np.ndarray, ctx: np.ndarray) -> Callable[[], None]:
            layout = step_layout(make_step(kind, new, ctx), dev.torch_device, dev.attention_groups)

            def run() -> None:
                standin.head(run_blocks(standin, shape.layers, layout), layout)
                dev.synchronize()
            return run

        return [runner(*case) for case in picked]

    def _shuffled(self, cases: list) -> list:
        """Cases in random order, so a slow spell of the machine (after the table's fill, say)
        spreads over all of them instead of biasing the first row size."""
        return [cases[i] for i in self.rng.permutation(len(cases))]

    @contextlib.contextmanager
    def _handoff(self) -> Iterator[Callable[[Callable[[], Any]], float]]:
        """A worker thread waiting on a queue, as the executor's FetchWorker waits for fetches;
        yields `handed(fn)`: seconds from handing `fn` over until the hander sees it done (the
        worker's wake-up and the hander's own wake-up included, as a waiting Engram layer pays them)."""
        import queue

        import torch

        jobs: queue.SimpleQueue = queue.SimpleQueue()

        def loop() -> None:
            torch.set_num_threads(self.m.threads)
            with self.device.worker():
                while (job := jobs.get()) is not None:
                    fn, done, failure = job
                    try:
                        fn()
                        self.device.synchronize()
                    except BaseException as exc:  # surfaced in the calibrating thread
                        failure.append(exc)
                    done.set()

        def handed(fn: Callable[[], Any]) -> float:
            done, failure = threading.Event(), []
            t0 = time.perf_counter()
            jobs.put((fn, done, failure))
            done.wait()
            seconds = time.perf_counter() - t0
            if failure:
                raise failure[0]
            return seconds

        worker = threading.Thread(target=loop, name="calibrate-fetch", daemon=True)
        worker.start()
        try:
            yield handed
        finally:
            jobs.put(None)
            worker.join()

    @contextlib.contextmanager
    def _gather_timer(self, service: bool) -> Iterator[Callable[[Any, Any, Any], float]]:
        """How `bench_gather` times one gather(table, index, out): after a stand-in decode step on
        this thread, handed to a waiting worker, until this thread sees it done (`service`), or
        alone on this thread, the gather's own marks."""
        import torch

        if not service:
            def alone(table: Any, index: Any, out: Any) -> float:
                start, end = self.device.gather(table, index, out)
                return float(end) - float(start)

            with self._threads():
                yield alone
            return
        step = self._service_steps()[0]
        with self.device.compute(), torch.no_grad(), self._handoff() as handed:
            def after_step(table: Any, index: Any, out: Any) -> float:
                step()
                return handed(lambda: self.device.gather(table, index, out))

            yield after_step

    def _idle(self) -> None:
        """Under service load, the worker's wait for the next fetch (an Event wait, as on the queue)."""
        threading.Event().wait(FETCH_GAP_S)

    # ---- host gather -----------------------------------------------------------------------------
    def bench_gather(self, service: bool = True) -> None:
        """Gathers of sorted unique random rows; `service` (the fitted set): as an Engram layer that
        waits for its rows sees them, after a decode step of stand-in blocks on this thread, handed
        to a waiting worker thread and timed until this thread sees it done; else back to back on a
        quiet machine (`gather_alone`, for the description)."""
        import torch

        b = self.budget
        flat = self.table()
        cases = self._shuffled([(n, rb) for rb in b.row_bytes for n in b.gather_rows])
        max_rows = max(b.gather_rows)
        staging = self.device.staging(max_rows * max(b.row_bytes) // 4, 1, torch.float32).view(-1)
        samples = self.m.gather if service else self.m.gather_alone
        label = "gather" if service else "gather (quiet)"
        with self._gather_timer(service) as timed:
            for i, (n, rb) in enumerate(cases):
                total = b.table_bytes // rb
                table = self.view_rows(flat, total, rb)
                out = self.view_rows(staging, n, rb)
                self.device.gather(table, self._index(_sorted_unique_rows(self.rng, total, n)), out)  # warm-up
                times = [timed(table, self._index(_sorted_unique_rows(self.rng, total, n)), out) for _ in range(b.repeats)]
                samples.append({"rows": n, "row_bytes": rb, "seconds": _median(times)})
                self.progress(label, i + 1, len(cases))

    def bench_stream(self) -> None:
        """Streaming copy bandwidth of host memory (read + write counted), the gather's DRAM ceiling."""
        flat = self.table()
        half = flat.numel() // 2
        src, dst = flat[:half], flat[half : 2 * half]
        times = []
        with self._threads():
            for _ in range(max(3, self.budget.repeats // 2)):
                t0 = time.perf_counter()
                dst.copy_(src)
                times.append(time.perf_counter() - t0)
        _fill_table(flat)  # the copy overwrote half the table
        self._warm()
        self.m.stream_gbps = 2 * half * 4 / min(times) / GB
        self.progress("host bandwidth", 1, 1)

    # ---- link ----------------------------------------------------------------------------------------
    def bench_h2d(self) -> None:
        """Staging -> landing copies, under service load, each right after the gather that fills its
        staging (as in the staged pipeline), so the source is as warm as it is in a real run."""
        import torch

        sizes = self.budget.copy_bytes
        words = max(sizes) // 4
        src = self.device.staging(words, 1, torch.float32).view(-1)
        dst = self.device.landing(words, 1, torch.float32).view(-1)
        src.fill_(1.0)
        with self._threads(), self.service_load():
            for i, size in enumerate(sizes):
                k = size // 4
                self._timed(self.device.h2d(dst[:k], src[:k]))  # warm-up
                times = []
                for _ in range(self.budget.repeats):
                    self._idle()
                    src[:k].add_(1.0)  # the gather just wrote the staging buffer
                    times.append(self._timed(self.device.h2d(dst[:k], src[:k])))
                self.m.copy.append({"bytes": size, "seconds": _median(times)})
                self.progress("h2d", i + 1, len(sizes))

    def bench_zero_copy(self) -> None:
        import torch

        b = self.budget
        flat = self.table()
        cases = self._shuffled([(n, rb) for rb in b.row_bytes for n in b.gather_rows])
        max_rows = max(b.gather_rows)
        landing = self.device.landing(max_rows * max(b.row_bytes) // 4, 1, torch.float32).view(-1)
        with self._threads(), self.service_load():
            sources: dict[int, torch.Tensor] = {}
            for i, (n, rb) in enumerate(cases):
                total = b.table_bytes // rb
                if rb not in sources:
                    sources[rb] = self.device.zero_copy_source(self.view_rows(flat, total, rb))
                src = sources[rb]
                out = self.view_rows(landing, n, rb)
                # The row ids start on the host, as the executor hands them over (CUDA moves them inside the timed interval).
                self._timed(self.device.zero_copy(src, self._index(_sorted_unique_rows(self.rng, total, n)), out))
                times = []
                for _ in range(b.repeats):
                    index = self._index(_sorted_unique_rows(self.rng, total, n))
                    self._idle()
                    times.append(self._timed(self.device.zero_copy(src, index, out)))
                self.m.zero_copy.append({"rows": n, "row_bytes": rb, "seconds": _median(times)})
                self.progress("zero-copy", i + 1, len(cases))

    # ---- backbone ------------------------------------------------------------------------------------
    def _device_time(self, fn: Callable[[], Any]) -> float:
        """Seconds of `fn` on the compute timeline (events on CUDA, perf_counter on the CPU)."""
        self.device.synchronize()
        start = self.device.mark()
        fn()
        end = self.device.mark()
        return self._timed((start, end))

    def bench_backbone(self) -> None:
        """Per case, steps run the way the executor runs them: every block in turn with the hidden
        states chained through, the Engram layer, then the LM head; each part timed in
        place (so weights are as cold or warm as in a real step), medians over the repeats."""
        import torch

        from engramsim.backends.device import to_index
        from engramsim.backends.engram_module import EngramModule
        from engramsim.backends.executor import row_values
        from engramsim.backends.standin import Limits, StandIn, step_layout
        from engramsim.simulator.cost import CostModel
        from engramsim.simulator.profile import HardwareProfile

        cases = backbone_cases(self.backend, self.budget)
        total = sum(len(steps) for _, steps in cases)
        done = 0
        dev = self.device
        unit = HardwareProfile.model_validate(UNIT_PROFILE)
        engram_head_dim = 256 // self.esize  # 256 B rows
        with dev.compute(), torch.no_grad():
            for shape, steps in cases:
                model = shape_model(shape, self.dtype_name, engram_head_dim, self.dtype_name)
                cost = CostModel(model, unit)
                limits = Limits(tokens=max(int(n.sum()) for _, n, _ in steps), seqs=max(n.size for _, n, _ in steps),
                                context=max(int(c.max()) for _, _, c in steps))
                compute_dtype = dev.compute_dtype(self.dtype_name)
                standin = StandIn(model.backbone, limits, dev.torch_device, compute_dtype, dev.generator(0), dev.linear())
                engram_cfg = model.engram
                module = EngramModule(shape.hidden, engram_cfg.d_mem, hc_mult=engram_cfg.hc_mult, max_ngram=engram_cfg.max_ngram,
                                      kernel_size=engram_cfg.kernel_size, generator=0, device=dev.torch_device,
                                      dtype=compute_dtype)
                heads = engram_cfg.heads_per_layer
                landing = dev.landing(limits.tokens * heads, engram_cfg.head_dim, self.dtype)
                landing.normal_()
                for kind, new, ctx in steps:
                    step = make_step(kind, new, ctx)
                    layout = step_layout(step, dev.torch_device, dev.attention_groups)
                    h = standin.input(layout)

                    # Engram layer, as the executor runs it: map every token's rows onto the step's unique
                    # rows, assemble them from the landing buffer, e_t per token, the EngramModule, residual add.
                    tokens = int(new.sum())
                    rows = max(1, min(landing.shape[0], tokens * heads * 2 // 3))  # ~1.5 references per unique row
                    unique_rows = _sorted_unique_rows(self.rng, 1 << 40, rows)
                    token_rows = unique_rows[self.rng.integers(0, rows, size=(tokens, heads))]
                    missed = np.arange(rows, dtype=np.int64)

                    def engram() -> None:
                        slots = np.searchsorted(unique_rows, token_rows)
                        unique = landing.new_empty(rows, landing.shape[1])
                        unique.index_copy_(0, to_index(missed, dev.torch_device), landing[:rows])
                        e = row_values(unique, engram_cfg, compute_dtype).index_select(0, to_index(slots.reshape(-1), dev.torch_device))
                        branches = h.view(1, tokens, 1, -1).expand(1, tokens, engram_cfg.hc_mult, shape.hidden)
                        _ = h + module(branches, e.view(1, tokens, engram_cfg.d_mem))[0].mean(dim=1)

                    parts = {"block": lambda: run_blocks(standin, shape.layers, layout), "engram": engram,
                             "head": lambda: standin.head(h, layout)}  # final norm, LM head, sampling
                    times: dict[str, list[float]] = {part: [] for part in parts}
                    for _ in range(self.budget.repeats + 1):  # the first round warms up
                        for part, fn in parts.items():
                            times[part].append(self._device_time(fn))
                    base = {"shape": shape.name, "kind": kind, "seqs": int(new.size), "tokens": tokens, "context": int(ctx.max())}
                    kernels = {"block": cost.block_kernels(step, 0), "engram": cost.engram_kernels(step, rows),
                               "head": cost.head_kernels(step)}
                    for part in parts:
                        per = shape.layers if part == "block" else 1
                        getattr(self.m, part).append({**base, "rows": rows, **kernel_fields(kernels[part]),
                                                      "seconds": _median(times[part][1:]) / per})
                    done += 1
                    self.progress("backbone", done, total)
                if shape is cases[0][0]:
                    self._interference(standin, shape, steps, cost)
                del standin, module, landing
                if self.backend == "cuda":
                    torch.cuda.empty_cache()

    def _interference(self, standin: Any, shape: Shape, steps: list, cost: Any) -> None:
        """Blocks timed while a gather loops on another thread, and gathers timed while blocks loop."""
        import torch

        from engramsim.backends.standin import step_layout

        dev, b = self.device, self.budget
        flat = self.table()
        rb, n = 256, min(16384, max(b.gather_rows))
        total_rows = b.table_bytes // rb
        table = self.view_rows(flat, total_rows, rb)
        staging = self.device.staging(n * rb // 4, 1, torch.float32).view(-1)
        out = self.view_rows(staging, n, rb)
        picked = [steps[0], steps[-1], steps[len(steps) // 2]][: b.interference_cases]
        for kind, new, ctx in picked:
            step = make_step(kind, new, ctx)
            layout = step_layout(step, dev.torch_device, dev.attention_groups)
            stop = threading.Event()

            def gather_loop() -> None:
                torch.set_num_threads(self.m.threads)
                with dev.worker():
                    while not stop.is_set():
                        dev.gather(table, self._index(_sorted_unique_rows(self.rng, total_rows, n)), out)

            worker = threading.Thread(target=gather_loop, daemon=True)
            worker.start()
            try:
                under = _median([self._device_time(lambda: run_blocks(standin, shape.layers, layout)) / shape.layers
                                 for _ in range(b.repeats)])
            finally:
                stop.set()
                worker.join()
            self.m.block_under_gather.append({"shape": shape.name, "kind": kind, "seqs": int(new.size), "tokens": int(new.sum()),
                                              "context": int(ctx.max()), **kernel_fields(cost.block_kernels(step, 0)),
                                              "seconds": under})


    def bench_host(self) -> None:
        """The executor's per-step host work (plan, step layout, the first fetch handed to the
        worker): the "host" spans of short real passes over a small built-in scenario, one per
        batch size of the budget. Not a validation scenario: its own trace, shape and table."""
        from engramsim.runner import prepare, run_real
        from engramsim.scenario import Scenario

        shape = backbone_cases(self.backend, self.budget)[0][0]
        batches = self.budget.host_batches
        for i, seqs in enumerate(batches):
            scenario = Scenario.model_validate(host_scenario(shape, seqs, self.dtype_name, 256 // self.esize, self.budget.host_steps))
            outcome = run_real(prepare(scenario, "calibration"), self.backend)
            steps = {r.index: r for r in outcome.sim.steps}
            for span in outcome.sim.spans:
                if span.name == "host":
                    step = steps[span.step]
                    self.m.host.append({"kind": step.kind, "seqs": step.seqs, "tokens": step.tokens,
                                        "seconds": span.end_s - span.start_s})
            self.progress("host work", i + 1, len(batches))


def host_scenario(shape: Shape, seqs: int, dtype: str, head_dim: int, steps: int) -> dict[str, Any]:
    """The small scenario whose real passes time the per-step host work: two blocks of `shape`,
    one Engram layer (16 heads x 20,000 rows of 256 B), the cpython-stdlib trace, batches of `seqs`."""
    return {
        "name": f"calibration-host-{seqs}",
        "model": {
            "backbone": {"layers": 2, "hidden": shape.hidden, "intermediate": shape.intermediate, "vocab": shape.vocab,
                         "dtype": dtype, "attention": {"heads": shape.heads, "kv_heads": shape.kv_heads, "head_dim": shape.head_dim}},
            "engram": {"layers": [1], "max_ngram": 3, "heads": 8, "head_dim": head_dim, "rows_per_head": 20_000,
                       "dtype": dtype, "hc_mult": 1},
        },
        "hardware": "h100-pcie",
        "workload": {"trace": "cpython-stdlib", "requests": 2 * seqs, "prompt_len": {"dist": "uniform", "low": 32, "high": 128},
                     "output_len": {"dist": "uniform", "low": 8, "high": 32},
                     "batching": {"max_num_seqs": seqs, "max_num_batched_tokens": 1024}},
        "run": {"seed": 0, "baseline": False, "max_steps": steps},
    }


def run_blocks(standin: Any, layers: int, layout: Any) -> Any:
    """Every stand-in block in turn, the hidden states chained through, as a step runs them."""
    h = standin.input(layout)
    for block in range(layers):
        h = standin.block(block, h, layout)
    return h


def kernel_fields(kernels: list[Any]) -> dict[str, Any]:
    """A sample's cost-model work: the totals (for reading) and the kernels (what the fit prices)."""
    return {"flops": sum(k.flops for k in kernels), "bytes": sum(k.bytes for k in kernels),
            "kernels": [[k.flops, k.bytes, k.weights] for k in kernels]}


# ---- fit + profile -----------------------------------------------------------------------------------
def _col(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([float(r[key]) for r in rows], dtype=float)


def _memory_gib() -> float:
    from engramsim.backends.memory import host_memory

    return round(host_memory()[0] / GIB, 1)


def _link_name(backend: str) -> str:
    if backend == "cpu":
        return "host memcpy (the CPU backend's stand-in for the link)"
    with contextlib.suppress(Exception):
        from engramsim.backends.nvml import gpus

        dev = gpus()["devices"][0]
        return f"PCIe Gen{dev['pcie_generation']} x{dev['pcie_width']} (measured)"
    return "host-to-device link (measured)"


def fit_profile(m: Measurements, name: str, date: str | None = None) -> HardwareProfile:
    """The profile whose cost model best reproduces `m`, with the residual of every group."""
    from engramsim.scenario import Model
    from engramsim.simulator.cost import CostModel, Work

    backend = m.backend
    g_rows, g_rb, g_t = _col(m.gather, "rows"), _col(m.gather, "row_bytes"), _col(m.gather, "seconds")
    rate, g_overhead, dram = fit_gather(g_rows, g_rb, g_t, m.threads, m.stream_gbps * GB)
    latency, h2d = fit_latency_bandwidth(_col(m.copy, "bytes"), _col(m.copy, "seconds"))
    zc_rows, zc_rb, zc_t = _col(m.zero_copy, "rows"), _col(m.zero_copy, "row_bytes"), _col(m.zero_copy, "seconds")
    zc_latency, zc_bw, tx = fit_zero_copy(zc_rows, zc_rb, zc_t)
    gpu_rows = m.block + m.engram + m.head  # each group pays its own fixed cost: layer, Engram layer, step
    k = np.repeat(np.eye(3), [len(m.block), len(m.engram), len(m.head)], axis=0)
    roof_fit = fit_roofline([np.asarray(r["kernels"], dtype=float) for r in gpu_rows], _col(gpu_rows, "seconds"), k)
    flops_s, bytes_s, (layer_overhead, engram_overhead, head_overhead) = roof_fit.flops_s, roof_fit.bytes_s, roof_fit.overheads_s

    import torch

    if backend == "cuda":
        gpu_label = torch.cuda.get_device_name(0)
        hbm_gib = round(torch.cuda.mem_get_info()[1] / GIB, 1)
    else:
        gpu_label, hbm_gib = cpu_model(), _memory_gib()
    gpu = GPU(name=gpu_label, bf16_tflops=flops_s / TFLOP, hbm_gbps=bytes_s / GB, hbm_gib=hbm_gib, compute_efficiency=1.0,
              memory_efficiency=1.0, layer_overhead_us=layer_overhead / US, engram_overhead_us=engram_overhead / US, roofline_exponent=roof_fit.exponent,
              gemm_half_rows=roof_fit.half_rows, copy_engines=1)
    link = Link(name=_link_name(backend), h2d_gbps=h2d / GB, d2h_gbps=h2d / GB, dma_latency_us=latency / US,
                zero_copy_gbps=zc_bw / GB, zero_copy_latency_us=zc_latency / US, transaction_bytes=tx)
    host = Host(name=cpu_model(), dram_gbps=dram / GB, dram_gib=_memory_gib(), gather_rows_per_s=rate,
                gather_threads=m.threads, gather_overhead_us=g_overhead / US)
    flag = {"quick": " --quick", "full": ""}.get(m.budget, f" --budget {m.budget}")
    provenance = Provenance(kind="calibrated", source=f"engramsim calibrate --backend {backend}{flag}",
                            date=date or _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
                            host=machine_host(), gpu=gpu_label if backend == "cuda" else None, versions=versions(backend))
    host_s = _median([r["seconds"] for r in m.host]) if m.host else 0.0
    draft = HardwareProfile(name=name, gpu=gpu, link=link, host=host, step_overhead_us=(host_s + head_overhead) / US,
                            provenance=provenance)

    # Residuals, priced by the simulator's own CostModel on the fitted profile.
    cost = CostModel(Model(), draft)
    res: dict[str, Residual] = {}
    res["gather"] = residual([cost.gather_time(int(n), int(b)) for n, b in zip(g_rows, g_rb)], g_t)
    res["h2d"] = residual([cost.h2d_time(int(x)) for x in _col(m.copy, "bytes")], _col(m.copy, "seconds"))
    res["zero_copy"] = residual([cost.zero_copy_time(int(n), int(b)) for n, b in zip(zc_rows, zc_rb)], zc_t)

    def roof(rows: list[dict[str, Any]], extra: float) -> list[float]:
        return [cost.kernels_time([Work(*kernel) for kernel in r["kernels"]]) + extra for r in rows]

    res["block"] = residual(roof(m.block, cost.layer_overhead_s), _col(m.block, "seconds"))
    res["engram"] = residual(roof(m.engram, cost.engram_overhead_s), _col(m.engram, "seconds"))
    res["head"] = residual(roof(m.head, head_overhead), _col(m.head, "seconds"))
    if m.host:
        res["host"] = residual([host_s] * len(m.host), _col(m.host, "seconds"))
    if m.block_under_gather:
        res["block_under_gather"] = residual(roof(m.block_under_gather, cost.layer_overhead_s), _col(m.block_under_gather, "seconds"))
    if m.gather_alone:
        rows = m.gather_alone
        res["gather_alone"] = residual([cost.gather_time(int(r["rows"]), int(r["row_bytes"])) for r in rows], _col(rows, "seconds"))

    return draft.model_copy(update={"description": describe(m, draft, dram), "residuals": res})


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


def describe(m: Measurements, p: HardwareProfile, dram: float) -> str:
    block, gather = interference(m)
    what = "CPU" if m.backend == "cpu" else "GPU"
    parts = [
        f"Calibrated with `engramsim calibrate --backend {m.backend}` (budget {m.budget}, {m.wall_s:.0f} s) on {p.provenance.host}.",
        f"The {what} rates are achieved ones fitted on stand-in blocks: efficiencies are 1.0 and bf16_tflops / hbm_gbps hold "
        f"the achieved FLOP/s and bytes/s of the backbone's {'fp32' if m.backend == 'cpu' else 'bf16'} kernels (no datasheet).",
        "Gathers are timed as a waiting Engram layer sees them: after a stand-in decode step, handed to a waiting worker "
        "thread, until the computing thread sees them done (both threads' wake-ups included).",
        f"Copies are timed under service load (a compute thread running stand-in steps, {FETCH_GAP_S * 1e3:.0f} ms idle "
        f"before each), as the executor's fetch worker sees them.",
        f"Host streaming copy {m.stream_gbps:.1f} GB/s (read + write); the gather's fitted DRAM bound {dram / GB:.1f} GB/s.",
    ]
    if m.backend == "cpu":
        parts.append("On the CPU backend 'h2d' is a host memcpy into the landing buffer and 'zero-copy' an index_select straight into it.")
    if gather is not None:
        parts.append(f"Gathers timed that way take {gather:.2f}x as long as back to back on a quiet machine "
                     f"(residual gather_alone: this profile's error there).")
    if block is not None:
        parts.append(f"Interference, which the cost model does not have: blocks take {block:.2f}x as long while gathers loop "
                     f"on another thread (residual block_under_gather).")
    return " ".join(parts)


def profile_yaml(profile: HardwareProfile) -> str:
    import yaml

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
        cal.bench_gather(service=True)
        cal.bench_gather(service=False)
        cal.bench_stream()
        cal.bench_h2d()
        cal.bench_zero_copy()
        cal.bench_backbone()
        cal.bench_host()
    finally:
        cal._table = None
        cal.device.close()
    cal.m.wall_s = time.perf_counter() - t0
    return fit_profile(cal.m, name), cal.m

"""The fits: pure functions from timings to the cost model's parameters (numpy and scipy only, no
torch, so a samples file can be refitted anywhere).

Each fit evaluates engramsim/kernels.py's own formula over all samples at once, so the fitted
parameters mean exactly what the simulator's `RooflineCostModel` does with them. The non-linear
fits (gather, roofline) minimise the squared log of model / measured
(scipy.optimize.least_squares), the linear ones (latency + bandwidth, zero-copy) the squared
relative error: either way a 10 us gather counts as much as a 10 ms one, and the log makes a 2x
overestimate cost as much as a 2x underestimate.

Residuals: `rel_error_mean` is the signed mean of (model - measured) / measured (the bias),
`rel_error_p95` the 95th percentile of its absolute value (the band).

Decode attention's KV-cache reads get a rate of their own only where the samples determine it:
its ratio to the memory rate is fitted jointly with the rest, and kept when its standard error
(from the fit's Jacobian) is at most `ATTENTION_RSE_MAX`; otherwise those bytes are priced at the
memory rate, as a profile with a null `attention_efficiency` prices them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import OptimizeResult, least_squares, lsq_linear, nnls

from engramsim.hardware.profile import Residual
from engramsim.kernels import gather_row_penalty_s, gather_seconds, roofline, wire_bytes, zero_copy_seconds

RATE_CEILING = 3.0  # a fitted peak is at most this many times the highest rate any sample reached
EXPONENT_MAX = 32.0  # the roofline exponent's upper bound: (a^32 + b^32)^(1/32) is within 2.2% of max(a, b)
HALF_ROWS_MAX = 256.0  # a GEMM's half-performance length is at most this many rows
ATTENTION_EFFICIENCY_MIN = 1e-2  # decode attention reads at least 1 % of the memory rate (as the rates' own lower bound, 1/100)
# A fitted attention / memory ratio is kept when its standard error is at most 20 %: its 95 % band, exp(+-1.96 x 0.2), stays
# within a factor 1.5 either way; a looser one would write a number the samples do not support.
ATTENTION_RSE_MAX = 0.2
KERNEL_COLUMNS = 5  # flops, bytes, weights, grouped weights, attention bytes (`measurements.kernel_fields`)
ATTENTION = 5  # where log(attention rate / memory rate) sits among the joint roofline fit's parameters


def rel_errors(predicted: Sequence[float] | np.ndarray, measured: Sequence[float] | np.ndarray) -> np.ndarray:
    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    return (p - m) / m


def residual(predicted: Sequence[float] | np.ndarray, measured: Sequence[float] | np.ndarray) -> Residual:
    """Signed mean and 95th-percentile absolute relative error of a model against its samples."""
    err = rel_errors(predicted, measured)
    return Residual(samples=int(err.size), rel_error_mean=float(err.mean()),
                    rel_error_p95=float(np.percentile(np.abs(err), 95)))


def fit_latency_bandwidth(nbytes: Sequence[float] | np.ndarray, seconds: Sequence[float] | np.ndarray) -> tuple[float, float]:
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


def fit_host(seqs: Sequence[float] | np.ndarray, seconds: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """(a s, b s per sequence) of the per-step host time t = a + b * sequences, a, b >= 0.

    Host spans are heavy-tailed (a descheduled thread, a page fault): the fit minimises a soft-L1
    loss of the relative error, quadratic up to 10 % and linear beyond, so a few slow steps do
    not drag the line. Samples of one batch size cannot tell a from b: all of it is a.
    """
    s, t = np.asarray(seqs, dtype=float), np.asarray(seconds, dtype=float)
    t_us = float(np.median(t)) * 1e6
    if np.ptp(s) == 0:
        return t_us * 1e-6, 0.0
    sol = least_squares(lambda p: (p[0] + p[1] * s) * 1e-6 / t - 1.0, np.array([t_us, 0.0]), bounds=([0.0, 0.0], [np.inf, np.inf]),
                        loss="soft_l1", f_scale=0.1, x_scale=np.array([t_us, t_us / float(np.max(s))]))
    return float(sol.x[0]) * 1e-6, float(sol.x[1]) * 1e-6


def fit_gather(rows: Sequence[float] | np.ndarray, row_bytes: Sequence[float] | np.ndarray,
               seconds: Sequence[float] | np.ndarray, threads: int, dram_max: float) -> tuple[float, float, float]:
    """(rows/s per thread, overhead s, DRAM bytes/s) of `kernels.gather_seconds`, least squared
    log error.

    The DRAM bound is capped at `dram_max` (the streaming-copy bandwidth); where no sample is
    bandwidth-bound the fit leaves it there.
    """
    n, b, t = (np.asarray(v, dtype=float) for v in (rows, row_bytes, seconds))

    def res(p: np.ndarray) -> np.ndarray:
        return np.log(gather_seconds(n, b, threads, math.exp(p[0]), math.exp(p[1]), p[2] * 1e-6) / t)

    best = None
    rate0 = float(np.median(n / t)) / threads
    rate_max = RATE_CEILING * float(np.max(n / t)) / threads
    for rate_guess in (rate0, rate0 * 2, rate0 / 2):
        for dram_guess in (dram_max * 0.999, dram_max * 0.3):
            p0 = np.array([math.log(min(rate_guess, rate_max * 0.99)), math.log(dram_guess), float(np.min(t)) * 0.2e6])
            bounds = ([-np.inf, math.log(dram_max * 1e-3), 0.0], [math.log(rate_max), math.log(dram_max), np.inf])
            sol = least_squares(res, p0, bounds=bounds, x_scale=[1.0, 1.0, max(1.0, p0[2])])
            if best is None or sol.cost < best.cost:
                best = sol
    assert best is not None
    return math.exp(best.x[0]), best.x[2] * 1e-6, math.exp(best.x[1])


STLB_CANDIDATES = (512, 1024, 1536, 2048, 3072, 4096)  # second-level TLB sizes of x86 server cores (the fit picks one)


MIN_BASE_SHARE = 0.01
"""The least a row that hits everywhere costs in `fit_gather_size`, as a share of the fastest row measured."""


@dataclass(frozen=True)
class GatherSizeFit:
    """`kernels.gather_row_penalty_s`'s per-miss costs (seconds) and STLB entries, fitted to the
    per-row time of one gather thread against the table's size and page size."""

    base_s: float  # a row whose data, page and page-table entry all hit
    data_miss_s: float
    tlb_miss_s: float
    pte_miss_s: float
    stlb_entries: int

    def row_seconds(self, table_bytes: np.ndarray, huge_pages: np.ndarray, l2_bytes: float, llc_bytes: float) -> np.ndarray:
        return self.base_s + np.array([gather_row_penalty_s(float(b), bool(h), l2_bytes, llc_bytes, self.stlb_entries, self.data_miss_s,
                                                            self.tlb_miss_s, self.pte_miss_s) for b, h in zip(table_bytes, huge_pages)])


def fit_gather_size(table_bytes: Sequence[float] | np.ndarray, huge_pages: Sequence[bool] | np.ndarray,
                    row_seconds: Sequence[float] | np.ndarray, l2_bytes: float, llc_bytes: float) -> GatherSizeFit:
    """Non-negative least squares of the per-row time (relative: each sample weighted by 1 / its
    time) on [1, data misses, STLB misses, page-table misses] for each STLB size of
    `STLB_CANDIDATES`; the candidate with the smallest residual wins. A row that hits everywhere
    costs at least `MIN_BASE_SHARE` of the fastest row measured: noisy samples that the misses
    explain alone (NNLS then puts the base at 0) leave a base the samples cannot resolve, not a
    row that costs nothing."""
    b, h, t = np.asarray(table_bytes, dtype=float), np.asarray(huge_pages, dtype=bool), np.asarray(row_seconds, dtype=float)
    best: tuple[float, GatherSizeFit] | None = None
    for entries in STLB_CANDIDATES:
        columns = [gather_row_penalty_s(float(x), bool(y), l2_bytes, llc_bytes, entries, *unit) for x, y in zip(b, h)
                   for unit in ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))]
        design = np.column_stack([np.ones_like(t), np.array(columns).reshape(t.size, 3)])
        coef, norm = nnls(design / t[:, None], np.ones_like(t))
        if best is None or norm < best[0]:
            best = (norm, GatherSizeFit(float(coef[0]), float(coef[1]), float(coef[2]), float(coef[3]), stlb_entries=entries))
    assert best is not None
    fit = best[1]
    floor = MIN_BASE_SHARE * float(t.min())
    return fit if fit.base_s >= floor else replace(fit, base_s=floor)


def fit_zero_copy(rows: Sequence[float] | np.ndarray, row_bytes: Sequence[float] | np.ndarray,
                  seconds: Sequence[float] | np.ndarray, transactions: Sequence[int] = (32, 64, 128)) -> tuple[float, float, int]:
    """(latency s, bytes/s, transaction bytes) of `kernels.zero_copy_seconds`.

    The transaction size is the candidate whose fit has the least squared relative error (ties:
    the larger, the simulator's default granularity being a GPU's 128 B read).
    """
    n, b, t = (np.asarray(v, dtype=float) for v in (rows, row_bytes, seconds))
    best: tuple[float, float, float, int] | None = None
    for tx in sorted(transactions, reverse=True):
        latency, bw = fit_latency_bandwidth(wire_bytes(n, b, tx), t)
        cost = float(np.sum((zero_copy_seconds(n, b, latency, bw, tx) - t) ** 2 / t ** 2))
        if best is None or cost < best[0] * (1 - 1e-9):
            best = (cost, latency, bw, tx)
    assert best is not None
    return best[1], best[2], best[3]


def kernel_rows(kernels: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each sample's kernels as an array [kernels, (flops, bytes, weights, grouped weights, attention
    bytes)] (`measurements.kernel_fields`); rows from samples files written before the last columns
    were recorded (three: no grouped weights, four: no attention bytes) have none of them."""
    rows = [np.asarray(k, dtype=float) for k in kernels]
    return [np.pad(r, ((0, 0), (0, KERNEL_COLUMNS - r.shape[1]))) for r in (r.reshape(len(r), -1) for r in rows)]


def kernel_times(kernels: Sequence[np.ndarray], flops_s: float, bytes_s: float, exponent: float | None,
                 half_rows: float = 0.0, grouped_half_rows: float | None = None, attention_bytes_s: float | None = None) -> np.ndarray:
    """Seconds of each sample's kernels (`kernel_rows`), each priced by `kernels.roofline`, summed
    per sample."""
    arrays = kernel_rows(kernels)
    stacked = np.concatenate(arrays)
    owner = np.repeat(np.arange(len(arrays)), [a.shape[0] for a in arrays])
    per_kernel = roofline(stacked[:, 0], stacked[:, 1], stacked[:, 2], flops_s, bytes_s, exponent, half_rows,
                          attention_bytes=stacked[:, 4], attention_bytes_s=attention_bytes_s,
                          grouped=stacked[:, 3], grouped_half_rows=grouped_half_rows)
    return np.bincount(owner, weights=per_kernel, minlength=len(arrays))


def fixed_costs(group_sizes: Sequence[int], kernel_counts: Sequence[int]) -> np.ndarray:
    """The fixed-cost matrix of samples laid out group after group (`group_sizes`): one column per
    group (its own fixed cost), then a column of each sample's kernel count (the fixed cost per
    kernel) when it adds information. Where every group's samples run the same number of kernels
    the per-kernel cost is indistinguishable from the groups' own: the column is left out (no
    per-kernel cost is fitted)."""
    groups = np.repeat(np.eye(len(group_sizes)), group_sizes, axis=0)
    with_counts = np.column_stack([groups, np.asarray(kernel_counts, dtype=float)])
    return with_counts if np.linalg.matrix_rank(with_counts) > np.linalg.matrix_rank(groups) else groups


@dataclass(frozen=True)
class RooflineFit:
    flops_s: float
    bytes_s: float
    exponent: float
    half_rows: float
    grouped_half_rows: float | None  # None: no sample has grouped GEMMs to tell it
    overheads_s: np.ndarray
    attention_bytes_s: float | None  # decode attention's KV-read rate; None: those bytes move at bytes_s
    attention_rse: float | None  # standard error of log(attention / memory rate); None: no sample reads a KV cache in decode

    def kernel_times(self, kernels: Sequence[np.ndarray]) -> np.ndarray:
        """Seconds of each sample's kernels at the fitted rates (no fixed cost)."""
        return kernel_times(kernels, self.flops_s, self.bytes_s, self.exponent, self.half_rows, self.grouped_half_rows,
                            self.attention_bytes_s)


def log_parameter_error(sol: OptimizeResult, index: int) -> float:
    """Standard error of parameter `index` of a least-squares solution, from its Jacobian: the
    covariance s^2 (J^T J)^-1 with s^2 the residuals' variance, parameters at a bound held fixed
    (columns normalised first, so parameters in microseconds and in logs invert alike)."""
    free = sol.active_mask == 0
    free[index] = True
    jac = sol.jac[:, free]
    dof = jac.shape[0] - jac.shape[1]
    if dof <= 0:
        return math.inf
    norms = np.linalg.norm(jac, axis=0)
    norms[norms == 0] = 1.0
    cov = np.linalg.pinv((jac / norms).T @ (jac / norms)) / np.outer(norms, norms) * (2.0 * sol.cost / dof)
    at = int(free[:index].sum())  # the parameter's column among the free ones
    return float(math.sqrt(max(0.0, cov[at, at])))


def fit_roofline(kernels: Sequence[np.ndarray], seconds: Sequence[float] | np.ndarray,
                 overheads: np.ndarray | Sequence[Sequence[float]] | None = None) -> RooflineFit:
    """The rates, exponent n, GEMM half-rows (plain and grouped), decode attention's KV-read rate
    and fixed costs of t = sum over the sample's kernels of `kernels.roofline` + K . overheads,
    least squared log error.

    `kernels` holds one array per sample (`kernel_rows`). `overheads` is K, one row per sample and
    one column per fixed cost (e.g. [1, 0] for a block, which pays one layer overhead, [0, 1] for
    the head, which pays its own fixed cost); default one column of ones. The exponent runs from 1
    (compute and memory time add up) to EXPONENT_MAX (practically their max), the half-rows from 0
    to HALF_ROWS_MAX. Each peak is bounded by `RATE_CEILING` x the highest rate a sample reached.
    The problem is not convex: several starts, the best kept. Where samples carry attention bytes,
    their rate is a parameter too, from `ATTENTION_EFFICIENCY_MIN` x the memory rate to the memory
    rate, kept if its ratio to the memory rate has a standard error of at most `ATTENTION_RSE_MAX`;
    otherwise the fit is redone with those bytes at the memory rate.
    """
    t = np.asarray(seconds, dtype=float)
    arrays = kernel_rows(kernels)
    f = np.array([a[:, 0].sum() for a in arrays])
    by = np.array([a[:, 1].sum() for a in arrays])
    grouped = any(a[:, 3].any() for a in arrays)
    k = np.ones((t.size, 1)) if overheads is None else np.asarray(overheads, dtype=float).reshape(t.size, -1)
    m = k.shape[1]

    def res(p: np.ndarray) -> np.ndarray:
        """Log errors at [log rates, log(n - 1), half-rows, overheads], the attention ratio's log at ATTENTION when fitted."""
        attention = p.size > ATTENTION + m
        attention_s = math.exp(p[1] + p[ATTENTION]) if attention else None
        pred = kernel_times(arrays, math.exp(p[0]), math.exp(p[1]), 1.0 + math.exp(p[2]), p[3], p[4], attention_s)
        return np.log((pred + k @ p[ATTENTION + int(attention) :] * 1e-6) / t)

    # No extrapolation: a rate may not exceed RATE_CEILING x the highest one any sample reached
    # (where no sample is bound by it, e.g. none is memory-bound, the fit would run it to infinity).
    f_hi, b_hi = float(np.max(f / t)), float(np.max(by / t))
    n_lo, n_hi = math.log(1e-3), math.log(EXPONENT_MAX - 1.0)
    lower = np.r_[math.log(f_hi / 100), math.log(b_hi / 100), n_lo, 0.0, 0.0, np.zeros(m)]
    upper = np.r_[math.log(f_hi * RATE_CEILING), math.log(b_hi * RATE_CEILING), n_hi, HALF_ROWS_MAX, HALF_ROWS_MAX, np.full(m, np.inf)]
    o0 = float(np.min(t)) * 1e6
    x_scale = np.r_[1.0, 1.0, 1.0, 8.0, 8.0, np.full(m, max(1.0, o0))]

    def solve(attention: bool) -> OptimizeResult:
        """The best of several starts; with the attention ratio (starting at 1/2) when `attention`."""
        lo, hi, scale = lower, upper, x_scale
        if attention:
            lo, hi = np.insert(lower, ATTENTION, math.log(ATTENTION_EFFICIENCY_MIN)), np.insert(upper, ATTENTION, 0.0)
            scale = np.insert(x_scale, ATTENTION, 1.0)
        best = None
        for fs in (1.0, RATE_CEILING * 0.99):
            for bs in (0.3, 1.0, RATE_CEILING * 0.99):
                for n0 in (n_lo + 0.1, n_hi - 0.1):
                    for h0 in (0.0, 16.0):
                        p0 = np.concatenate([[math.log(f_hi * fs), math.log(b_hi * bs), n0, h0, h0], [math.log(0.5)] if attention else [],
                                             np.full(m, o0 * 0.1)])
                        sol = least_squares(res, p0, bounds=(lo, hi), x_scale=scale)
                        if best is None or sol.cost < best.cost:
                            best = sol
        assert best is not None
        return best

    rse, attention_s = None, None
    if any(a[:, 4].any() for a in arrays):
        joint = solve(attention=True)
        rse = log_parameter_error(joint, ATTENTION)
        if rse <= ATTENTION_RSE_MAX:
            x, attention_s = np.delete(joint.x, ATTENTION), math.exp(joint.x[1] + joint.x[ATTENTION])
    if attention_s is None:
        x = solve(attention=False).x
    return RooflineFit(math.exp(x[0]), math.exp(x[1]), 1.0 + math.exp(x[2]), float(x[3]), float(x[4]) if grouped else None,
                       x[5:] * 1e-6, attention_s, rse)

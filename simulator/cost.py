"""The cost model: seconds for each piece of a step, from the model's shapes and a hardware profile.

`CostModel` is what the engine asks; `RooflineCostModel` is the default answer, pricing the
kernels of engramsim/kernels.py (the inventory the calibration fits on) with the profile's rates.
GPU work is priced kernel by kernel with `kernels.roofline`: each kernel takes
`max(flops / (peak * compute_efficiency), bytes / (hbm * memory_efficiency))`, or the profile's
softer `(tc^n + tm^n)^(1/n)` (`gpu.roofline_exponent`), plus a fixed cost per kernel
(`gpu.kernel_overhead_us`); a block is the sum of its kernels plus a fixed per-block overhead.
Decode attention's KV-cache reads move at `hbm * attention_efficiency` (null: memory_efficiency). A
GEMM's compute follows its shape: with `gpu.sms` set, its output tiles (`gemm_tile_m` x
`gemm_tile_n`) run in whole waves over the SMs, a launch of fewer tiles than SMs splitting k
(`kernels.wave_flops`); without, GEMMs over few rows fall short of the peak by `gpu.gemm_half_rows`
(Hockney; grouped launches, such as routed experts, by `gpu.grouped_gemm_half_rows`; the wave model
replaces both when `sms` is set). The host pays `step_overhead_us` per step plus
`step_overhead_per_seq_us` per sequence. Fetches are priced by small latency + bandwidth formulas
for the host's gather threads, the DMA copy engines and GPU zero-copy reads; rows in CXL memory
by its load latency over the loads in flight against the expanders' bandwidth; rows on NVMe by
the 4 KiB pages they touch, at the drives' IOPS (at the reader's queue depth) or bandwidth.

Units: GB/s = 1e9 B/s, TFLOP/s = 1e12 FLOP/s, `*_us` fields are microseconds; every method
returns seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, overload, runtime_checkable

import numpy as np

from engramsim import kernels
from engramsim.hardware.profile import CXL, HardwareProfile, NVMe
from engramsim.kernels import BlockKind, StepBatch, StepLike, Work
from engramsim.scenario import Model
from engramsim.schedule import Replay, Served
from engramsim.steps import Step

GB = 1e9
TFLOP = 1e12
US = 1e-6
NS = 1e-9
PRICES_KEPT = 8
"""Prices a schedule keeps (`use_schedule_prices`), by rates: a sweep's sampled profiles each price it anew."""
KERNEL_MEMO = 4096
"""Kernel prices a cost model remembers (`RooflineCostModel.roofline`): a run's steps repeat a few
shapes (graph-padded decode batches), so most kernels of a step were priced before; bounded, so
memory does not grow with the steps."""
ZERO_COPY_GATHER_SMS = kernels.ZERO_COPY_GATHER_SMS


@dataclass(frozen=True)
class StepPrices:
    """Seconds of the compute segments of every step of a schedule, priced at once
    (`RooflineCostModel.price`): by step index, one block of each kind, the host work, the head,
    and each Engram layer's work at the rows that step looks up (by (step, rows))."""

    host: list[float]
    blocks: dict[BlockKind, list[float]]
    head: list[float]
    engram: dict[tuple[int, int], float]


@runtime_checkable
class CostModel(Protocol):
    """Seconds of every segment the engine schedules: another pricing (a learned model, a
    per-kernel table) plugs into the simulator by implementing these methods."""

    def host_time(self, step: Step) -> float:
        """Per-step host work, paid before block 0 and before the step's first fetch is issued."""
        ...

    def blocks_time(self, step: Step, start: int, stop: int) -> float:
        """Blocks start..stop-1, back to back."""
        ...

    def engram_time(self, step: Step, rows: int) -> float:
        """One Engram layer's GPU work once its `rows` unique rows are on the device."""
        ...

    def head_time(self, step: Step) -> float:
        """Embedding, final norm, LM head and sampling."""
        ...

    def gather_time(self, rows: int, row_bytes: int) -> float:
        """Host threads packing `rows` rows into pinned staging."""
        ...

    def gather_overhead(self) -> float:
        """The fixed part of one gather (dispatch to its threads), which row latency does not stretch."""
        ...

    def gather_latency_time(self, rows: int) -> float:
        """The part of a gather its rows' latency sets (rows over the threads' row rate), beside its DRAM time."""
        ...

    def h2d_latency(self) -> float:
        """Fixed cost of one DMA copy, paid before it takes the link."""
        ...

    def h2d_wire_time(self, nbytes: int) -> float:
        """Seconds `nbytes` occupy the link in a DMA copy."""
        ...

    def zero_copy_latency(self) -> float:
        """Launch + first round trip of a GPU kernel reading pinned host memory."""
        ...

    def zero_copy_wire_bytes(self, rows: int, row_bytes: int) -> int:
        """Bytes a zero-copy read of `rows` moves: each row in whole transactions."""
        ...

    def zero_copy_wire_time(self, rows: int, row_bytes: int) -> float:
        """Seconds a zero-copy read of `rows` rows keeps the link busy."""
        ...

    def cxl_gather_time(self, rows: int, row_bytes: int) -> float:
        """Host threads packing `rows` rows from CXL memory into pinned staging."""
        ...

    def nvme_latency(self) -> float:
        """The first page read's latency, paid before the drives stream."""
        ...

    def nvme_stream_time(self, nbytes: int) -> float:
        """Seconds the drives take to read the random pages of `nbytes` after the first one's latency."""
        ...

    def cxl_latency(self) -> float:
        """What reading CXL memory adds to a transfer's first round trip."""
        ...

    def cxl_wire_time(self, nbytes: int) -> float:
        """Seconds the expanders need to serve `nbytes` (a transfer from CXL memory takes at least this)."""
        ...


class RooflineCostModel:
    """Prices steps of `model` on `profile`. Cheap to call per step: block times are cached for
    the step being priced (blocks of one kind cost the same within a step), and each kernel's
    price is remembered (`KERNEL_MEMO`). Its rates are read once: change the profile, build another."""

    def __init__(self, model: Model, profile: HardwareProfile) -> None:
        self.model = model
        self.profile = profile
        gpu = profile.gpu
        self.flops_per_s = gpu.bf16_tflops * TFLOP * gpu.compute_efficiency
        self.hbm_bytes_per_s = gpu.hbm_gbps * GB * gpu.memory_efficiency
        self.attention_bytes_per_s = None if gpu.attention_efficiency is None else gpu.hbm_gbps * GB * gpu.attention_efficiency
        self.layer_overhead_s = gpu.layer_overhead_us * US
        self.kernel_overhead_s = gpu.kernel_overhead_us * US
        self.engram_overhead_s = self.layer_overhead_s if gpu.engram_overhead_us is None else gpu.engram_overhead_us * US
        self.exponent = gpu.roofline_exponent
        self.half_rows = gpu.gemm_half_rows
        self.grouped_half_rows = gpu.grouped_gemm_half_rows
        self.sms, self.tile_m, self.tile_n = gpu.sms, gpu.gemm_tile_m, gpu.gemm_tile_n
        self._cached_step: Step | None = None
        self._cache: dict[BlockKind, float] = {}
        self._priced: dict[Work, float] = {}  # kernel -> seconds, at most KERNEL_MEMO of them
        engram = model.engram
        self.table_bytes = sum(engram.rows_per_order) * engram.heads * engram.row_bytes  # one Engram layer's table, as configured
        self.gather_rows_per_s = 1.0 / profile.host.gather_row_s(self.table_bytes)
        self.prices: StepPrices | None = None  # the steps' prices, for a pass replaying the schedule they were priced for

    @property
    def rates(self) -> str:
        """Everything the compute prices depend on (the model, the GPU, the host's per-step work):
        passes of equal `rates` over the same steps pay the same seconds."""
        profile = self.profile
        return f"{self.model.model_dump_json()}|{profile.gpu.model_dump_json()}|{profile.step_overhead_us}|{profile.step_overhead_per_seq_us}"

    def price(self, steps: list[Step], engram_rows: dict[int, np.ndarray]) -> StepPrices | None:
        """Every step's compute segments priced at once on a `kernels.StepBatch`: element for element
        the floats `host_time`, `blocks_time`, `head_time` and `engram_time` give each step alone
        (tests/test_schedule.py), with each Engram layer's work at `engram_rows[layer][i]` rows for step
        i. Steps of MLA models are priced in groups that all have decode sequences or not, and
        prefill tokens or not (the kernels differ). None where the profile's roofline exponent
        asks for a float power, which numpy may round apart from Python's."""
        if self.exponent is not None or not steps:
            return None
        batch = StepBatch.of(steps)
        seqs = batch.seqs
        groups = np.asarray(seqs.decode > 0, dtype=np.int64) * 2 + np.asarray(seqs.multi_tokens > 0, dtype=np.int64)
        kinds = {kernels.block_kind(self.model, block): block for block in range(self.model.backbone.layers)}
        blocks = {kind: np.empty(len(steps)) for kind in kinds}
        head = np.empty(len(steps))
        for group in np.unique(groups):
            at = np.flatnonzero(groups == group)
            some = batch.take(at)
            for kind, block in kinds.items():
                blocks[kind][at] = self._block_seconds(some, block)
            head[at] = self._head_seconds(some)
        engram: dict[tuple[int, int], float] = {}
        for rows in engram_rows.values():
            seconds = self._engram_seconds(batch, rows)
            engram.update(zip(zip(range(len(steps)), rows.tolist()), np.broadcast_to(seconds, rows.shape).tolist()))
        host: Any = self._host_seconds(batch)
        return StepPrices(host.tolist(), {kind: values.tolist() for kind, values in blocks.items()}, head.tolist(), engram)

    # ---- GPU ------------------------------------------------------------------------------------
    def roofline(self, work: Work) -> float:
        """Seconds of one kernel at the profile's achieved rates (`kernels.roofline`), its GEMMs
        wave-quantised when the profile knows the SMs, else slowed by the Hockney half-rows (grouped
        launches by their own). Remembered by kernel (the same `Work`, the same seconds)."""
        try:
            seconds = self._priced.get(work)
        except TypeError:  # a kernel of arrays (a fit's samples) is priced, not remembered
            return self._roofline(work)
        if seconds is None:
            if len(self._priced) >= KERNEL_MEMO:
                self._priced.clear()
            seconds = self._priced[work] = self._roofline(work)
        return seconds

    def _roofline(self, work: Work) -> float:
        """A kernel's price; a `StepBatch`'s kernel (its fields arrays) gets one price per step."""
        fields: Any = work
        if self.sms is None:
            flops, half_rows, grouped = fields.flops, self.half_rows, kernels.grouped_weights(work)
        else:
            flops, half_rows, grouped = kernels.wave_flops(work, self.sms, self.tile_m, self.tile_n), 0.0, 0.0
        return kernels.roofline(flops, fields.bytes, fields.weights, self.flops_per_s, self.hbm_bytes_per_s, self.exponent,
                                half_rows, fields.attention_bytes, self.attention_bytes_per_s, grouped, self.grouped_half_rows)

    def kernels_time(self, works: list[Work]) -> float:
        """Seconds of kernels run one after another, each its roofline + the profile's kernel overhead."""
        seconds: Any = 0.0  # one price, or one per step of a `StepBatch`, added kernel by kernel (not `sum`, which compensates floats on Python 3.12)
        for work in works:
            seconds = seconds + self.roofline(work)
        return seconds + self.kernel_overhead_s * len(works)

    def block_time(self, step: Step, block: int) -> float:
        """Seconds of one block: its kernels' times + the profile's layer overhead."""
        if self.prices is not None:
            return self.prices.blocks[kernels.block_kind(self.model, block)][step.index]
        if self._cached_step is not step:
            self._cached_step, self._cache = step, {}
        kind = kernels.block_kind(self.model, block)
        if kind not in self._cache:
            self._cache[kind] = self._block_seconds(step, block)
        return self._cache[kind]

    def blocks_time(self, step: Step, start: int, stop: int) -> float:
        """Seconds of blocks start..stop-1, back to back (two roofline evaluations per step at most)."""
        seconds = 0.0
        for count, block in self._runs(start, stop):
            seconds += count * self.block_time(step, block)
        return seconds

    def priced_blocks(self, start: int, stop: int) -> list[float]:
        """`blocks_time` of blocks start..stop-1 in every step `prices` holds, by step index."""
        assert self.prices is not None
        seconds = np.zeros(len(self.prices.host))
        for count, block in self._runs(start, stop):
            seconds = seconds + count * np.asarray(self.prices.blocks[kernels.block_kind(self.model, block)])
        return seconds.tolist()

    def _runs(self, start: int, stop: int) -> list[tuple[int, int]]:
        """Blocks start..stop-1 as runs of one kind: (blocks, the first of them) each."""
        layers = self.model.backbone.layers
        if not 0 <= start <= stop <= layers:
            raise ValueError(f"block range {start}..{stop} is outside 0..{layers}")
        moe = self.model.backbone.moe
        split = min(max(moe.dense_layers, start), stop) if moe is not None else stop
        return [(count, first) for count, first in ((split - start, start), (stop - split, split)) if count > 0]

    def engram_time(self, step: Step, rows: int) -> float:
        """Seconds of the Engram layer's own GPU work (its kernels + the Engram layer overhead)."""
        if self.prices is not None and (step.index, rows) in self.prices.engram:
            return self.prices.engram[(step.index, rows)]
        return self._engram_seconds(step, rows)

    def head_time(self, step: Step) -> float:
        if self.prices is not None:
            return self.prices.head[step.index]
        return self._head_seconds(step)

    def host_time(self, step: Step) -> float:
        """The profile's host cost (scheduling, planning, input layout, launches): a fixed part per
        step plus a part per sequence in it."""
        if self.prices is not None:
            return self.prices.host[step.index]
        return self._host_seconds(step)

    # ---- the formulas, for one step or a `StepBatch` (one price per step) -------------------------
    def _block_seconds(self, step: StepLike, block: int) -> Any:
        return self.kernels_time(kernels.block_kernels(self.model, step, block)) + self.layer_overhead_s

    def _engram_seconds(self, step: StepLike, rows: int | np.ndarray) -> Any:
        return self.kernels_time(kernels.engram_kernels(self.model, step, rows)) + self.engram_overhead_s

    def _head_seconds(self, step: StepLike) -> Any:
        return self.kernels_time(kernels.head_kernels(self.model, step))

    def _host_seconds(self, step: StepLike) -> Any:
        return (self.profile.step_overhead_us + self.profile.step_overhead_per_seq_us * step.num_seqs) * US

    # ---- fetches ----------------------------------------------------------------------------------
    @overload
    def gather_time(self, rows: int, row_bytes: int) -> float: ...

    @overload
    def gather_time(self, rows: np.ndarray, row_bytes: int) -> np.ndarray: ...

    def gather_time(self, rows: int | np.ndarray, row_bytes: int) -> float | np.ndarray:
        """`kernels.gather_seconds` on the profile's host, at the rate its gather reaches on one
        Engram layer's table (`Host.gather_row_s`); 0 rows cost nothing. Rows may be an array (one gather each)."""
        host = self.profile.host
        counted: Any = rows  # one count or an array: gather_seconds prices either
        each = kernels.gather_seconds(counted, row_bytes, host.gather_threads, self.gather_rows_per_s, host.dram_gbps * GB,
                                      self.gather_overhead())
        return np.where(rows > 0, each, 0.0) if isinstance(rows, np.ndarray) else each if rows > 0 else 0.0

    def gather_overhead(self) -> float:
        return self.profile.host.gather_overhead_us * US

    def gather_latency_time(self, rows: int) -> float:
        return max(0, rows) / (self.profile.host.gather_threads * self.gather_rows_per_s)

    def h2d_latency(self) -> float:
        return self.profile.link.dma_latency_us * US

    @overload
    def h2d_wire_time(self, nbytes: int) -> float: ...

    @overload
    def h2d_wire_time(self, nbytes: np.ndarray) -> np.ndarray: ...

    def h2d_wire_time(self, nbytes: int | np.ndarray) -> float | np.ndarray:
        return _at_least_0(nbytes) / (self.profile.link.h2d_gbps * GB)

    def h2d_time(self, nbytes: int) -> float:
        """One DMA copy (`kernels.dma_seconds`); 0 bytes cost nothing."""
        if nbytes <= 0:
            return 0.0
        return kernels.dma_seconds(nbytes, self.h2d_latency(), self.profile.link.h2d_gbps * GB)

    def zero_copy_latency(self) -> float:
        return self.profile.link.zero_copy_latency_us * US

    @overload
    def zero_copy_wire_bytes(self, rows: int, row_bytes: int) -> int: ...

    @overload
    def zero_copy_wire_bytes(self, rows: np.ndarray, row_bytes: int) -> np.ndarray: ...

    def zero_copy_wire_bytes(self, rows: int | np.ndarray, row_bytes: int) -> int | np.ndarray:
        counted: Any = _at_least_0(rows)
        moved = kernels.wire_bytes(counted, row_bytes, self.profile.link.transaction_bytes)
        return moved if isinstance(moved, np.ndarray) else int(moved)

    @overload
    def zero_copy_wire_time(self, rows: int, row_bytes: int) -> float: ...

    @overload
    def zero_copy_wire_time(self, rows: np.ndarray, row_bytes: int) -> np.ndarray: ...

    def zero_copy_wire_time(self, rows: int | np.ndarray, row_bytes: int) -> float | np.ndarray:
        return self.zero_copy_wire_bytes(rows, row_bytes) / (self.profile.link.zero_copy_gbps * GB)

    def zero_copy_time(self, rows: int, row_bytes: int) -> float:
        """One zero-copy read (`kernels.zero_copy_seconds`); 0 rows cost nothing."""
        if rows <= 0:
            return 0.0
        link = self.profile.link
        return kernels.zero_copy_seconds(rows, row_bytes, self.zero_copy_latency(), link.zero_copy_gbps * GB,
                                         link.transaction_bytes)

    # ---- tiers beyond host DRAM -------------------------------------------------------------------
    def _cxl(self) -> CXL:
        cxl = self.profile.cxl
        if cxl is None:
            raise ValueError(f"profile {self.profile.name!r} has no CXL tier (hardware.cxl)")
        return cxl

    def _nvme(self) -> NVMe:
        nvme = self.profile.nvme
        if nvme is None:
            raise ValueError(f"profile {self.profile.name!r} has no NVMe tier (hardware.nvme)")
        return nvme

    def cxl_gather_time(self, rows: int, row_bytes: int) -> float:
        """`kernels.cxl_gather_seconds` on the profile's host threads and CXL tier; 0 rows cost nothing."""
        if rows <= 0:
            return 0.0
        cxl, host = self._cxl(), self.profile.host
        return kernels.cxl_gather_seconds(rows, row_bytes, host.gather_threads, cxl.rows_in_flight(host.gather_rows_per_s),
                                          cxl.load_latency_ns * NS, cxl.devices * cxl.gbps * GB, self.gather_overhead())

    def cxl_latency(self) -> float:
        return self._cxl().load_latency_ns * NS

    def cxl_wire_time(self, nbytes: int) -> float:
        cxl = self._cxl()
        return max(0, nbytes) / (cxl.devices * cxl.gbps * GB)

    def nvme_latency(self) -> float:
        return self._nvme().read_latency_us * US

    def nvme_stream_time(self, nbytes: int) -> float:
        """`kernels.nvme_read_seconds` less its latency, for the pages of `nbytes` (whole pages):
        the pages at the slower of the drives' IOPS at the reader's queue depth and their bandwidth."""
        nvme = self._nvme()
        iops = kernels.nvme_iops(nvme.read_iops, nvme.queue_depth, nvme.read_latency_us * US)
        pages = -(-max(0, nbytes) // nvme.page_bytes)
        return kernels.nvme_read_seconds(pages, nvme.page_bytes, nvme.drives, iops, nvme.read_gbps * GB, 0.0)

    def nvme_read_time(self, nbytes: int) -> float:
        """One batch of page reads of `nbytes` (`kernels.nvme_read_seconds`); 0 bytes cost nothing."""
        return 0.0 if nbytes <= 0 else self.nvme_latency() + self.nvme_stream_time(nbytes)

    def zero_copy_slowdown(self) -> float:
        """The profile's `gpu.zero_copy_slowdown`, else sms / (sms - ZERO_COPY_GATHER_SMS), else 1."""
        gpu = self.profile.gpu
        if gpu.zero_copy_slowdown is not None:
            return gpu.zero_copy_slowdown
        return kernels.sm_share_slowdown(gpu.sms, ZERO_COPY_GATHER_SMS)


def _at_least_0(count: int | np.ndarray) -> int | np.ndarray:
    """`count`, or 0 where it is negative (element-wise for an array of fetches' counts)."""
    return np.maximum(0, count) if isinstance(count, np.ndarray) else max(0, count)


def use_schedule_prices(cost: CostModel, scheduler: Served, layers: list[int]) -> None:
    """Price a pass replaying a schedule (`engramsim/schedule.py`) from its steps' prices, computed
    at once (`RooflineCostModel.price`) the first time a pass of these rates replays it, with the
    Engram `layers` the pass runs, and kept on the schedule (`PRICES_KEPT`)."""
    if not isinstance(cost, RooflineCostModel):
        return
    if not isinstance(scheduler, Replay):
        cost.prices = None  # priced step by step: another schedule's prices would be another pass's
        return
    schedule, key = scheduler.schedule, (cost.rates, tuple(layers))
    if key not in schedule.prices:
        rows = {layer: counts[0] for layer, counts in schedule.lookups(layers).items()}
        if len(schedule.prices) >= PRICES_KEPT:
            del schedule.prices[next(iter(schedule.prices))]
        schedule.prices[key] = cost.price(list(schedule.steps), rows)
    cost.prices = schedule.prices[key]

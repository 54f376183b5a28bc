"""Hardware profiles: every number the cost model uses, with units and provenance.

A preset carries datasheet/public figures; a calibrated profile (written by `engramsim
calibrate`) has the same fields plus the residuals of its fit, so predictions carry an error band.
"""

from __future__ import annotations

import math
import types
from typing import Annotated, Any, ClassVar, Literal, Union, cast, get_args, get_origin

import annotated_types
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

MIB = 1 << 20
GIB = 1 << 30
NS = 1e-9

Physical = Annotated[float, Field(ge=1e-9, le=1e12)]
"""A rate or capacity: positive and within what any machine has, so an extreme value cannot make
every time in the results infinite or zero."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _OmitUnset(_Strict):
    """A section whose optional fields (`OPTIONAL`) are left out of its dump while unset, so a
    profile without them reads back, and writes into results.json, as it did before they existed."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in self.OPTIONAL:
            if data.get(key) in (None, {}):
                data.pop(key, None)
        return data


class Provenance(_Strict):
    kind: str = Field(description="'preset' (public figures) or 'calibrated' (fitted on a machine)")
    source: str = Field(description="where the numbers come from")
    date: str | None = None
    host: str | None = Field(None, description="CPU model / hostname it was calibrated on")
    gpu: str | None = None
    versions: dict[str, str] = Field(default_factory=dict, description="driver, torch, CUDA versions")


class GPU(_OmitUnset):
    OPTIONAL: ClassVar[tuple[str, ...]] = ("zero_copy_slowdown",)

    name: str
    bf16_tflops: Physical = Field(description="dense bf16 peak, TFLOP/s")
    hbm_gbps: Physical = Field(description="HBM bandwidth peak, GB/s")
    hbm_gib: Physical = Field(description="HBM capacity, GiB")
    compute_efficiency: float = Field(gt=0, le=1, description="achieved fraction of bf16 peak on large GEMMs")
    memory_efficiency: float = Field(gt=0, le=1, description="achieved fraction of HBM peak on streaming reads")
    layer_overhead_us: NonNegativeFloat = Field(description="fixed cost of one block per step (launches, norms, small kernels), us")
    engram_overhead_us: NonNegativeFloat | None = Field(
        None, description="fixed cost of one Engram layer per step (its many small kernels), us; null: layer_overhead_us")
    kernel_overhead_us: NonNegativeFloat = Field(
        0.0, description="fixed cost of each kernel of the inventory (each `kernels.Work`: a GEMM with the small ops fused "
        "around it, an attention core, an mHC mix) per step, paid by blocks, Engram layers and the head on top of "
        "layer_overhead_us and engram_overhead_us, us: dispatch and small ops, which grow with the kernels a block runs "
        "(an MLA + mHC block runs 14 in a decode step, a GQA block 6); 0 keeps all fixed cost in those two")
    gemm_half_rows: NonNegativeFloat = Field(
        0.0, description="half-performance length of a GEMM: over M rows it reaches M / (M + this) of the compute peak; "
        "ignored when sms is set (the wave model replaces it)")
    grouped_gemm_half_rows: NonNegativeFloat | None = Field(
        None, description="gemm_half_rows of grouped launches (per-head products, routed MoE experts), which run as many "
        "small products; null: gemm_half_rows; ignored when sms is set")
    roofline_exponent: float | None = Field(
        None, ge=1, description="how a kernel's compute and memory times combine: (tc^n + tm^n)^(1/n); "
        "null is max(tc, tm) (full overlap, GPUs), 1 their sum (no overlap)")
    attention_efficiency: float | None = Field(
        default=None, gt=0, le=1, description="achieved fraction of HBM peak when decode attention reads the paged KV cache; "
        "null: memory_efficiency")
    sms: PositiveInt | None = Field(
        default=None, le=4096, description="streaming multiprocessors (compute units): a GEMM's output tiles run in waves of this many; "
        "null: no wave quantisation (CPUs)")
    gemm_tile_m: PositiveInt = Field(default=128, le=1024, description="rows (tokens) of one GEMM output tile, one thread block")
    gemm_tile_n: PositiveInt = Field(default=128, le=1024, description="columns of one GEMM output tile")
    copy_engines: PositiveInt = 2
    zero_copy_slowdown: float | None = Field(
        default=None, ge=1, le=10, description="how much longer the compute stream's work takes while a zero-copy gather "
        "kernel runs beside it and holds SMs (SM interference; read by the zero-copy-sm transport); null: "
        "sms / (sms - 16), a gather grid on 16 SMs (an assumption: measure it by timing blocks alone and beside a looping "
        "UVA gather), 1 without sms")


class Link(_Strict):
    name: str
    h2d_gbps: Physical = Field(description="achieved host-to-device DMA bandwidth, GB/s")
    d2h_gbps: Physical = Field(description="achieved device-to-host DMA bandwidth, GB/s")
    dma_latency_us: NonNegativeFloat = Field(description="fixed cost of one async copy, us")
    zero_copy_gbps: Physical = Field(description="bandwidth a GPU gather kernel reaches reading pinned host memory, GB/s")
    zero_copy_latency_us: NonNegativeFloat = Field(description="launch + first round trip of a zero-copy gather, us")
    transaction_bytes: PositiveInt = Field(128, description="zero-copy reads are rounded up to this many bytes")


class GatherSize(_Strict):
    """How a random-row gather slows as its table outgrows the CPU's caches and TLB
    (engramsim/kernels.py `gather_row_penalty_s`): per row, a data miss in the last-level cache,
    an STLB miss (its reach: entries x the page size) and a page walk whose page-table entry
    misses L2 (page tables are 8 B per page), each weighted by the fraction of random rows that
    miss it. Cache sizes and STLB entries describe the host CPU; the per-miss costs are fitted by
    `engramsim calibrate` (gather against table size). The measured `gather_rows_per_s` is
    scaled by the modelled row time at a table's size over that at `reference_gib`."""

    reference_gib: Physical = Field(description="the table size `gather_rows_per_s` was measured at, GiB")
    reference_huge_pages: bool = Field(default=False, description="whether that table sat in 2 MiB pages")
    l2_mib: Physical = Field(description="L2 cache of one core, MiB (holds the page walk's entries)")
    llc_mib: Physical = Field(description="last-level cache the gather threads share, MiB")
    stlb_entries: PositiveInt = Field(description="second-level TLB entries (4 KiB and 2 MiB pages alike)")
    hit_ns: Physical = Field(description="time per row whose data, page and page-table entry all hit, ns")
    data_miss_ns: NonNegativeFloat = Field(description="extra time per row whose data misses the last-level cache, ns")
    tlb_miss_ns: NonNegativeFloat = Field(description="extra time per row whose page misses the STLB (a walk from cache), ns")
    pte_miss_ns: NonNegativeFloat = Field(description="extra time per row whose page-table entry also misses L2, ns")


class Host(_Strict):
    name: str
    dram_gbps: Physical = Field(description="achievable DRAM bandwidth, GB/s")
    dram_gib: Physical = Field(description="host memory that may hold tables, GiB")
    gather_rows_per_s: Physical = Field(description="random-row gather rate of one CPU thread, rows/s")
    gather_threads: PositiveInt = Field(description="CPU threads the staged transport gathers with")
    gather_overhead_us: NonNegativeFloat = Field(description="fixed cost of one gather call, us")
    huge_pages: bool = Field(default=False, description="the tables sit in 2 MiB (transparent) huge pages, not 4 KiB pages")
    gather_size: GatherSize | None = Field(
        default=None, description="how the gather rate changes with the table's size; null: the same rate at every size")

    def gather_row_s(self, table_bytes: float) -> float:
        """One gather thread's seconds per random row of a table of `table_bytes` (`gather_size`;
        without it, 1 / gather_rows_per_s at every size)."""
        size = self.gather_size
        if size is None:
            return 1.0 / self.gather_rows_per_s
        from engramsim.kernels import gather_row_seconds  # kernels imports the scenario, which imports this module
        return gather_row_seconds(self.gather_rows_per_s, table_bytes, self.huge_pages, size.reference_gib * GIB, size.reference_huge_pages,
                                  size.l2_mib * MIB, size.llc_mib * MIB, size.stlb_entries, size.hit_ns * NS, size.data_miss_ns * NS,
                                  size.tlb_miss_ns * NS, size.pte_miss_ns * NS)


class Socket(_Strict):
    """One CPU socket as the GPUs of a node share it (simulator/node.py): its cores run every replica's
    gather threads, and a read of another socket's DRAM crosses the socket interconnect at that
    memory's latency. `host` is one socket's memory and gather figures."""

    cores: PositiveInt = Field(le=4096, description="cores of one socket, which every replica's gather threads share")
    interconnect_gbps: Physical = Field(description="achievable bandwidth of reads from the other socket's DRAM, one "
                                        "direction, GB/s (UPI / xGMI links together)")
    remote_latency_ratio: float = Field(ge=1, le=10, description="idle latency of a random load from the other socket's "
                                        "DRAM over one from its own: a gather row of a remote page costs this much more")


class CXL(_OmitUnset):
    """CXL 2.0 Type-3 memory expanders holding rows: the CPU loads from them like a far NUMA node.
    A gather thread keeps as many loads in flight to them as to local DRAM: `host.gather_rows_per_s`
    x `dram_latency_ns` (Little's law), so the CXL gather follows the host's rate, drawn samples
    included; or `rows_in_flight_per_thread`, given outright."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ("dram_latency_ns", "rows_in_flight_per_thread")

    name: str
    load_latency_ns: Physical = Field(description="idle load-to-use latency of a CPU load from the expander's memory, ns "
                                      "(local DRAM plus what CXL adds)")
    dram_latency_ns: Physical | None = Field(
        default=None, description="the local-DRAM part of load_latency_ns, ns: a gather thread keeps host.gather_rows_per_s "
        "x this many loads in flight (its memory-level parallelism, the same to CXL memory as to DRAM)")
    rows_in_flight_per_thread: Physical | None = Field(
        default=None, description="random-row loads one gather thread keeps in flight, given outright (wins over dram_latency_ns)")
    gbps: Physical = Field(description="read bandwidth of one device, GB/s")
    devices: PositiveInt = Field(le=1024, description="expanders the tables are interleaved over")
    capacity_gib: Physical = Field(description="memory of one device, GiB")

    @model_validator(mode="after")
    def _loads_in_flight(self) -> CXL:
        if self.dram_latency_ns is None and self.rows_in_flight_per_thread is None:
            raise ValueError("give dram_latency_ns (loads in flight follow the host's gather rate) or rows_in_flight_per_thread")
        return self

    def rows_in_flight(self, host_rows_per_s: float) -> float:
        """Loads one gather thread keeps in flight to the expanders (`rows_in_flight_per_thread`, else
        the host thread's row rate x `dram_latency_ns`)."""
        if self.rows_in_flight_per_thread is not None:
            return self.rows_in_flight_per_thread
        assert self.dram_latency_ns is not None
        return host_rows_per_s * self.dram_latency_ns * NS

    @property
    def capacity_bytes(self) -> float:
        return self.devices * self.capacity_gib * (1 << 30)


class NVMe(_Strict):
    """NVMe SSDs holding rows, read in whole pages (4 KiB logical blocks)."""

    name: str
    read_iops: Physical = Field(description="4 KiB random-read IOPS of one drive (datasheet, at a deep queue)")
    read_latency_us: Physical = Field(description="latency of one 4 KiB random read at a shallow queue, us")
    queue_depth: PositiveInt = Field(le=65536, description="reads the reader keeps in flight per drive: a drive then reaches "
                                     "min(read_iops, queue_depth / read_latency) IOPS (Little's law)")
    read_gbps: Physical = Field(description="sequential read bandwidth of one drive, GB/s")
    page_bytes: PositiveInt = Field(4096, le=1 << 20, description="bytes one read moves (the logical block): a row costs a "
                                    "whole page unless rows of the same fetch share it")
    drives: PositiveInt = Field(le=1024, description="drives the tables are striped over")
    capacity_gib: Physical = Field(description="capacity of one drive, GiB")

    @property
    def capacity_bytes(self) -> float:
        return self.drives * self.capacity_gib * (1 << 30)


class Residual(_Strict):
    """How well a calibrated parameter fits its micro-benchmarks (relative errors)."""

    samples: PositiveInt
    rel_error_mean: float
    rel_error_p95: NonNegativeFloat


class Spread(_OmitUnset):
    """How far one profile number may lie from its stated value: `uniform` between `low` and `high`
    (which hold the value), `triangular` between them with its mode at the value (the stated value
    is the likeliest, the range's ends the least), or `lognormal` around it (the log of value' /
    value is normal with standard deviation `sigma`); `source` says where the range comes from."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ("low", "high", "sigma")

    dist: Literal["uniform", "triangular", "lognormal"]
    low: float | None = None
    high: float | None = None
    sigma: PositiveFloat | None = Field(None, le=5)
    source: str = Field(min_length=1, description="where the range comes from")

    @model_validator(mode="after")
    def _shape(self) -> Spread:
        if self.dist in ("uniform", "triangular"):
            if self.low is None or self.high is None or self.sigma is not None:
                raise ValueError(f"a {self.dist} spread takes low and high (no sigma)")
            if self.low > self.high:
                raise ValueError(f"low {self.low:g} is above high {self.high:g}")
        elif self.sigma is None or self.low is not None or self.high is not None:
            raise ValueError("a lognormal spread takes sigma (no low or high)")
        return self


class HardwareProfile(_OmitUnset):
    OPTIONAL: ClassVar[tuple[str, ...]] = ("socket", "cxl", "nvme", "uncertainty")

    name: str
    description: str = ""
    gpu: GPU
    link: Link
    host: Host
    step_overhead_us: NonNegativeFloat = Field(description="per-step scheduler, sampling and launch cost outside the blocks, us")
    step_overhead_per_seq_us: NonNegativeFloat = Field(
        default=0.0, description="host cost per sequence in the step (input preparation, block tables, sampling bookkeeping), us")
    provenance: Provenance
    residuals: dict[str, Residual] = Field(default_factory=dict)
    socket: Socket | None = Field(default=None, description="the host's sockets as a node's GPUs share them "
                                  "(hardware.node); null: the profile simulates one GPU with the host to itself")
    cxl: CXL | None = Field(default=None, description="CXL memory tier (a tier preset name in a profile file); null: none")
    nvme: NVMe | None = Field(default=None, description="NVMe tier (a tier preset name in a profile file); null: none")
    uncertainty: dict[str, Spread] = Field(
        default_factory=dict, description="spreads of its numbers, keyed by field path (host.gather_rows_per_s, "
        "step_overhead_us): `engramsim run --samples` and `sweep --samples` draw profiles from them (engramsim/uncertainty.py)")


def _field_bounds(model: type[BaseModel], name: str) -> tuple[float, float]:
    """The closed interval a float field accepts (its ge/gt/le/lt; gt and lt as the next float inside)."""
    info = model.model_fields[name]
    metadata = list(info.metadata)
    for arg in get_args(info.annotation) if get_origin(info.annotation) in (Union, types.UnionType) else ():
        metadata += getattr(arg, "__metadata__", ())
    low, high = -math.inf, math.inf
    for m in metadata:
        if isinstance(m, annotated_types.Ge):
            low = max(low, float(cast(float, m.ge)))
        elif isinstance(m, annotated_types.Gt):
            low = max(low, math.nextafter(float(cast(float, m.gt)), math.inf))
        elif isinstance(m, annotated_types.Le):
            high = min(high, float(cast(float, m.le)))
        elif isinstance(m, annotated_types.Lt):
            high = min(high, math.nextafter(float(cast(float, m.lt)), -math.inf))
    return low, high


def spread_field(profile: HardwareProfile, key: str) -> tuple[float, tuple[float, float]]:
    """(value, the interval the field accepts) of the number a spread's key names; ValueError saying
    why when the key names none a sample may vary: a float field with a value, not a capacity (`*_gib`,
    which sizes memory before any pass runs)."""
    *sections, name = key.split(".")
    node: Any = profile
    for section in sections:
        node = getattr(node, section, None) if section in type(node).model_fields else None
        if not isinstance(node, BaseModel):
            raise ValueError(f"{key!r} names no section of the profile; a key is a field path such as host.gather_rows_per_s "
                             "or step_overhead_us")
    value = getattr(node, name, None) if name in type(node).model_fields else None
    if not isinstance(value, float) or name.endswith("_gib"):
        what = ("is null here" if name in type(node).model_fields and value is None else
                "is a capacity, fixed before any pass runs" if name.endswith("_gib") else "is not a number a sample may vary")
        raise ValueError(f"{key!r} {what}; spreads go on rates, efficiencies and costs (float fields with a value)")
    return value, _field_bounds(type(node), name)


def spread_problem(profile: HardwareProfile) -> tuple[str, str] | None:
    """(key, problem) of the first spread that does not fit its profile: a key naming no float field,
    a uniform or triangular range not holding the profile's value or reaching past what the field accepts."""
    for key, spread in profile.uncertainty.items():
        try:
            value, (lowest, highest) = spread_field(profile, key)
        except ValueError as exc:
            return key, str(exc)
        if spread.dist != "lognormal":
            assert spread.low is not None and spread.high is not None
            if not spread.low <= value <= spread.high:
                return key, f"the range {spread.low:g}..{spread.high:g} does not hold the profile's value {value:g}"
            if spread.low < lowest or spread.high > highest:
                return key, f"the range {spread.low:g}..{spread.high:g} reaches past what the field accepts ({lowest:g}..{highest:g})"
    return None

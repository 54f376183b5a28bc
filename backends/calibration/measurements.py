"""What the benchmarks measured: one median per case, with the work the cost model counts for it,
kept for the samples file (`engramsim calibrate --samples`) and read by the fits."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from engramsim.kernels import Work, grouped_weights


@dataclass
class Measurements:
    """Every timing the fits use (seconds; one median per case)."""

    backend: str
    budget: str
    threads: int = 1
    table_bytes: int = 0  # the table of the gather fits (the rate's reference size)
    gather: list[dict[str, float]] = field(default_factory=list)  # rows, row_bytes, seconds
    copy: list[dict[str, float]] = field(default_factory=list)  # bytes, seconds
    zero_copy: list[dict[str, float]] = field(default_factory=list)  # rows, row_bytes, seconds
    stream_gbps: float = 0.0
    block: list[dict[str, Any]] = field(default_factory=list)  # shape, kind, seqs, tokens, context, flops, bytes, kernels, seconds
    engram: list[dict[str, Any]] = field(default_factory=list)  # as block, plus rows
    head: list[dict[str, Any]] = field(default_factory=list)
    host: list[dict[str, Any]] = field(default_factory=list)  # kind, seqs, tokens, seconds: per step of a real pass
    block_under_gather: list[dict[str, Any]] = field(default_factory=list)
    gather_alone: list[dict[str, float]] = field(default_factory=list)  # rows, row_bytes, seconds: back to back, quiet
    gather_size: list[dict[str, Any]] = field(default_factory=list)  # table_bytes, huge_pages, threads, rows, row_bytes, seconds
    caches: tuple[int, int] | None = None  # (L2, last-level cache) bytes, from sysfs
    huge_page_mode: str | None = None  # the kernel's transparent-huge-page mode
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def kernel_fields(kernels: list[Work]) -> dict[str, Any]:
    """A sample's cost-model work: the totals (for reading) and the kernels (what the fit prices: one
    row [flops, bytes, weights, grouped weights, attention bytes] per kernel, `fits.kernel_rows`)."""
    return {"flops": sum(k.flops for k in kernels), "bytes": sum(k.bytes for k in kernels),
            "kernels": [[k.flops, k.bytes, k.weights, grouped_weights(k), k.attention_bytes] for k in kernels]}

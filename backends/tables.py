"""Engram tables as the real backends store them: storage format, deterministic filling, and
turning stored rows into head vectors.

Tables are filled with FILL_BLOCK_ROWS seeded random rows (N(0, 1); fp8: random e4m3 bytes with
a unit e8m0 scale) repeated down the table: deterministic, and a 100 GB table fills at memcpy
speed instead of randn speed. Row values change no timing. Calibration fills its tables the same
way, so both read the same kind of memory content.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from engramsim.backends.device import TORCH_DTYPES
from engramsim.scenario import Engram

FILL_BLOCK_ROWS = 1 << 16


def table_format(engram: Engram) -> tuple[torch.dtype, int]:
    """Storage dtype and row width; fp8 rows are raw bytes: head_dim e4m3 values, then e8m0 scales."""
    if engram.dtype == "fp8":
        return torch.uint8, engram.row_bytes
    return TORCH_DTYPES[engram.dtype], engram.head_dim


def seed_rows(n: int, engram: Engram, generator: torch.Generator) -> torch.Tensor:
    if engram.dtype != "fp8":
        return torch.randn(n, engram.head_dim, generator=generator).to(TORCH_DTYPES[engram.dtype])
    values = torch.randint(0, 0x7F, (n, engram.head_dim), generator=generator, dtype=torch.uint8)  # 0x7F: NaN
    values |= torch.randint(0, 2, (n, engram.head_dim), generator=generator, dtype=torch.uint8) << 7
    scales = torch.full((n, engram.row_bytes - engram.head_dim), 127, dtype=torch.uint8)  # 2^(127-127) = 1
    return torch.cat([values, scales], dim=1)


def fill_table(table: torch.Tensor, engram: Engram, generator: torch.Generator,
               advance: Callable[[int], None] | None = None) -> None:
    """Seeded rows repeated down `table` ([rows, width] in `table_format`); `advance(bytes)` after
    each block, so a progress bar can follow a fill that takes minutes."""
    block = seed_rows(min(FILL_BLOCK_ROWS, table.shape[0]), engram, generator)
    row_bytes = table.shape[1] * table.element_size()
    for start in range(0, table.shape[0], block.shape[0]):
        n = min(block.shape[0], table.shape[0] - start)
        table[start : start + n].copy_(block[:n])
        if advance is not None:
            advance(n * row_bytes)


def row_values(rows: torch.Tensor, engram: Engram, dtype: torch.dtype) -> torch.Tensor:
    """Table rows → head vectors in the compute dtype (fp8: e4m3 values times their scale per 32)."""
    if engram.dtype != "fp8":
        return rows.to(dtype)
    values = rows[:, : engram.head_dim].view(torch.float8_e4m3fn).to(dtype)
    scales = torch.exp2(rows[:, engram.head_dim :].float() - 127).repeat_interleave(32, dim=1)[:, : engram.head_dim]
    return values * scales.to(dtype)

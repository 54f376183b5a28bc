"""Engram tables as the real backends store them: storage format, deterministic filling, and
turning stored rows into head vectors.

Tables are filled with FILL_BLOCK_ROWS seeded random rows (N(0, 1), in the table's dtype)
repeated down the table: deterministic, and a 100 GB table fills at memcpy speed instead of randn
speed. Every dtype draws the same N(0, 1) values from the same generator, so an fp8 or int8 table
holds the quantised bytes (backends/quantize.py) of exactly the values an fp32 or bf16 table of
the same scenario holds: `engramsim quality` compares them. Row values change no timing.
Calibration fills its tables the same way, so both read the same kind of memory content.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from engramsim.backends.device import TORCH_DTYPES
from engramsim.backends.quantize import QUANTIZED, dequantize, quantize
from engramsim.scenario import Engram

FILL_BLOCK_ROWS = 1 << 16


def table_format(engram: Engram) -> tuple[torch.dtype, int]:
    """Storage dtype and row width; quantised rows (fp8, int8) are raw bytes: head_dim values, then
    one scale per 32 (backends/quantize.py), `engram.row_bytes` in all, and move over the link as such."""
    if engram.dtype in QUANTIZED:
        return torch.uint8, engram.row_bytes
    return TORCH_DTYPES[engram.dtype], engram.head_dim


def seed_rows(n: int, engram: Engram, generator: torch.Generator) -> torch.Tensor:
    """n rows of N(0, 1) values in the table's format (the same draws for every dtype)."""
    values = torch.randn(n, engram.head_dim, generator=generator)
    if engram.dtype in QUANTIZED:
        return quantize(values, engram.dtype)
    return values.to(TORCH_DTYPES[engram.dtype])


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


def stored_rows(engram: Engram, table_rows: dict[int, int], row_ids: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Per Engram layer, the stored rows (in `table_format`) at `row_ids` of the tables the real
    backends fill: one generator seeded with `engram.seed` fills the layers in order (`table_rows`:
    layer -> rows, in the order the executor allocates them), each a block repeated down its table,
    so row r is block row r mod the block's length. No table is allocated."""
    generator = torch.Generator().manual_seed(engram.seed)
    out = {}
    for layer, rows in table_rows.items():
        block = seed_rows(min(FILL_BLOCK_ROWS, rows), engram, generator)
        if layer in row_ids:
            out[layer] = block.index_select(0, row_ids[layer].reshape(-1) % block.shape[0]).view(*row_ids[layer].shape, -1)
    return out


def row_values(rows: torch.Tensor, engram: Engram, dtype: torch.dtype) -> torch.Tensor:
    """Table rows → head vectors in the compute dtype, on the rows' device (quantised rows:
    values times their scale per 32, dequantised after the link)."""
    if engram.dtype in QUANTIZED:
        return dequantize(rows, engram.dtype, engram.head_dim, dtype)
    return rows.to(dtype)

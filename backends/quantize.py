"""Low-precision Engram rows: the byte formats, and quantising and dequantising them in torch.

A quantised row is one uint8 row of `Engram.row_bytes`: the head's values (one byte each), then
one scale per group of GROUP = 32 values (the last group may be shorter: head dim 80 has groups
of 32, 32 and 16). Both formats are symmetric, per group, and vectorised over every row:

- **fp8** (`model.engram.dtype: fp8`): values in OCP FP8 E4M3 (`torch.float8_e4m3fn`: 4 exponent
  bits, 3 mantissa bits, largest finite 448, no infinities), scales in UE8M0: one unsigned byte
  b, the scale 2^(b - 127) (a power of two; 255 is NaN and never written). The scale is the
  smallest power of two >= amax / 448, so no value of the group leaves E4M3's range and
  multiplying by the scale is exact. 256 values: 256 + 8 = 264 B, DeepSeek V4's production row.
- **int8** (`model.engram.dtype: int8`): values round(x / s) in [-127, 127] (-128 unused, so the
  grid is symmetric), scales in bfloat16 (two bytes, little-endian, as every GPU and x86 host
  stores them): s = amax / 127 rounded *up* to the next bfloat16, so |x| / s <= 127 and every
  value's error is at most s / 2. bfloat16 rather than fp16 because it has float32's exponent
  range: no group of finite values overflows or underflows its scale, whatever the table holds;
  its 8-bit significand only moves the grid (at most 0.4%), never the s / 2 bound, since the
  values are quantised against the stored scale. 256 values: 256 + 16 = 272 B.

An all-zero group stores scale 2^-127 (fp8) or 0 (int8) and zeros. Inputs must be finite; a value
within one rounding step of float32's largest (above ~3.2e38) dequantises to infinity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engramsim.scenario import SCALE_BYTES

GROUP = 32
FP8_MAX = 448.0  # largest finite float8_e4m3fn
INT8_MAX = 127
UE8M0_BIAS = 127
QUANTIZED = tuple(SCALE_BYTES)  # the Engram dtypes stored quantised: fp8, int8


def groups(head_dim: int) -> int:
    return -(-head_dim // GROUP)


def row_bytes(mode: str, head_dim: int) -> int:
    """Bytes of one quantised row: head_dim values + one scale per group (scenario.Engram.row_bytes agrees)."""
    return head_dim + groups(head_dim) * SCALE_BYTES[mode]


def _grouped(values: torch.Tensor) -> torch.Tensor:
    """[n, d] float32 -> [n, groups, 32], the last group padded with zeros."""
    d = values.shape[1]
    return F.pad(values, (0, groups(d) * GROUP - d)).view(values.shape[0], groups(d), GROUP)


def _amax(values: torch.Tensor) -> torch.Tensor:
    """[n, d] -> [n, groups] largest |x| of each group (float32)."""
    if not bool(torch.isfinite(values).all()):
        raise ValueError("cannot quantise non-finite values (inf or NaN)")
    return _grouped(values.float()).abs().amax(dim=2)


def ue8m0_exponent(amax: torch.Tensor) -> torch.Tensor:
    """Per group, the int32 exponent e of the smallest power of two 2^e >= amax / 448, within
    UE8M0's [-127, 127] (an all-zero group gets -127). Exact: frexp, not a rounded log2."""
    mantissa, exponent = torch.frexp(amax.float() / FP8_MAX)  # amax / 448 = m * 2^E, m in [0.5, 1)
    e = torch.where(mantissa == 0.5, exponent - 1, exponent)  # a power of two is its own ceiling
    e = torch.where(amax > 0, e, torch.full_like(e, -UE8M0_BIAS))
    return e.clamp(-UE8M0_BIAS, UE8M0_BIAS).to(torch.int32)


def bf16_scale_up(scale: torch.Tensor) -> torch.Tensor:
    """Non-negative float32 scales -> the smallest bfloat16 >= each (never rounds a scale down)."""
    rounded = scale.to(torch.bfloat16)
    low = rounded.float() < scale
    bumped = (rounded.view(torch.int16) + low.to(torch.int16)).view(torch.bfloat16)  # next bf16 up (positive values)
    return bumped


def quantize(values: torch.Tensor, mode: str) -> torch.Tensor:
    """[n, head_dim] floats -> [n, row_bytes(mode, head_dim)] uint8 rows (values, then scales)."""
    if values.dim() != 2:
        raise ValueError(f"expected rows [n, head_dim], got shape {tuple(values.shape)}")
    n, d = values.shape
    amax = _amax(values)
    x = _grouped(values.float())
    if mode == "fp8":
        e = ue8m0_exponent(amax)
        scaled = x / torch.exp2(e.float()).unsqueeze(2)  # a power of two: exact
        q = scaled.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).view(torch.uint8)
        scales = (e + UE8M0_BIAS).to(torch.uint8)
    elif mode == "int8":
        s = bf16_scale_up(amax / INT8_MAX)
        divisor = torch.where(s > 0, s.float(), torch.ones_like(amax)).unsqueeze(2)
        q = torch.round(x / divisor).clamp(-INT8_MAX, INT8_MAX).to(torch.int8).view(torch.uint8)
        scales = s.contiguous().view(torch.uint8).view(n, -1)  # two little-endian bytes per group
    else:
        raise ValueError(f"unknown quantisation mode {mode!r}; expected one of {', '.join(QUANTIZED)}")
    return torch.cat([q.reshape(n, -1)[:, :d], scales.reshape(n, -1)], dim=1)


def dequantize(rows: torch.Tensor, mode: str, head_dim: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[n, row_bytes] uint8 rows -> [n, head_dim] values in `dtype` (the product is formed in float32,
    where it is exact, then rounded once to `dtype`). Runs on the rows' device."""
    if mode not in QUANTIZED:
        raise ValueError(f"unknown quantisation mode {mode!r}; expected one of {', '.join(QUANTIZED)}")
    if rows.dim() != 2 or rows.dtype != torch.uint8 or rows.shape[1] != row_bytes(mode, head_dim):
        raise ValueError(f"expected uint8 rows [n, {row_bytes(mode, head_dim)}] for {mode} with head dim {head_dim}, "
                         f"got {rows.dtype} {tuple(rows.shape)}")
    n, g = rows.shape[0], groups(head_dim)
    raw, scale_bytes = rows[:, :head_dim], rows[:, head_dim:]
    if mode == "fp8":
        values = raw.view(torch.float8_e4m3fn).float()
        scales = torch.exp2(scale_bytes.float() - UE8M0_BIAS)
    else:
        values = raw.view(torch.int8).float()
        scales = scale_bytes.contiguous().view(torch.bfloat16).float().view(n, g)
    out = values * scales.repeat_interleave(GROUP, dim=1)[:, :head_dim]
    return out if dtype == torch.float32 else out.to(dtype)

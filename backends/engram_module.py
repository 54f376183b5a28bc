"""The Engram module in torch, as ENGRAM.md "The module" (mirrors DeepSeek's public demo code).

Two parts, kept apart on purpose: `EngramTable` turns per-head row ids into the memory vector e
(the step the real backends replace with their own gather from a table in pinned host memory),
and `EngramModule` is what runs on the GPU once e is there: the per-branch gate, the shared
value projection and the short causal convolution, with incremental decode.

Shapes: B sequences, T positions, H = (max_ngram-1)*heads heads, hc = hc_mult branches,
d_mem = H * head_dim, hidden states [B, T, hc, hidden].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engramsim.plugins.hashing.engram import EngramHashing

_INIT_CHUNK_ROWS = 1 << 20  # table init draws this many rows at a time, so huge tables need no fp32 copy


def _generator(seed: torch.Generator | int | None) -> torch.Generator:
    """A CPU generator: init always draws on CPU so a seed gives the same weights on every device."""
    if isinstance(seed, torch.Generator):
        return seed
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


class EngramTable:
    """One Engram layer's multi-head embedding: all heads in one [total_rows, head_dim] tensor.

    Head k's rows start at offsets[k] (the sum of the earlier heads' prime sizes). The tensor can
    live anywhere (GPU, pageable or pinned host memory); `lookup` gathers on that device.
    """

    def __init__(self, weight: torch.Tensor, offsets: Sequence[int] | np.ndarray | torch.Tensor) -> None:
        """Wrap an existing table tensor (not copied)."""
        if weight.dim() != 2:
            raise ValueError(f"expected a table of shape [rows, head_dim], got {tuple(weight.shape)}")
        self.weight = weight
        self.offsets = torch.as_tensor(offsets, dtype=torch.int64, device=weight.device)
        if self.offsets.dim() != 1 or len(self.offsets) == 0:
            raise ValueError(f"expected one offset per head, got shape {tuple(self.offsets.shape)}")

    @classmethod
    def create(
        cls,
        head_sizes: Sequence[int] | np.ndarray,
        head_dim: int,
        *,
        generator: torch.Generator | int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        pin_memory: bool = False,
    ) -> EngramTable:
        """A new table with N(0, 1) rows (nn.Embedding's init), drawn deterministically on CPU."""
        sizes = np.asarray(head_sizes, dtype=np.int64)
        total = int(sizes.sum())
        weight = torch.empty(total, head_dim, dtype=dtype, device=device, pin_memory=pin_memory)
        g = _generator(generator)
        for start in range(0, total, _INIT_CHUNK_ROWS):
            stop = min(total, start + _INIT_CHUNK_ROWS)
            weight[start:stop] = torch.randn(stop - start, head_dim, generator=g).to(dtype)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        return cls(weight, offsets)

    @classmethod
    def from_hashing(cls, hashing: EngramHashing, layer: int, head_dim: int, **kwargs) -> EngramTable:
        """The table for one Engram layer of `hashing`; kwargs as `create`."""
        return cls.create(hashing.primes[layer], head_dim, **kwargs)

    @property
    def heads(self) -> int:
        return len(self.offsets)

    @property
    def head_dim(self) -> int:
        return self.weight.shape[1]

    @property
    def d_mem(self) -> int:
        return self.heads * self.head_dim

    def global_rows(self, row_ids: torch.Tensor) -> torch.Tensor:
        """Per-head row ids [..., H] (as the hashing returns them) → rows of the single table."""
        if row_ids.shape[-1] != self.heads:
            raise ValueError(f"expected {self.heads} heads in the last dim, got {tuple(row_ids.shape)}")
        return row_ids.to(self.weight.device, torch.int64) + self.offsets

    def lookup(self, row_ids: torch.Tensor) -> torch.Tensor:
        """Per-head row ids [..., H] → memory vectors e [..., d_mem] on the table's device."""
        rows = self.global_rows(row_ids)
        flat = torch.index_select(self.weight, 0, rows.reshape(-1))
        return flat.view(*rows.shape[:-1], self.d_mem)


@dataclass
class EngramDecodeState:
    """What decode needs from earlier positions: the conv's last (kernel-1)*dilation normed
    inputs per sequence, [B, hc*hidden, (kernel-1)*dilation], oldest first (zeros before start)."""

    conv_window: torch.Tensor


class EngramModule(nn.Module):
    """Gate, value and short conv of one Engram layer, given hidden states and gathered e.

    W_v and the hc_mult W_k's are fused into one Linear(d_mem → (hc_mult+1)*hidden), as the
    paper does in production: output rows [0, hidden) are W_v, rows [(1+m)*hidden, (2+m)*hidden)
    are W_k of branch m. Per-branch RMSNorm weights are stored as [hc_mult, hidden] tensors so
    every branch runs in the same kernels.
    """

    def __init__(
        self,
        hidden: int,
        d_mem: int,
        *,
        hc_mult: int = 4,
        max_ngram: int = 3,
        kernel_size: int = 4,
        conv_norm_eps: float = 1e-5,
        generator: torch.Generator | int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """`generator` is a torch.Generator or an int seed; None draws a fresh seed."""
        super().__init__()
        self.hidden = hidden
        self.d_mem = d_mem
        self.hc_mult = hc_mult
        self.dilation = max_ngram
        self.conv_norm_eps = conv_norm_eps
        self.window = (kernel_size - 1) * max_ngram
        channels = hc_mult * hidden
        self.proj = nn.Linear(d_mem, (hc_mult + 1) * hidden, bias=True, device=device, dtype=dtype)
        self.key_norm = nn.Parameter(torch.empty(hc_mult, hidden, device=device, dtype=dtype))  # norm1
        self.query_norm = nn.Parameter(torch.empty(hc_mult, hidden, device=device, dtype=dtype))  # norm2
        self.conv_norm = nn.Parameter(torch.empty(hc_mult, hidden, device=device, dtype=dtype))
        # Left padding comes from the decode state (zeros at a sequence start), so padding=0 here
        # equals the demo's padding=(k-1)*dilation followed by keeping the first T outputs.
        self.conv = nn.Conv1d(
            channels, channels, kernel_size, dilation=max_ngram, groups=channels, bias=False, device=device, dtype=dtype
        )
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | int | None = None) -> None:
        """torch's default inits (uniform ±1/sqrt(fan_in), norms at one), drawn on CPU."""
        g = _generator(generator)

        def uniform(param: torch.Tensor, fan_in: int) -> None:
            bound = 1.0 / math.sqrt(fan_in)
            param.copy_(torch.empty(param.shape).uniform_(-bound, bound, generator=g))

        uniform(self.proj.weight, self.d_mem)
        uniform(self.proj.bias, self.d_mem)
        uniform(self.conv.weight, self.conv.kernel_size[0])
        for norm in (self.key_norm, self.query_norm, self.conv_norm):
            norm.fill_(1.0)

    def initial_state(self, batch: int) -> EngramDecodeState:
        """The state at the start of `batch` sequences (the conv sees zeros before position 0)."""
        w = self.conv.weight
        return EngramDecodeState(torch.zeros(batch, w.shape[0], self.window, device=w.device, dtype=w.dtype))

    def _gated_value(self, hidden_states: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """v = g ⊙ (W_v e) with g_m = sigmoid(signed-sqrt(RMSNorm(W_k,m e) · RMSNorm(h_m) / sqrt(hidden)))."""
        if hidden_states.shape[-2:] != (self.hc_mult, self.hidden):
            raise ValueError(
                f"expected hidden states [B, T, {self.hc_mult}, {self.hidden}], got {tuple(hidden_states.shape)}"
            )
        value, keys = self.proj(e).split([self.hidden, self.hc_mult * self.hidden], dim=-1)
        keys = F.rms_norm(keys.unflatten(-1, (self.hc_mult, self.hidden)), (self.hidden,)) * self.key_norm
        queries = F.rms_norm(hidden_states, (self.hidden,)) * self.query_norm
        score = (keys * queries).sum(dim=-1) / math.sqrt(self.hidden)
        score = score.abs().clamp_min(1e-6).sqrt() * score.sign()
        return score.sigmoid().unsqueeze(-1) * value.unsqueeze(-2)

    def _short_conv(self, v: torch.Tensor, state: EngramDecodeState | None) -> tuple[torch.Tensor, EngramDecodeState]:
        """SiLU(causal depthwise conv(per-branch RMSNorm(v))), continuing from `state`."""
        batch, length = v.shape[:2]
        normed = F.rms_norm(v, (self.hidden,), eps=self.conv_norm_eps) * self.conv_norm
        x = normed.flatten(-2).transpose(1, 2)  # [B, C, T]
        past = state.conv_window if state is not None else self.initial_state(batch).conv_window
        window = torch.cat([past, x], dim=-1)
        y = F.silu(self.conv(window)).transpose(1, 2).reshape(batch, length, self.hc_mult, self.hidden)
        return y, EngramDecodeState(window[..., -self.window :].contiguous())

    def prefill(
        self, hidden_states: torch.Tensor, e: torch.Tensor, state: EngramDecodeState | None = None
    ) -> tuple[torch.Tensor, EngramDecodeState]:
        """Engram output [B, T, hc, hidden] for T new positions per sequence, and the state after them.

        With `state`, the positions continue those sequences (chunked prefill); without, they start them.
        """
        v = self._gated_value(hidden_states, e)
        conv, new_state = self._short_conv(v, state)
        return v + conv, new_state

    def step(
        self, hidden_states: torch.Tensor, e: torch.Tensor, state: EngramDecodeState
    ) -> tuple[torch.Tensor, EngramDecodeState]:
        """One decode token per sequence: hidden [B, 1, hc, hidden], e [B, 1, d_mem]."""
        if hidden_states.shape[1] != 1 or e.shape[1] != 1:
            raise ValueError(f"step takes one token per sequence, got T={hidden_states.shape[1]}")
        return self.prefill(hidden_states, e, state)

    def forward(self, hidden_states: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """Engram output for whole sequences, v + ShortConv(v) (the demo's `Engram.forward`)."""
        return self.prefill(hidden_states, e)[0]

    def residual(self, hidden_states: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """hidden + Engram output: the residual stream after this layer's Engram."""
        return hidden_states + self(hidden_states, e)

"""What the workload hands every executor (simulator or real backend): requests, steps, lookups.

The simulator and the real backends consume exactly these objects, so "sim vs real" differs
only in how a step is priced or executed, never in what it contains.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class Request:
    """One sequence: its prompt and output token windows are cut from the trace."""

    id: int
    arrival_s: float
    prompt_len: int
    output_len: int
    trace_start: int  # index of the first prompt token in the trace


@dataclass(frozen=True, eq=False)
class Requests:
    """Every request as columns, request i in row i: 32 bytes a request, where a `Request` object
    costs ten times that. Indexing or iterating yields `Request`s."""

    arrival_s: np.ndarray  # float64
    prompt_len: np.ndarray  # int64
    output_len: np.ndarray  # int64
    trace_start: np.ndarray  # int64

    @property
    def window_len(self) -> np.ndarray:
        """Tokens of each request's window: its prompt and its output."""
        return self.prompt_len + self.output_len

    def __len__(self) -> int:
        return int(self.prompt_len.size)

    def __getitem__(self, i: int) -> Request:
        return Request(i, float(self.arrival_s[i]), int(self.prompt_len[i]), int(self.output_len[i]), int(self.trace_start[i]))

    def __iter__(self) -> Iterator[Request]:
        return (self[i] for i in range(len(self)))


@dataclass(frozen=True)
class LayerLookup:
    """The rows one step needs from one Engram layer's table (global row ids, offsets applied)."""

    layer: int
    rows: np.ndarray  # unique row ids, sorted, int64
    references: int  # row references before deduplication (tokens x heads)


@dataclass(frozen=True)
class Step:
    """One forward pass of the batch: prefill (whole prompts, or prompt chunks), one decode token
    per sequence, or both mixed (chunked prefill beside decodes)."""

    index: int
    kind: Literal["prefill", "decode", "mixed"]
    seq_ids: np.ndarray  # request ids in the batch, int64
    new_tokens: np.ndarray  # tokens each sequence feeds this step, int64
    context_lens: np.ndarray  # KV length of each sequence after this step, int64
    positions: np.ndarray = field(repr=False)  # flat index (into the workload's windows, end to end) of every token fed, int64
    lookups: Mapping[int, LayerLookup] = field(default_factory=dict, repr=False)  # by Engram layer; may be computed on first use
    pad: int = 0  # rows the GPU computes beyond the tokens fed (a decode batch padded to a CUDA-graph size)

    @cached_property
    def num_tokens(self) -> int:
        """Tokens fed (remembered: every kernel of the step asks)."""
        return int(self.new_tokens.sum())

    @property
    def num_seqs(self) -> int:
        return int(self.seq_ids.size)

    @property
    def compute_tokens(self) -> int:
        """Rows every GEMM of the step runs: the tokens fed plus the graph padding."""
        return self.num_tokens + self.pad

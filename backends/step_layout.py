"""The index tensors of one step, built once and used by every stand-in block (backends/standin.py).

A step's sequences are attended in groups: single-token sequences (decodes; MLA's absorbed form)
first, then multi-token ones (whole prompts and prompt chunks), each kind sorted by context length
and cut into at most `max_groups` groups padded to their longest member. The i-th sequence in that
order owns slot i of the KV buffer; a sequence with context c feeding n tokens writes its tokens at
positions c - n .. c - 1 of its slot and attends causally to positions 0 .. c - 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engramsim.backends.device import to_index
from engramsim.steps import Step


@dataclass(frozen=True)
class Group:
    """Sequences attended in one SDPA call: their queries, and their keys padded to `length`."""

    src: torch.Tensor  # rows of the step's flat tokens (one per sequence for single-token ones, else every token)
    dst: torch.Tensor | None  # multi-token: each token's row in the padded [size * queries] layout; None: single-token
    mask: torch.Tensor | None  # [size, 1, queries, length], True where a query may see a key; None: causal (whole prompts)
    context: torch.Tensor | None  # MLA multi-token: the KV buffer rows of every member's context
    context_dst: torch.Tensor | None  # ... and their rows in the padded [size * length] layout
    slot: int  # the group's first KV buffer slot
    size: int
    queries: int  # queries per sequence after padding (1 for single-token sequences)
    length: int  # keys per sequence after padding: the longest context


@dataclass(frozen=True)
class StepLayout:
    """Index tensors of one step, built once and used by every block."""

    tokens: int  # tokens fed
    rows: int  # rows every GEMM computes: the tokens and the graph padding
    groups: list[Group]
    cache_rows: torch.Tensor  # each fed token's row in the KV buffer viewed as [slots * max_context, width]
    absorbed: torch.Tensor  # MLA: rows in its absorbed products, single-token sequences by slot then the padding rows
    last: torch.Tensor  # each sequence's last token row (the LM head's input)


def _causal_mask(ctx: np.ndarray, new: np.ndarray, queries: int, length: int) -> np.ndarray:
    """[size, 1, queries, length]: query i of a sequence with context c feeding n tokens sees
    keys j <= c - n + i (its cached positions and its new ones up to itself) and j < c."""
    i = np.arange(queries)[None, :, None]
    j = np.arange(length)[None, None, :]
    return ((j <= (ctx - new)[:, None, None] + i) & (j < ctx[:, None, None]))[:, None]


def step_layout(step: Step, device: torch.device, max_groups: int, capacity: int, mla: bool) -> StepLayout:
    """The step's groups and KV buffer rows; `capacity` is the buffer's positions per slot."""
    new, ctx = step.new_tokens, step.context_lens
    first = np.cumsum(new) - new  # each sequence's first row in the flat batch
    slots = np.empty(new.size, dtype=np.int64)
    groups, slot = [], 0
    for multi in (False, True):  # single-token sequences (absorbed in MLA) first, then multi-token ones
        of_kind = np.flatnonzero((new > 1) == multi)
        if not of_kind.size:
            continue
        order = of_kind[np.argsort(ctx[of_kind], kind="stable")]
        for members in np.array_split(order, min(max_groups, order.size)):
            size, length = int(members.size), int(ctx[members].max())
            slots[members] = slot + np.arange(size)
            c, n = ctx[members], new[members]
            if not multi:
                valid = np.arange(length)[None, :] < c[:, None]
                mask = torch.from_numpy(valid).to(device).view(size, 1, 1, length)
                groups.append(Group(to_index(first[members], device), None, mask, None, None, slot, size, 1, length))
            else:
                queries = int(n.max())
                within = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
                src = np.repeat(first[members], n) + within
                dst = np.repeat(np.arange(size) * queries, n) + within
                causal = None if np.array_equal(c, n) else torch.from_numpy(_causal_mask(c, n, queries, length)).to(device)
                context = context_dst = None
                if mla:
                    at = np.arange(c.sum()) - np.repeat(np.cumsum(c) - c, c)
                    context = to_index(np.repeat(slots[members] * capacity, c) + at, device)
                    context_dst = to_index(np.repeat(np.arange(size) * length, c) + at, device)
                groups.append(Group(to_index(src, device), to_index(dst, device), causal, context, context_dst, slot, size,
                                    queries, length))
            slot += size
    position = np.repeat(ctx - new, new) + np.arange(step.num_tokens) - np.repeat(first, new)
    cache_rows = np.repeat(slots * capacity, new) + position
    single = np.flatnonzero(new == 1)
    absorbed = np.concatenate([first[single[np.argsort(slots[single])]], np.arange(step.num_tokens, step.compute_tokens)])
    return StepLayout(step.num_tokens, step.compute_tokens, groups, to_index(cache_rows, device), to_index(absorbed, device),
                      to_index(first + new - 1, device))

"""Stand-in backbone blocks: real matmuls and attention at the scenario's shapes, random weights.

They do the work simulator/cost.py prices, so measured and simulated step times compare: per
block RMSNorm, one fused q/k/v projection (grouped KV heads), attention, the o projection and
the residual add; RMSNorm, the SwiGLU MLP (or MoE: shared experts + top_k routed experts) and
the residual add; per step the final RMSNorm and the LM head on each sequence's last token.

Simplifications, each small next to the work kept:
- The input hidden states are a slice of a random buffer: no embedding lookup (a gather of a few
  KiB per step) and no sampling beyond an argmax over the logits.
- Attention reads one preallocated random KV buffer [slots, 2, kv_heads, max_context, head_dim],
  shared by all blocks: in a decode step the i-th sequence (by context length) reads slot i's
  first context_len positions, so every sequence reads its own memory, as with a real KV cache.
  Prefill attends causally over the prompt's fresh K/V. New K/V are not written back.
- Sequences are sorted by length and cut into at most `Device.attention_groups` groups, each
  padded to its longest member (right padding: causal masking already hides it in prefill, a key
  mask hides it in decode), so attention is a few batched SDPA calls rather than one per
  sequence. On a GPU several groups keep the padded KV reads close to the real ones; on the CPU,
  where each call costs tens of microseconds of dispatch and the KV reads are small next to the
  weights, one group is closer to the single varlen attention kernel a serving engine runs.
- MoE routing is top_k of the softmax of random router weights, close to uniform; the experts run
  one after another on the tokens routed to them, which costs one host sync per MoE block.
- No RMSNorm weights (they are ones) and no mHC branches in the backbone (cost.py ignores both).
- The 2-D weights are stored and multiplied the way the device's `Linear` says (CPU: prepacked
  for oneDNN, as CPU inference engines run linear layers; CUDA: plain x @ w); the stacked MoE
  experts always use plain matmul.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engramsim.backends.device import PLAIN, Linear, to_index
from engramsim.hbm import longest_sequence, step_tokens_limit
from engramsim.scenario import Backbone
from engramsim.steps import Step
from engramsim.workload import Workload


@dataclass(frozen=True)
class Limits:
    """The largest step a run can see; sizes the preallocated buffers."""

    tokens: int  # most tokens one step feeds
    seqs: int  # most sequences one step holds
    context: int  # longest context of any sequence


def step_limits(workload: Workload) -> Limits:
    """Bounds from the batching knobs and the requests (the same the HBM budget counts)."""
    return Limits(step_tokens_limit(workload), min(workload.max_num_seqs, len(workload.requests)), longest_sequence(workload))


def block_shapes(cfg: Backbone, block: int) -> dict[str, tuple[int, ...]]:
    """Weight shapes of one block ([in, out] per matrix; experts stacked in front)."""
    att = cfg.attention
    shapes: dict[str, tuple[int, ...]] = {
        "qkv": (cfg.hidden, (att.heads + 2 * att.kv_heads) * att.head_dim),
        "o": (att.heads * att.head_dim, cfg.hidden),
    }
    moe = cfg.moe
    if moe is None or block < moe.dense_layers:
        return shapes | {"gate_up": (cfg.hidden, 2 * cfg.intermediate), "down": (cfg.intermediate, cfg.hidden)}
    inter = moe.expert_intermediate
    shapes |= {
        "router": (cfg.hidden, moe.experts),
        "experts_gate_up": (moe.experts, cfg.hidden, 2 * inter),
        "experts_down": (moe.experts, inter, cfg.hidden),
    }
    if moe.shared_experts:  # the shared experts run on every token: one wider SwiGLU
        width = inter * moe.shared_experts
        shapes |= {"gate_up": (cfg.hidden, 2 * width), "down": (width, cfg.hidden)}
    return shapes


def nbytes(cfg: Backbone, limits: Limits, dtype_bytes: int) -> dict[str, int]:
    """What `StandIn` allocates (weights, KV buffer) and a generous bound on a step's activations."""
    att, b = cfg.attention, dtype_bytes
    params = sum(math.prod(s) for block in range(cfg.layers) for s in block_shapes(cfg, block).values())
    params += cfg.hidden * cfg.vocab
    kv = limits.seqs * 2 * att.kv_heads * limits.context * att.head_dim * b
    moe = cfg.moe
    mlp = max(cfg.intermediate, (moe.shared_experts + moe.top_k) * moe.expert_intermediate if moe else 0)
    qkv = (att.heads + 2 * att.kv_heads) * att.head_dim
    per_token = 8 * cfg.hidden + 4 * qkv + 6 * mlp  # residual, norms, q/k/v (+ padded copies), SwiGLU
    activations = limits.tokens * per_token * b + limits.seqs * cfg.vocab * 4
    return {"stand-in weights": params * b, "KV buffer": kv, "activations": activations}


@dataclass(frozen=True)
class Group:
    """Sequences attended in one SDPA call, padded to `length`."""

    src: torch.Tensor  # rows of the step's flat tokens (prefill: every token; decode: one per sequence)
    dst: torch.Tensor | None  # prefill: each token's row in the padded [size * length] layout
    mask: torch.Tensor | None  # decode: [size, 1, 1, length], True where a key exists
    slot: int  # decode: the group's first KV buffer slot
    size: int
    length: int


@dataclass(frozen=True)
class StepLayout:
    """Index tensors of one step, built once and used by every block."""

    kind: str
    tokens: int
    groups: list[Group]
    last: torch.Tensor  # each sequence's last token row (the LM head's input)


def step_layout(step: Step, device: torch.device, max_groups: int) -> StepLayout:
    new, lengths = step.new_tokens, step.context_lens  # a prefill's context is its whole prompt
    first = np.cumsum(new) - new  # each sequence's first row in the flat batch
    order = np.argsort(lengths, kind="stable")
    groups, slot = [], 0
    for members in np.array_split(order, min(max_groups, order.size)):
        length = int(lengths[members].max())
        size = int(members.size)
        if step.kind == "prefill":
            counts = new[members]
            within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            src = np.repeat(first[members], counts) + within
            dst = np.repeat(np.arange(size) * length, counts) + within
            groups.append(Group(to_index(src, device), to_index(dst, device), None, 0, size, length))
        else:
            valid = np.arange(length)[None, :] < lengths[members][:, None]
            mask = torch.from_numpy(valid).to(device).view(size, 1, 1, length)
            groups.append(Group(to_index(first[members], device), None, mask, slot, size, length))
        slot += size
    return StepLayout(step.kind, step.num_tokens, groups, to_index(first + new - 1, device))


class StandIn:
    """Random-weight blocks and LM head of `cfg`, allocated on `device` in `dtype`."""

    def __init__(self, cfg: Backbone, limits: Limits, device: torch.device, dtype: torch.dtype,
                 generator: torch.Generator, linear: Linear = PLAIN) -> None:
        self.cfg = cfg
        self.mm = linear.apply
        att = cfg.attention
        self.heads, self.kv_heads, self.head_dim = att.heads, att.kv_heads, att.head_dim

        def draw(shape: tuple[int, ...], weight: bool = True) -> torch.Tensor:
            """N(0, 1) values; weights scaled by 1/sqrt(fan_in) so activations stay O(1)."""
            w = torch.randn(*shape, generator=generator, device=device, dtype=dtype)
            return w.mul_(shape[-2] ** -0.5) if weight else w

        def weight(shape: tuple[int, ...]) -> torch.Tensor:  # 2-D weights in the device's GEMM layout; experts stay stacked
            w = draw(shape)
            return linear.pack(w) if len(shape) == 2 else w

        self.blocks = [{name: weight(shape) for name, shape in block_shapes(cfg, b).items()} for b in range(cfg.layers)]
        self.lm_head = weight((cfg.hidden, cfg.vocab))
        self.kv = draw((limits.seqs, 2, att.kv_heads, limits.context, att.head_dim), weight=False)
        self.hidden_in = draw((limits.tokens, cfg.hidden), weight=False)

    def input(self, layout: StepLayout) -> torch.Tensor:
        """The step's hidden states entering block 0, [tokens, hidden]."""
        return self.hidden_in[: layout.tokens]

    def block(self, index: int, h: torch.Tensor, layout: StepLayout) -> torch.Tensor:
        w = self.blocks[index]
        tokens, hd = h.shape[0], self.head_dim
        q, k, v = self.mm(F.rms_norm(h, (h.shape[-1],)), w["qkv"]).split(
            [self.heads * hd, self.kv_heads * hd, self.kv_heads * hd], dim=-1)
        attended = self._attention(q.view(tokens, self.heads, hd), k.view(tokens, self.kv_heads, hd),
                                   v.view(tokens, self.kv_heads, hd), layout)
        h = h + self.mm(attended, w["o"])
        x = F.rms_norm(h, (h.shape[-1],))
        return h + (self._moe(x, w) if "router" in w else _swiglu(x, w["gate_up"], w["down"], self.mm))

    def head(self, h: torch.Tensor, layout: StepLayout) -> torch.Tensor:
        """Final RMSNorm, LM head and greedy sampling on each sequence's last token."""
        x = F.rms_norm(h.index_select(0, layout.last), (h.shape[-1],))
        return self.mm(x, self.lm_head).float().argmax(dim=-1)

    def _attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: StepLayout) -> torch.Tensor:
        tokens, width = q.shape[0], self.heads * self.head_dim
        out = q.new_empty(tokens, width)
        for g in layout.groups:
            if (dst := g.dst) is not None:  # prefill: causal over each prompt's own tokens
                def pad(t: torch.Tensor) -> torch.Tensor:
                    padded = t.new_zeros(g.size * g.length, *t.shape[1:])
                    padded.index_copy_(0, dst, t.index_select(0, g.src))
                    return padded.view(g.size, g.length, *t.shape[1:]).transpose(1, 2)

                o = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), is_causal=True, enable_gqa=True)
                o = o.transpose(1, 2).reshape(g.size * g.length, width).index_select(0, dst)
            else:  # decode: one query per sequence against its KV slot; GQA as kv_heads x (heads / kv_heads) queries
                qg = q.index_select(0, g.src).view(g.size, self.kv_heads, self.heads // self.kv_heads, self.head_dim)
                kv = self.kv[g.slot : g.slot + g.size, :, :, : g.length]
                o = F.scaled_dot_product_attention(qg, kv[:, 0], kv[:, 1], attn_mask=g.mask).reshape(g.size, width)
            out.index_copy_(0, g.src, o)
        return out

    def _moe(self, x: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
        moe = self.cfg.moe
        assert moe is not None
        out = _swiglu(x, w["gate_up"], w["down"], self.mm) if "gate_up" in w else torch.zeros_like(x)
        gates, experts = self.mm(x, w["router"]).softmax(dim=-1).topk(moe.top_k, dim=-1)
        flat = experts.flatten()
        order = flat.argsort()
        token, gate = order // moe.top_k, gates.flatten()[order]
        routed = x.index_select(0, token)
        start = 0
        for e, count in enumerate(torch.bincount(flat, minlength=moe.experts).tolist()):
            if count:
                rows = slice(start, start + count)
                y = _swiglu(routed[rows], w["experts_gate_up"][e], w["experts_down"][e], torch.matmul) * gate[rows, None]
                out.index_add_(0, token[rows], y)
            start += count
        return out


def _swiglu(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, mm: Callable) -> torch.Tensor:
    gate, up = mm(x, gate_up).chunk(2, dim=-1)
    return mm(F.silu(gate) * up, down)

"""Stand-in backbone blocks: real matmuls and attention at the scenario's shapes, random weights.

They do the work of the kernel inventory simulator/cost.py prices (engramsim/kernels.py), so
measured and simulated step times compare. Per block, around each of its two sublayers
(attention, then the SwiGLU MLP or the MoE), either the plain residual add or, with mHC
(`hc_mult` n > 1), the [rows, n, hidden] residual streams: RMSNorm of the flattened streams, the
mixing GEMM n*hidden -> n*n + 2n, the pre-mix into the sublayer's input, and the post and
residual mix back into the streams. Per step, the final RMSNorm and the LM head on each
sequence's last token.

Attention. GQA: RMSNorm, one fused q/k/v GEMM, attention, the o GEMM. MLA: the query GEMM
(through an RMSNormed `q_lora_rank` latent when set), the KV down GEMM to the latent and the
shared rotary key, RMSNorm of the latent; then a sequence feeding one token attends in the
absorbed form (q_nope x W_UK into the latent space, scores and output over the cached latent +
rotary key, x W_UV) and a sequence feeding several tokens in the non-absorbed form (its whole
context's latent up-projected to per-head keys and values, then attention over heads); the o GEMM.

The KV cache is one preallocated random buffer [slots, max_context, width] (GQA: K and V of the
KV heads; MLA: latent + rotary key), shared by all blocks: the i-th sequence of a step (decodes
first, each kind by context length) owns slot i, so every sequence reads its own memory, as
with a real KV cache. Each step writes its new tokens' entries at their positions, then attends:
a sequence with context c feeding n tokens attends causally to its c - n cached positions and
its n new ones (a whole prompt: c = n; a chunk of a prompt: c > n; a decode: n = 1).

Padding. A step padded to a CUDA-graph batch (`Step.pad`) runs every GEMM, norm and mix over
`compute_tokens` rows (the pad rows are zeros; in MLA they join the absorbed products of the
single-token sequences); attention and the KV cache see real tokens only.

Simplifications, each small next to the work kept:
- The input hidden states are a slice of a random buffer: no embedding lookup (a gather of a few
  KiB per step) and no sampling beyond an argmax over the logits. With mHC the streams start as
  n copies of it; the head sums a sequence's streams before its final norm.
- Sequences of each kind are cut into at most `Device.attention_groups` groups by context length,
  each padded to its longest member (right padding: a key mask, or causal masking for whole
  prompts, hides it), so attention is a few batched SDPA calls rather than one per sequence. On
  a GPU several groups keep the padded KV reads close to the real ones; on the CPU, where each
  call costs tens of microseconds of dispatch and the KV reads are small next to the weights,
  one group is closer to the single varlen attention kernel a serving engine runs.
- MLA's attention calls get values as wide as their keys, because torch's fused (flash) attention
  needs equal widths and its fallback materialises every score (2-3x slower on a 2-core CPU): the absorbed
  form attends with the cached latent + rotary key as values and keeps the latent part of the
  output (as FlashMLA reads values from the same cache), the non-absorbed form pads values with
  zeros (as vLLM's MLA prefill does for FlashAttention 2). The padded part adds 2·H·rope_head_dim
  FLOPs per query-key pair, which the cost model does not count.
- No RMSNorm weights (they are ones); the mHC residual matrix takes one Sinkhorn iteration (the
  mHC paper, arXiv 2512.24880, runs 20 inside one fused kernel: here each would be two more
  dispatches of negligible work).
- MoE routing is top_k of the softmax of random router weights, close to uniform. The routed
  experts run as two grouped GEMMs over the tokens sorted by expert (`F.grouped_mm`, as a fused
  MoE kernel runs them: each touched expert's weights read once, no host sync); where torch has
  no grouped GEMM for the device and dtype they run one after another (one host sync per block).
- The 2-D weights are stored and multiplied the way the device's `Linear` says (CPU: prepacked
  for oneDNN, as CPU inference engines run linear layers; CUDA: plain x @ w); the stacked MoE
  experts and MLA's latent up-projection (used both whole and split per head) use plain matmul.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engramsim.backends.device import PLAIN, Linear
from engramsim.backends.step_layout import Group, StepLayout, step_layout
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


def mix_width(hc: int) -> int:
    """Mixing coefficients an mHC sublayer computes per token: n pre, n post, n x n residual."""
    return hc * hc + 2 * hc


def block_shapes(cfg: Backbone, block: int) -> dict[str, tuple[int, ...]]:
    """Weight shapes of one block ([in, out] per matrix; experts stacked in front; MLA's latent
    up-projection as [kv_lora_rank, heads, 2 (key, value), head_dim])."""
    att, hidden = cfg.attention, cfg.hidden
    shapes: dict[str, tuple[int, ...]] = {}
    if att.kind == "gqa":
        shapes["qkv"] = (hidden, (att.heads + 2 * att.kv_heads) * att.head_dim)
    else:
        q_out = att.heads * (att.head_dim + att.rope_head_dim)
        shapes |= {"q": (hidden, q_out)} if att.q_lora_rank == 0 else {"q_a": (hidden, att.q_lora_rank), "q_b": (att.q_lora_rank, q_out)}
        shapes |= {"kv_a": (hidden, att.kv_lora_rank + att.rope_head_dim), "kv_b": (att.kv_lora_rank, att.heads, 2, att.head_dim)}
    shapes["o"] = (att.heads * att.head_dim, hidden)
    if cfg.hc_mult > 1:
        shapes |= {"mix_attention": (cfg.hc_mult * hidden, mix_width(cfg.hc_mult)), "mix_mlp": (cfg.hc_mult * hidden, mix_width(cfg.hc_mult))}
    moe = cfg.moe
    if moe is None or block < moe.dense_layers:
        return shapes | {"gate_up": (hidden, 2 * cfg.intermediate), "down": (cfg.intermediate, hidden)}
    inter = moe.expert_intermediate
    shapes |= {
        "router": (hidden, moe.experts),
        "experts_gate_up": (moe.experts, hidden, 2 * inter),
        "experts_down": (moe.experts, inter, hidden),
    }
    if moe.shared_experts:  # the shared experts run on every token: one wider SwiGLU
        width = inter * moe.shared_experts
        shapes |= {"gate_up": (hidden, 2 * width), "down": (width, hidden)}
    return shapes


def kv_width(cfg: Backbone) -> int:
    """Values one token keeps in the KV buffer per block (GQA: K and V of every KV head; MLA:
    the latent and the shared rotary key), as engramsim/hbm.py's kv_bytes_per_token counts them."""
    att = cfg.attention
    return 2 * att.kv_heads * att.head_dim if att.kind == "gqa" else att.kv_lora_rank + att.rope_head_dim


def nbytes(cfg: Backbone, limits: Limits, dtype_bytes: int) -> dict[str, int]:
    """What `StandIn` allocates (weights, KV buffer) and a generous bound on a step's activations."""
    att, b, n = cfg.attention, dtype_bytes, cfg.hc_mult
    params = sum(math.prod(s) for block in range(cfg.layers) for s in block_shapes(cfg, block).values())
    params += cfg.hidden * cfg.vocab
    kv = limits.seqs * limits.context * kv_width(cfg) * b
    moe = cfg.moe
    mlp = max(cfg.intermediate, (moe.shared_experts + moe.top_k) * moe.expert_intermediate if moe else 0)
    if att.kind == "gqa":
        qkv = (att.heads + 2 * att.kv_heads) * att.head_dim
        context_rows = 0
    else:  # q, the new latents, the absorbed query and output, padded q/k/v copies
        qkv = 3 * att.heads * (att.head_dim + att.rope_head_dim) + att.kv_lora_rank + att.heads * att.kv_lora_rank
        # non-absorbed: each multi-token sequence's context up-projected and padded into keys and values (whole
        # prompts: the step's tokens; a prompt chunk adds its cached context, at most one longest sequence)
        context_rows = (limits.tokens + limits.context) * 2 * att.heads * 2 * (att.head_dim + att.rope_head_dim)  # keys, padded values
    per_token = 8 * cfg.hidden + 4 * qkv + 6 * mlp + (6 * n * cfg.hidden + 2 * mix_width(n) if n > 1 else 0)
    activations = (limits.tokens * per_token + context_rows) * b + limits.seqs * cfg.vocab * 4
    return {"stand-in weights": params * b, "KV buffer": kv, "activations": activations}


def grouped_gemm_runs(x: torch.Tensor, weights: torch.Tensor) -> bool:
    """Does torch run `F.grouped_mm` for these operands on their device (CUDA kernels need
    bf16 on recent GPUs; older torch has none)?"""
    try:
        F.grouped_mm(x, weights, offs=torch.full((weights.shape[0],), x.shape[0], dtype=torch.int32, device=x.device))
    except (AttributeError, NotImplementedError, RuntimeError):
        return False
    return True


class StandIn:
    """Random-weight blocks and LM head of `cfg`, allocated on `device` in `dtype`."""

    def __init__(self, cfg: Backbone, limits: Limits, device: torch.device, dtype: torch.dtype,
                 generator: torch.Generator, linear: Linear = PLAIN) -> None:
        self.cfg = cfg
        self.mm = linear.apply
        self.capacity = limits.context

        def draw(shape: tuple[int, ...], fan_in: int | None = None) -> torch.Tensor:
            """N(0, 1) values; weights scaled by 1/sqrt(fan_in) so activations stay O(1)."""
            w = torch.randn(*shape, generator=generator, device=device, dtype=dtype)
            return w if fan_in is None else w.mul_(fan_in ** -0.5)

        def weight(name: str, shape: tuple[int, ...]) -> torch.Tensor:  # 2-D weights in the device's GEMM layout
            w = draw(shape, shape[0] if name == "kv_b" else shape[-2])
            return linear.pack(w) if len(shape) == 2 else w

        self.blocks = [{name: weight(name, shape) for name, shape in block_shapes(cfg, b).items()} for b in range(cfg.layers)]
        self.lm_head = weight("lm_head", (cfg.hidden, cfg.vocab))
        self.kv = draw((limits.seqs, limits.context, kv_width(cfg)))
        self.hidden_in = draw((limits.tokens, cfg.hidden))
        experts = next((w for w in self.blocks if "experts_gate_up" in w), None)
        self.grouped = experts is not None and grouped_gemm_runs(self.hidden_in[:1], experts["experts_gate_up"])

    def layout(self, step: Step, max_groups: int) -> StepLayout:
        """The step's index tensors for this stand-in's KV buffer."""
        return step_layout(step, self.kv.device, max_groups, self.capacity, self.cfg.attention.kind == "mla")

    def input(self, layout: StepLayout) -> torch.Tensor:
        """The step's hidden states entering block 0: [rows, hidden], or [rows, hc_mult, hidden] streams."""
        h = self.hidden_in[: layout.tokens]
        if layout.rows > layout.tokens:
            h = F.pad(h, (0, 0, 0, layout.rows - layout.tokens))
        n = self.cfg.hc_mult
        return h if n == 1 else h.unsqueeze(1).repeat(1, n, 1)

    def block(self, index: int, h: torch.Tensor, layout: StepLayout) -> torch.Tensor:
        w = self.blocks[index]
        h = self._sublayer(h, w.get("mix_attention"), lambda x: self._attention(_norm(x), w, layout))
        return self._sublayer(h, w.get("mix_mlp"), lambda x: self._moe(_norm(x), w) if "router" in w
                              else _swiglu(_norm(x), w["gate_up"], w["down"], self.mm))

    def head(self, h: torch.Tensor, layout: StepLayout) -> torch.Tensor:
        """Final RMSNorm, LM head and greedy sampling on each sequence's last token."""
        x = h.index_select(0, layout.last)
        if x.dim() == 3:  # mHC: the sequence's streams summed
            x = x.sum(dim=1)
        return self.mm(_norm(x), self.lm_head).float().argmax(dim=-1)

    # ---- residual ------------------------------------------------------------------------------
    def _sublayer(self, h: torch.Tensor, mix: torch.Tensor | None, f: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """h + f(h), or with mHC streams [rows, n, hidden]: mixing coefficients from the RMSNormed
        flattened streams, f on their pre-mix, then the residual and post mix back into n streams."""
        if mix is None:
            return h + f(h)
        rows, n, hidden = h.shape
        coeff = self.mm(_norm(h.view(rows, n * hidden)), mix)
        gates = torch.sigmoid(coeff[:, : 2 * n])  # pre, and post / 2
        res = coeff[:, 2 * n :].view(rows, n, n).softmax(dim=-1)  # one Sinkhorn iteration: rows, then columns
        res = res / res.sum(dim=-2, keepdim=True)
        y = f(torch.bmm(gates[:, None, :n], h).squeeze(1))  # pre-mix: read n*hidden, write hidden
        # post + residual mix, res @ h + 2 sigmoid(post) * y: read n*hidden + hidden, write n*hidden
        return torch.baddbmm(gates[:, n:, None] * y.unsqueeze(1), res, h, beta=2.0)

    # ---- attention -----------------------------------------------------------------------------
    def _attention(self, x: torch.Tensor, w: dict[str, torch.Tensor], layout: StepLayout) -> torch.Tensor:
        """The attention sublayer after its input norm, o projection included."""
        att = self.cfg.attention
        out = x.new_empty(layout.rows, att.heads * att.head_dim)
        out[layout.tokens :].zero_()  # pad rows
        if att.kind == "gqa":
            self._gqa(x, w, layout, out)
        else:
            self._mla(x, w, layout, out)
        return self.mm(out, w["o"])

    def _gqa(self, x: torch.Tensor, w: dict[str, torch.Tensor], layout: StepLayout, out: torch.Tensor) -> None:
        att, tokens = self.cfg.attention, layout.tokens
        heads, kv_heads, hd = att.heads, att.kv_heads, att.head_dim
        qkv = self.mm(x, w["qkv"])
        self.kv.view(-1, self.kv.shape[-1]).index_copy_(0, layout.cache_rows, qkv[:tokens, heads * hd :])
        q = qkv[:, : heads * hd].view(-1, heads, hd)
        for g in layout.groups:
            cache = self.kv[g.slot : g.slot + g.size, : g.length].view(g.size, g.length, 2, kv_heads, hd)
            k, v = cache[:, :, 0].transpose(1, 2), cache[:, :, 1].transpose(1, 2)  # [size, kv_heads, length, head_dim]
            if g.dst is None:  # one query per sequence; GQA as kv_heads x (heads / kv_heads) queries
                qg = q.index_select(0, g.src).view(g.size, kv_heads, heads // kv_heads, hd)
                o = F.scaled_dot_product_attention(qg, k, v, attn_mask=g.mask).reshape(g.size, heads * hd)
            else:
                o = F.scaled_dot_product_attention(_pad(q, g), k, v, attn_mask=g.mask, is_causal=g.mask is None, enable_gqa=True)
                o = _unpad(o, g)
            out.index_copy_(0, g.src, o)

    def _mla(self, x: torch.Tensor, w: dict[str, torch.Tensor], layout: StepLayout, out: torch.Tensor) -> None:
        att, tokens = self.cfg.attention, layout.tokens
        heads, hd, rope, rank = att.heads, att.head_dim, att.rope_head_dim, att.kv_lora_rank
        q = (self.mm(x, w["q"]) if "q" in w else self.mm(_norm(self.mm(x, w["q_a"])), w["q_b"])).view(-1, heads, hd + rope)
        latent = self.mm(x, w["kv_a"])
        latent[:, :rank] = _norm(latent[:, :rank])
        cache = self.kv.view(-1, rank + rope)
        cache.index_copy_(0, layout.cache_rows, latent[:tokens])
        up = w["kv_b"]  # [rank, heads, 2, head_dim]
        absorbed = q.index_select(0, layout.absorbed)  # single-token sequences' and padding rows, one launch each way
        q_latent = torch.bmm(absorbed[:, :, :hd].transpose(0, 1), up[:, :, 0].permute(1, 2, 0)).transpose(0, 1)  # x W_UK
        o_latent = q_latent.new_zeros(q_latent.shape)  # the padding rows attend to nothing
        for g in layout.groups:
            if g.dst is None:  # absorbed: one KV "head" (latent + rotary key) for all heads, output in the latent space
                rows = slice(g.slot, g.slot + g.size)  # single-token sequences come first, by slot
                query = torch.cat((q_latent[rows], absorbed[rows, :, hd:]), dim=-1).unsqueeze(1)  # [size, 1, heads, rank + rope]
                kv = self.kv[g.slot : g.slot + g.size, : g.length].unsqueeze(1)
                o = F.scaled_dot_product_attention(query, kv, kv, attn_mask=g.mask, scale=(hd + rope) ** -0.5)  # values as wide as keys
                o_latent[rows] = o.squeeze(1)[..., :rank]
            else:  # non-absorbed: the members' whole contexts up-projected to per-head keys and values
                assert g.context is not None and g.context_dst is not None
                ctx = cache.index_select(0, g.context)
                kv_up = torch.matmul(ctx[:, :rank], up.view(rank, -1)).view(-1, heads, 2, hd)
                keys = q.new_zeros(g.size * g.length, heads, hd + rope)
                keys[:, :, :hd].index_copy_(0, g.context_dst, kv_up[:, :, 0])
                keys[:, :, hd:].index_copy_(0, g.context_dst, ctx[:, None, rank:].expand(-1, heads, -1))
                values = q.new_zeros(g.size * g.length, heads, hd + rope)  # zero-padded to the keys' width
                values[:, :, :hd].index_copy_(0, g.context_dst, kv_up[:, :, 1])
                k, v = (t.view(g.size, g.length, heads, -1).transpose(1, 2) for t in (keys, values))
                o = F.scaled_dot_product_attention(_pad(q, g), k, v, attn_mask=g.mask, is_causal=g.mask is None)
                out.index_copy_(0, g.src, _unpad(o[..., :hd], g))
        o = torch.bmm(o_latent.transpose(0, 1), up[:, :, 1].transpose(0, 1))  # x W_UV: [heads, rows, head_dim]
        out.index_copy_(0, layout.absorbed, o.transpose(0, 1).reshape(-1, heads * hd))

    # ---- MoE ---------------------------------------------------------------------------------------
    def _moe(self, x: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
        moe = self.cfg.moe
        assert moe is not None
        out = _swiglu(x, w["gate_up"], w["down"], self.mm) if "gate_up" in w else torch.zeros_like(x)
        gates, experts = self.mm(x, w["router"]).softmax(dim=-1).topk(moe.top_k, dim=-1)
        flat = experts.flatten()
        order = flat.argsort()  # (token, expert) pairs grouped by expert
        token = order // moe.top_k
        counts = torch.bincount(flat, minlength=moe.experts)
        routed = (self._experts_grouped if self.grouped else self._experts_looped)(x.index_select(0, token), counts, w)
        return out.index_add_(0, token, routed * gates.flatten()[order, None])

    @staticmethod
    def _experts_grouped(x: torch.Tensor, counts: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
        """The routed experts' SwiGLU on rows sorted by expert: two grouped GEMMs."""
        ends = counts.cumsum(0).to(torch.int32)
        gate, up = F.grouped_mm(x, w["experts_gate_up"], offs=ends).chunk(2, dim=-1)
        return F.grouped_mm(F.silu(gate) * up, w["experts_down"], offs=ends)

    @staticmethod
    def _experts_looped(x: torch.Tensor, counts: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
        """The same, one expert after another (the counts come to the host: one sync)."""
        out, start = torch.empty_like(x), 0
        for e, count in enumerate(counts.tolist()):
            if count:
                out[start : start + count] = _swiglu(x[start : start + count], w["experts_gate_up"][e], w["experts_down"][e],
                                                     torch.matmul)
            start += count
        return out


def _norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],))


def _pad(t: torch.Tensor, g: Group) -> torch.Tensor:
    """A multi-token group's rows of `t` [tokens, heads, dim] as [size, heads, queries, dim], zeros after each sequence."""
    assert g.dst is not None
    padded = t.new_zeros(g.size * g.queries, *t.shape[1:])
    padded.index_copy_(0, g.dst, t.index_select(0, g.src))
    return padded.view(g.size, g.queries, *t.shape[1:]).transpose(1, 2)


def _unpad(o: torch.Tensor, g: Group) -> torch.Tensor:
    """SDPA's [size, heads, queries, dim] back to the group's token rows [tokens, heads * dim]."""
    assert g.dst is not None
    return o.transpose(1, 2).reshape(g.size * g.queries, -1).index_select(0, g.dst)


def _swiglu(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, mm: Callable) -> torch.Tensor:
    gate, up = mm(x, gate_up).chunk(2, dim=-1)
    return mm(F.silu(gate) * up, down)

"""HBM is one budget: backbone weights, the KV cache, and whatever Engram keeps on the GPU (tables
placed there, caches, the staging buffers fetched rows land in) come out of the same memory.

`hbm_items` says what a pass keeps in HBM besides the KV cache, item by item, so a scenario that
does not fit is refused naming the item. The KV cache gets the rest, as nano-vLLM sizes it
(`allocate_kv_cache`): gpu_memory_utilization x HBM, less memory outside the engine's tensors
(CUDA context, library workspaces), less the peak the warm-up forward pass allocated (weights,
Engram's HBM items and `activation_peak_bytes`), in whole blocks (`kv_blocks`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from engramsim.scenario import DTYPE_BYTES, Backbone, Engram, Scenario
from engramsim.strategies import Cache, Placement, Prefetch, TableInfo, Tier, Transport, cache_bytes, tables_bytes
from engramsim.workload import Workload

if TYPE_CHECKING:
    from engramsim.scenario import Workload as WorkloadConfig


def attention_params(bb: Backbone) -> int:
    """One block's attention weights. GQA: q, k, v (grouped) and o. MLA: the query projection
    (through a `q_lora_rank` latent when it is set), the KV down-projection to the latent and the
    shared rotary key, the latent's up-projection to every head's key and value, and o."""
    att, h = bb.attention, bb.hidden
    if att.kind == "gqa":
        return h * (att.heads + 2 * att.kv_heads) * att.head_dim + att.heads * att.head_dim * h
    q_out = att.heads * (att.head_dim + att.rope_head_dim)
    q = h * q_out if att.q_lora_rank == 0 else h * att.q_lora_rank + att.q_lora_rank * q_out
    return q + h * (att.kv_lora_rank + att.rope_head_dim) + att.kv_lora_rank * att.heads * 2 * att.head_dim + att.heads * att.head_dim * h


def mhc_params(bb: Backbone) -> int:
    """One block's mHC weights: per sublayer (attention, MLP) the projection of the flattened
    hc_mult x hidden streams to the pre, post and residual mixing coefficients (n + n + n^2)."""
    n = bb.hc_mult
    return 0 if n == 1 else 2 * n * bb.hidden * (n * n + 2 * n)


def kv_bytes_per_token(bb: Backbone) -> int:
    """KV-cache bytes one token holds over all blocks. GQA: K and V of every KV head; MLA: the
    compressed latent and the shared rotary key."""
    att = bb.attention
    per_block = 2 * att.kv_heads * att.head_dim if att.kind == "gqa" else att.kv_lora_rank + att.rope_head_dim
    return int(bb.layers * per_block * DTYPE_BYTES[bb.dtype])


def backbone_params(bb: Backbone) -> int:
    """Weights of the backbone: per block the attention projections (`attention_params`), the mHC
    mixing (`mhc_params`) and the dense MLP or the MoE (router, routed and shared experts), plus
    untied embedding and LM head."""
    attention = attention_params(bb) + mhc_params(bb)
    dense = 3 * bb.hidden * bb.intermediate
    moe = bb.moe
    dense_blocks = bb.layers if moe is None else min(bb.layers, moe.dense_layers)
    params = bb.layers * attention + dense_blocks * dense + 2 * bb.hidden * bb.vocab
    if moe is not None:
        per_moe = bb.hidden * moe.experts + (moe.experts + moe.shared_experts) * 3 * bb.hidden * moe.expert_intermediate
        params += (bb.layers - dense_blocks) * per_moe
    return params


def engram_params(engram: Engram, hidden: int) -> int:
    """One Engram layer's weights: fused W_v + per-branch W_k, the RMSNorm weights, the depthwise conv."""
    hc = engram.hc_mult
    return engram.d_mem * (hc + 1) * hidden + (hc + 1) * hidden + 3 * hc * hidden + hc * hidden * engram.kernel_size


def step_tokens_limit(workload: Workload) -> int:
    """The most tokens one step can feed: a prefill is bounded by the batching knobs and the
    prompts, a decode by the sequences."""
    prefill = min(workload.max_num_batched_tokens, workload.total_prompt_tokens)
    return max(prefill, min(workload.max_num_seqs, len(workload.requests)))


def longest_sequence(workload: Workload) -> int:
    """The most tokens any sequence holds in the KV cache: its prompt and its output but the last
    token (sampled, never fed back)."""
    return int(workload.requests.window_len.max(initial=1)) - 1


def staging_rows(table: TableInfo, engram: Engram, workload: Workload, prefetch: Prefetch) -> int:
    """Rows of one staging slot: a step's tokens x heads never need more distinct rows, plus the
    prefetch's speculative budget."""
    return min(table.rows, step_tokens_limit(workload) * engram.heads_per_layer) + prefetch.speculative_budget(table.layer)


def staging_slots(prefetch: Prefetch) -> int:
    """Fetches of one layer that can be in flight or waiting at once: this step's and one per step of lead."""
    return 1 + prefetch.horizon


def staging_bytes(tables: dict[int, TableInfo], engram: Engram, workload: Workload, prefetch: Prefetch,
                  landing_row_bytes: Callable[[int], int] | None = None) -> int:
    """All staging (and landing) slots of all Engram layers, in bytes; `landing_row_bytes`: what
    one row of a table's row bytes takes in a slot (None: the row itself)."""
    size = landing_row_bytes or (lambda row_bytes: row_bytes)
    return sum(staging_slots(prefetch) * staging_rows(t, engram, workload, prefetch) * size(t.row_bytes) for t in tables.values())


def staged_bytes(tables: dict[int, TableInfo], workload: Workload, prefetch: Prefetch) -> int:
    """The staging area for rows fetched ahead of the step they serve (`Prefetch.staged_rows`:
    right guesses kept for the next step, waiting requests' prompt rows), all layers, in bytes."""
    timed = bool((workload.requests.arrival_s > 0).any())
    return sum(prefetch.staged_rows(layer, timed) * t.row_bytes for layer, t in tables.items())


def warmup_batch(cfg: WorkloadConfig) -> tuple[int, int]:
    """(sequences, tokens each) of nano-vLLM's warm-up pass (model_runner.py, `warmup_model`):
    sequences of min(max_num_batched_tokens, max_model_len) tokens, as many as max_num_batched_tokens
    holds, at most max_num_seqs; max_model_len is taken as the scenario's longest prompt + output
    (a server configured for its workload)."""
    budget = cfg.batching.max_num_batched_tokens
    seq_len = min(budget, cfg.prompt_len.max + cfg.output_len.max)
    return min(budget // seq_len, cfg.batching.max_num_seqs), seq_len


def block_activation_width(bb: Backbone, engram: Engram | None) -> int:
    """Values one token keeps live at the peak of its widest block during a prefill: the residual
    stream (hc_mult streams), the sublayer's input and output, and the widest sublayer's
    intermediates. Attention, GQA: q, k, v and the output; MLA: the query latent, the query, the
    KV latent and rotary key, the latent up-projected to every head's key and value (the prefill's
    non-absorbed form) and the output. MLP: gate and up, and their product; MoE: that for each
    routed and shared expert a token visits, and the router's logits. Engram: the memory vector,
    the fused value and per-branch key projections, and the normalised query, gated value and
    convolution output of every branch (ENGRAM.md, the module)."""
    att, hidden = bb.attention, bb.hidden
    if att.kind == "gqa":
        attention = (att.heads + 2 * att.kv_heads) * att.head_dim + att.heads * att.head_dim
    else:
        attention = (att.q_lora_rank + att.heads * (att.head_dim + att.rope_head_dim) + att.kv_lora_rank + att.rope_head_dim
                     + 3 * att.heads * att.head_dim)
    widths = [attention]
    moe = bb.moe
    if moe is None or moe.dense_layers > 0:
        widths.append(3 * bb.intermediate)
    if moe is not None and bb.layers > moe.dense_layers:
        widths.append(3 * moe.expert_intermediate * (moe.top_k + moe.shared_experts) + moe.experts)
    if engram is not None:
        widths.append(engram.d_mem + (engram.hc_mult + 1) * hidden + 3 * engram.hc_mult * hidden)
    return (bb.hc_mult + 2) * hidden + max(widths)


def activation_peak_bytes(scenario: Scenario, engram: bool) -> int:
    """The most bytes nano-vLLM's warm-up pass allocates beyond the weights (its
    `allocate_kv_cache` subtracts that peak): the widest block's live activations over the
    warm-up's tokens (`warmup_batch`, `block_activation_width`; with the Engram layers when the
    pass has them) and the logits of each warm-up sequence's last token, in the model's dtype and
    the fp32 copy the sampler takes. Activations are bf16 unless the model is fp32: fp8 GEMMs
    take and give bf16 activations (DeepSeek-V3 technical report, section 3.3)."""
    bb = scenario.model.backbone
    seqs, seq_len = warmup_batch(scenario.workload)
    act = 4 if bb.dtype == "fp32" else 2
    width = block_activation_width(bb, scenario.model.engram if engram else None)
    return seqs * seq_len * width * act + seqs * bb.vocab * (act + 4)


def backbone_items(scenario: Scenario, reserved: int, engram: bool) -> dict[str, int]:
    """Bytes of HBM a pass takes whatever Engram keeps there: the weights, the warm-up's activation
    peak and the memory outside the engine's tensors (`reserved`)."""
    return {
        "backbone weights": int(backbone_params(scenario.model.backbone) * DTYPE_BYTES[scenario.model.backbone.dtype]),
        "warm-up activations": activation_peak_bytes(scenario, engram),
        "reserved (CUDA context, workspaces)": reserved,
    }


def hbm_items(scenario: Scenario, tables: dict[int, TableInfo], workload: Workload, placement: Placement,
              cache: Cache, prefetch: Prefetch, transport: Transport, reserved: int) -> dict[str, int]:
    """Bytes a pass with Engram keeps in HBM besides the KV cache, by item (names are the keys of
    session.HBM_FIELDS)."""
    bb, engram = scenario.model.backbone, scenario.model.engram
    per_tier = placement.bytes_per_tier()
    in_hbm = per_tier.get(Tier.HBM, 0)
    offloaded = tables_bytes(tables) > in_hbm
    tiers = frozenset(tier for tier, size in per_tier.items() if size > 0)
    return backbone_items(scenario, reserved, engram=True) | {
        "Engram modules": int(len(tables) * engram_params(engram, bb.hidden) * DTYPE_BYTES[bb.dtype]),
        "Engram tables in HBM": in_hbm,
        "Engram caches": cache_bytes(tables, cache.capacity_rows, cache.shared),
        "Engram staging buffers": staging_bytes(tables, engram, workload, prefetch,
                                                lambda row_bytes: transport.landing_row_bytes(row_bytes, tiers)) if offloaded else 0,
        "Engram staged rows": staged_bytes(tables, workload, prefetch) if offloaded else 0,
    }


def kv_blocks(usable_bytes: float, items: dict[str, int], block_bytes: int) -> int:
    """Whole KV-cache blocks in what the items leave of the usable HBM (0 when they leave nothing),
    as nano-vLLM's `allocate_kv_cache` counts them."""
    return max(0, int(usable_bytes - sum(items.values())) // block_bytes)

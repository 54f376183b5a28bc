"""HBM is one budget: backbone weights, the KV cache, and whatever Engram keeps on the GPU (tables
placed there, caches, the staging buffers fetched rows land in) come out of the same memory.

`hbm_items` says what a pass keeps in HBM, item by item, so a scenario that does not fit is
refused naming the item, and the results report what is left for the KV cache. The KV cache is
counted at its minimum, one longest sequence: serving needs at least that to make progress, and
everything above it is what the rest leaves free (`kv_free_bytes`).
"""

from __future__ import annotations

from engramsim.scenario import DTYPE_BYTES, Backbone, Engram, Scenario
from engramsim.strategies import Cache, Placement, Prefetch, TableInfo, Tier, cache_bytes, tables_bytes
from engramsim.workload import Workload


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
    """The most tokens any sequence holds in the KV cache: its prompt and all its output."""
    return int(workload.requests.window_len.max())


def staging_rows(table: TableInfo, engram: Engram, workload: Workload, prefetch: Prefetch) -> int:
    """Rows of one staging slot: a step's tokens x heads never need more distinct rows, plus the
    prefetch's speculative budget."""
    return min(table.rows, step_tokens_limit(workload) * engram.heads_per_layer) + prefetch.speculative_budget(table.layer)


def staging_slots(prefetch: Prefetch) -> int:
    """Fetches of one layer that can be in flight or waiting at once: this step's and one per step of lead."""
    return 1 + prefetch.horizon


def staging_bytes(tables: dict[int, TableInfo], engram: Engram, workload: Workload, prefetch: Prefetch) -> int:
    """All staging (and landing) slots of all Engram layers, in bytes."""
    return sum(staging_slots(prefetch) * staging_rows(t, engram, workload, prefetch) * t.row_bytes for t in tables.values())


def hbm_items(scenario: Scenario, tables: dict[int, TableInfo], workload: Workload, placement: Placement,
              cache: Cache, prefetch: Prefetch) -> dict[str, int]:
    """Bytes a pass keeps in HBM, by item (names are the keys of session.HBM_FIELDS)."""
    bb, engram = scenario.model.backbone, scenario.model.engram
    b = DTYPE_BYTES[bb.dtype]
    in_hbm = placement.bytes_per_tier().get(Tier.HBM, 0)
    offloaded = tables_bytes(tables) > in_hbm
    return {
        "backbone weights": int(backbone_params(bb) * b),
        "Engram modules": int(len(tables) * engram_params(engram, bb.hidden) * b),
        "Engram tables in HBM": in_hbm,
        "Engram caches": cache_bytes(tables, cache.capacity_rows),
        "Engram staging buffers": staging_bytes(tables, engram, workload, prefetch) if offloaded else 0,
        "KV cache (one longest sequence)": kv_bytes_per_token(bb) * longest_sequence(workload),
    }


def kv_free_bytes(items: dict[str, int], hbm_bytes: float) -> int:
    """HBM left for the KV cache beyond its minimum, once everything else is placed."""
    return int(hbm_bytes - sum(items.values()))

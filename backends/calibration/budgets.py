"""How much a calibration measures, and the cases it measures: fetch sizes, stand-in backbone
shapes and their steps, and the small scenario whose real passes time the per-step host work."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from engramsim.scenario import Model
from engramsim.steps import Step

GIB = 1 << 30
MIB = 1 << 20
KIB = 1 << 10


@dataclass(frozen=True)
class Budget:
    """How much to measure. `tiny` is for tests (seconds), `quick` about a minute, `full` longer."""

    name: str
    table_bytes: int  # the gather's table: several times the last-level cache, like real Engram tables
    gather_rows: tuple[int, ...]  # rows per fetch (staged: gathered, then copied; zero-copy: read)
    row_bytes: tuple[int, ...]
    repeats: int  # timings per case; the median is the sample
    prefill_tokens: tuple[tuple[int, int], ...]  # (sequences, tokens each)
    decode_cases: tuple[tuple[int, int], ...]  # (batch, context); a batch at several contexts tells the KV reads' rate apart
    shapes: int  # how many backbone shapes of the backend's list
    interference_cases: int
    host_batches: tuple[int, ...]  # max_num_seqs of the short real passes that time the per-step host work
    host_steps: int  # steps of each of those passes
    size_tables: tuple[int, ...] = ()  # table sizes (bytes) the gather is timed on against size; those the memory allows


def _geometric(lo: int, hi: int, factor: int) -> tuple[int, ...]:
    out, v = [], lo
    while v <= hi:
        out.append(v)
        v *= factor
    return tuple(out)


BUDGETS: dict[str, Budget] = {
    "tiny": Budget("tiny", 64 * MIB, (64, 512, 4096, 16384), (128, 256), 3,
                   ((1, 16), (2, 64)), ((1, 64), (4, 128)), 1, 1, (2, 8), 6, (16 * MIB, 64 * MIB)),
    "quick": Budget("quick", 1 * GIB, _geometric(64, 65536, 4), (128, 160, 256, 512), 7,
                    ((1, 32), (1, 128), (2, 256), (4, 256), (8, 256)),
                    ((1, 128), (2, 128), (4, 256), (8, 128), (8, 512), (16, 256), (32, 128), (32, 512)),
                    4, 3, (2, 8, 32), 40, (256 * MIB, 1 * GIB, 4 * GIB)),
    "full": Budget("full", 2 * GIB, _geometric(16, 262144, 2), (128, 160, 256, 512), 9,
                   ((1, 16), (1, 64), (1, 256), (2, 256), (4, 256), (8, 256), (4, 512), (16, 128)),
                   ((1, 64), (1, 1024), (2, 128), (4, 256), (8, 512), (16, 128), (16, 1024), (32, 256), (64, 512)), 5, 6,
                   (1, 4, 16, 64), 60, tuple((256 * MIB) << k for k in range(12))),  # 256 MiB .. 512 GiB
}


@dataclass(frozen=True)
class Experts:
    """The MoE of a measured shape (every block routed: dense_layers 0)."""

    experts: int
    top_k: int
    shared: int
    intermediate: int


@dataclass(frozen=True)
class Latent:
    """The multi-head latent attention of a measured shape (its heads and head_dim are the shape's)."""

    kv_lora_rank: int
    rope_head_dim: int
    q_lora_rank: int


@dataclass(frozen=True)
class Shape:
    """A stand-in backbone measured by the calibration (blocks cycled like a real step)."""

    name: str
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    layers: int  # distinct blocks cycled through, so the weights do not all sit in cache
    moe: Experts | None = None
    mla: Latent | None = None
    hc_mult: int = 1  # mHC residual streams

    def backbone(self, dtype: str) -> dict[str, Any]:
        """The scenario's `model.backbone` section of this shape."""
        attention: dict[str, Any] = {"heads": self.heads, "kv_heads": self.kv_heads, "head_dim": self.head_dim}
        if self.mla is not None:
            attention |= {"kind": "mla", "kv_lora_rank": self.mla.kv_lora_rank, "rope_head_dim": self.mla.rope_head_dim,
                          "q_lora_rank": self.mla.q_lora_rank}
        moe = self.moe and {"experts": self.moe.experts, "top_k": self.moe.top_k, "shared_experts": self.moe.shared,
                            "expert_intermediate": self.moe.intermediate, "dense_layers": 0}
        return {"layers": self.layers, "hidden": self.hidden, "intermediate": self.intermediate, "vocab": self.vocab,
                "dtype": dtype, "moe": moe, "attention": attention, "hc_mult": self.hc_mult}


# CPU: fp32, CPU-sized (like the CPU validation scenarios). CUDA: bf16, 4B/8B-class dense backbones and a small one.
# Each list's second shape is an MoE and its third MLA with mHC (quick budgets and up measure both): the routed
# experts' grouped GEMMs, their gather/scatter and the router are kernels of their own, whose rates the dense shapes
# alone would not show; MLA + mHC blocks run more than twice the kernels of a GQA block (14 in a decode step, 6 for
# GQA), which is what separates the fixed cost per kernel from the fixed cost per block.
# MLA + mHC: DeepSeek-V3's MLA proportions (config.json: kv_lora_rank 512 = 4 x the nope head dim 128, rope head dim
# 64 = half of it, a query latent) with 4 mHC streams, as the Engram paper's 27B/40B models (../shared/ENGRAM.md).
CPU_SHAPES = (
    Shape("cpu-h512", 512, 1408, 8, 2, 64, 8192, 6),
    Shape("cpu-moe-h512", 512, 1408, 8, 2, 64, 8192, 4, Experts(16, 2, 1, 512)),  # fine-grained experts, 1 shared + top-2 of 16
    Shape("cpu-mla-mhc-h640", 640, 1792, 10, 10, 64, 10240, 4, mla=Latent(256, 32, 320), hc_mult=4),  # query latent hidden / 2
    Shape("cpu-h1024", 1024, 2816, 16, 4, 64, 16384, 4),
    Shape("cpu-h768", 768, 2048, 12, 4, 64, 12288, 4),
)
CUDA_SHAPES = (
    Shape("cuda-4b", 2560, 9728, 32, 8, 128, 151936, 4),
    # DeepSeek-V2-Lite's MoE (hidden 2048, 64 routed experts of 1408, top-6, 2 shared; arXiv 2405.04434, table of configs)
    Shape("cuda-moe-h2048", 2048, 10944, 16, 16, 128, 102400, 4, Experts(64, 6, 2, 1408)),
    # DeepSeek-V2-Lite's attention (16 heads, nope 128, rope 64, KV latent 512, no query latent; same table) and dense MLP
    Shape("cuda-mla-mhc-h2048", 2048, 10944, 16, 16, 128, 102400, 4, mla=Latent(512, 64, 0), hc_mult=4),
    Shape("cuda-h1024", 1024, 2816, 16, 4, 64, 16384, 8),  # launch-bound: the layer overhead's regime
    Shape("cuda-8b", 4096, 12288, 32, 8, 128, 151936, 4),
)
CUDA_SCALE = 16  # CUDA cases: 16x the sequences of the CPU cases (a GPU step batches far more)

Case = tuple[str, np.ndarray, np.ndarray]  # (kind, new tokens per sequence, context lengths)


def backbone_cases(backend: str, budget: Budget) -> list[tuple[Shape, list[Case]]]:
    """Per shape, every measured step."""
    shapes = (CUDA_SHAPES if backend == "cuda" else CPU_SHAPES)[: budget.shapes]
    scale = CUDA_SCALE if backend == "cuda" else 1
    steps: list[Case] = []
    for seqs, tokens in budget.prefill_tokens:
        lens = np.full(seqs * scale, tokens, dtype=np.int64)
        steps.append(("prefill", lens, lens.copy()))
    for batch, context in budget.decode_cases:
        ctx = np.full(batch * scale, context, dtype=np.int64)
        steps.append(("decode", np.ones(batch * scale, dtype=np.int64), ctx))
    return [(shape, steps) for shape in shapes]


def shape_model(shape: Shape, dtype: str, engram_head_dim: int, engram_dtype: str) -> Model:
    """The scenario `Model` of a shape: its kernels are what the fit prices for the shape's cases. Its
    Engram layer has a branch per mHC stream of the backbone (the Engram paper's layout)."""
    return Model.model_validate({
        "backbone": shape.backbone(dtype),
        "engram": {"layers": [0], "max_ngram": 3, "heads": 8, "head_dim": engram_head_dim, "rows_per_head": 1000,
                   "dtype": engram_dtype, "hc_mult": shape.hc_mult},
    })


def make_step(kind: str, new: np.ndarray, ctx: np.ndarray, index: int = 0) -> Step:
    return Step(index, kind, np.arange(new.size, dtype=np.int64), new.astype(np.int64), ctx.astype(np.int64),  # type: ignore[arg-type]
                np.zeros(int(new.sum()), dtype=np.int64))


def host_scenario(shape: Shape, seqs: int, dtype: str, head_dim: int, steps: int) -> dict[str, Any]:
    """The small scenario whose real passes time the per-step host work: the blocks of `shape` (as
    many as a step of that shape runs, so the host work finds its caches as cold as in a run), one
    Engram layer (16 heads x 20,000 rows of 256 B), the cpython-stdlib trace, batches of `seqs`.
    Not a validation scenario: its own trace, shape and table."""
    return {
        "name": f"calibration-host-{seqs}",
        "model": {
            "backbone": shape.backbone(dtype),
            "engram": {"layers": [1], "max_ngram": 3, "heads": 8, "head_dim": head_dim, "rows_per_head": 20_000,
                       "dtype": dtype, "hc_mult": 1},
        },
        "hardware": "h100-pcie",
        "workload": {"trace": "cpython-stdlib", "requests": 2 * seqs, "prompt_len": {"dist": "uniform", "low": 32, "high": 128},
                     "output_len": {"dist": "uniform", "low": 8, "high": 32},
                     "batching": {"max_num_seqs": seqs, "max_num_batched_tokens": 1024}},
        "run": {"seed": 0, "baseline": False, "max_steps": steps},
    }

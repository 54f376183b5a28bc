"""The quality cost of a low-precision Engram table: how far the Engram layer's output moves when
its table is stored in another dtype (`engramsim quality`).

For the scenario's trace, its first `tokens` tokens (each document its own sequence) go through
the scenario's hashing plugin; per Engram layer, every token's rows are read from the tables the
real backends fill (backends/tables.py: the same N(0, 1) draws for every dtype, so a bf16, fp8 or
int8 table holds the rounded or quantised form of exactly the fp32 table's values) and turned into
values as the backends do after the link (`row_values`). The real EngramModule (the backends'
weights: seed run.seed + layer; fp32) runs on the memory vectors e with the same hidden states
(N(0, 1), seeded) once for the fp32 reference table and once per mode. Per token:

- embedding error ||e_mode - e_ref|| / ||e_ref|| (the gathered rows themselves);
- output error ||y_mode - y_ref|| / ||y_ref||, y = v + ShortConv(v) over every branch;

reported as mean, p50, p99 and max over the tokens.

What this is: the numerical error a table format adds to one Engram layer's output, through the
real gate, projection and convolution, on real token sequences. What it is not: a trained model.
Tables, module weights and hidden states are random (N(0, 1) rows, torch's default inits), so
the numbers say how the formats treat Gaussian rows, not rows with a trained model's outliers;
and the error of one layer's output is not a task's accuracy or perplexity.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from engramsim.backends.engram_module import EngramModule
from engramsim.backends.tables import row_values, stored_rows
from engramsim.errors import InputError
from engramsim.registry import build_hashing
from engramsim.scenario import Engram, Scenario
from engramsim.session import PAD_ID, located
from engramsim.strategies import HashingSetup
from engramsim.tokenizer import compressed_vocab
from engramsim.traces.format import load_trace
from engramsim.workload import trace_vocab

REFERENCE = "fp32"
_HIDDEN_SEED = 1_000_003  # hidden states: their own stream, apart from the module's weights (run.seed + layer)


@dataclass(frozen=True)
class ErrorStats:
    mean: float
    p50: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: np.ndarray) -> ErrorStats:
        return cls(float(values.mean()), float(np.percentile(values, 50)), float(np.percentile(values, 99)), float(values.max()))


@dataclass(frozen=True)
class ModeQuality:
    """One table dtype at one Engram layer, against the fp32 table."""

    mode: str
    layer: int
    row_bytes: int  # one head's row, scales included
    token_bytes: int  # one token's rows at this layer (every head)
    embedding: ErrorStats  # per token ||e_mode - e_ref|| / ||e_ref||
    output: ErrorStats  # per token ||y_mode - y_ref|| / ||y_ref||


@dataclass(frozen=True)
class QualityReport:
    scenario: str
    trace: str
    tokens: int
    documents: int
    hashing: str
    reference: str
    results: list[ModeQuality]

    def to_dict(self) -> dict:
        return asdict(self)


def _relative(a: torch.Tensor, ref: torch.Tensor) -> np.ndarray:
    """Per token (first dim) ||a - ref|| / ||ref|| over the other dims."""
    diff = (a - ref).flatten(1).double().norm(dim=1)
    return (diff / ref.flatten(1).double().norm(dim=1).clamp_min(1e-300)).numpy()


def token_rows(scenario: Scenario, source: str, tokens: int) -> tuple[dict[int, np.ndarray], np.ndarray, dict[int, int], str, int]:
    """(per layer the global table row of every token and head [n, H], document starts, rows per
    layer, trace name, n) for the first `tokens` tokens of the scenario's trace."""
    engram = scenario.model.engram
    with located(source, "workload.trace"):
        trace = load_trace(scenario.workload.trace)
    with located(source, "model.engram.tokenizer"):
        vocab = compressed_vocab(engram.tokenizer)
    with located(source, "workload.trace"):
        compress = trace_vocab(trace, vocab)
    n = min(tokens, len(trace))
    raw = np.asarray(trace.tokens[:n], dtype=np.int64)
    limit = vocab.size if compress is None else vocab.raw_size
    if raw.size and int(raw.max()) >= limit:
        raise InputError(source, f"trace holds token id {int(raw.max())}, outside the tokenizer's {limit:,} ids "
                         "(tokenized with another tokenizer?)", field="workload.trace")
    ids = raw if compress is None else compress.compress(raw)
    starts = trace.doc_offsets[trace.doc_offsets < n].astype(np.int64)
    hashing = build_hashing(scenario.strategies.hashing, HashingSetup(engram, vocab.size, int(vocab.table[PAD_ID])))
    rows = hashing.hash_sequences(ids, starts)
    table_rows = {layer: hashing.rows_per_layer[layer] for layer in engram.layers}  # the executor's allocation order
    global_rows = {layer: rows[layer] + hashing.offsets[layer] for layer in engram.layers}
    return global_rows, starts, table_rows, trace.name, n


def memory_vectors(engram: Engram, table_rows: dict[int, int], rows: dict[int, np.ndarray]) -> dict[int, torch.Tensor]:
    """Per layer, every token's memory vector e [n, d_mem] (fp32) read from `engram.dtype` tables as the backends fill them."""
    ids = {layer: torch.from_numpy(r) for layer, r in rows.items()}
    stored = stored_rows(engram, table_rows, ids)
    return {layer: row_values(s.reshape(-1, s.shape[-1]), engram, torch.float32).view(s.shape[0], engram.d_mem)
            for layer, s in stored.items()}


def _outputs(module: EngramModule, h: torch.Tensor, e: torch.Tensor, bounds: list[tuple[int, int]]) -> torch.Tensor:
    """The module's output for every document as its own sequence, [n, hc, hidden]."""
    return torch.cat([module(h[a:b].unsqueeze(0), e[a:b].unsqueeze(0))[0] for a, b in bounds])


def measure(scenario: Scenario, source: str, modes: list[str], tokens: int) -> QualityReport:
    """Every mode (model.engram.dtype values) against the fp32 table, per Engram layer (module docstring)."""
    engram, hidden = scenario.model.engram, scenario.model.backbone.hidden
    rows, starts, table_rows, trace_name, n = token_rows(scenario, source, tokens)
    bounds = list(zip(starts.tolist(), [*starts[1:].tolist(), n], strict=True))
    formats = {mode: engram.model_copy(update={"dtype": mode}) for mode in (REFERENCE, *modes)}
    results = []
    with torch.no_grad():
        for layer in engram.layers:  # one layer's vectors at a time: n x d_mem floats per mode
            module = EngramModule(hidden, engram.d_mem, hc_mult=engram.hc_mult, max_ngram=engram.max_ngram,
                                  kernel_size=engram.kernel_size, generator=scenario.run.seed + layer, dtype=torch.float32)
            g = torch.Generator().manual_seed(scenario.run.seed + layer + _HIDDEN_SEED)
            h = torch.randn(n, engram.hc_mult, hidden, generator=g)
            e_ref = memory_vectors(formats[REFERENCE], table_rows, {layer: rows[layer]})[layer]
            y_ref = _outputs(module, h, e_ref, bounds)
            for mode in modes:
                e = memory_vectors(formats[mode], table_rows, {layer: rows[layer]})[layer]
                y = _outputs(module, h, e, bounds)
                row_bytes = formats[mode].row_bytes
                results.append(ModeQuality(mode, layer, row_bytes, row_bytes * engram.heads_per_layer,
                                           ErrorStats.of(_relative(e, e_ref)), ErrorStats.of(_relative(y, y_ref))))
    return QualityReport(scenario.name, trace_name, n, len(bounds), scenario.strategies.hashing.name, REFERENCE, results)

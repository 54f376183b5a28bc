"""What every executor records: spans on the timeline, one record per (step, Engram layer) and per
step, and the outcome of a whole pass.

The simulator and the real backends build exactly these objects, so results.py turns either
into the same files and "sim vs real" is a diff of two outputs. Records are built with keyword
arguments only; a span says what it is with a `SpanKind`, never through its name.

A pass keeps what it records compact, so a run of millions of steps fits in memory: step and
layer records are stored as columns (`StepLog`, ~100 bytes a step with one Engram layer) and
read back as records; the timeline (`Timeline`) counts every span's seconds by kind but keeps
the spans themselves for the first `TIMELINE_STEPS` steps only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from operator import attrgetter

import numpy as np

TIMELINE_STEPS = 10_000
"""Spans of steps from this index on are counted (`Timeline.busy_s`) but not kept: timeline.json
then holds the first TIMELINE_STEPS steps and says so, and stays small enough to open."""


class SpanKind(Enum):
    """What a span on the timeline is. `lane` is where the timeline draws it."""

    HOST = "host"  # per-step host work: plan, input layout, hand-off of the first fetches
    BLOCKS = "blocks"  # a run of backbone blocks
    ENGRAM = "engram"  # one Engram layer's compute after its rows are on the device
    HEAD = "head"  # final norm, LM head, sampling
    STALL = "stall"  # the compute stream waiting for an Engram layer's rows
    GATHER = "gather"  # host threads packing rows into staging
    H2D = "h2d"  # a DMA copy over the link
    ZERO_COPY = "zero-copy"  # a GPU kernel reading rows over the link
    CXL_GATHER = "cxl-gather"  # host threads packing rows from CXL memory into staging
    NVME_READ = "nvme-read"  # SSDs reading the pages that hold rows into host memory
    NVME_DIRECT = "nvme-direct"  # SSDs writing those pages straight into HBM over the link

    __hash__ = object.__hash__  # members are singletons: hashed by identity in C (Enum's own hash is Python code, hot on timelines)

    @property
    def lane(self) -> str:
        return LANE_OF[self]

    @property
    def is_compute(self) -> bool:
        return LANE_OF[self] == "compute"

    @property
    def on_link(self) -> bool:
        """Spans whose bytes cross the host-device link (the link's busy time is their sum)."""
        return self in (SpanKind.H2D, SpanKind.ZERO_COPY, SpanKind.NVME_DIRECT)


LANE_OF = {
    SpanKind.HOST: "compute", SpanKind.BLOCKS: "compute", SpanKind.ENGRAM: "compute", SpanKind.HEAD: "compute",
    SpanKind.STALL: "stall", SpanKind.GATHER: "gather", SpanKind.H2D: "copy", SpanKind.ZERO_COPY: "zero-copy",
    SpanKind.CXL_GATHER: "gather", SpanKind.NVME_READ: "storage", SpanKind.NVME_DIRECT: "copy",
}
LANES = ("compute", "stall", "gather", "copy", "zero-copy", "storage")


@dataclass(frozen=True, kw_only=True, slots=True)
class Span:
    """One busy interval. `step` is the step it belongs to: for a fetch, the step whose rows it
    moves (a fetch issued ahead runs during an earlier step), for a staging fetch the step that
    issued it (whose record counts its bytes). `blocks` is a BLOCKS span's range."""

    kind: SpanKind
    start_s: float
    end_s: float
    step: int
    layer: int | None = None
    bytes: int = 0
    blocks: tuple[int, int] | None = None  # first and last block of a BLOCKS span
    staging: bool = False  # a leg of a staging fetch: rows `step` fetched for waiting requests' prefills in later steps

    @property
    def seconds(self) -> float:
        return self.end_s - self.start_s

    @property
    def name(self) -> str:
        """The label the timeline shows ("blocks 0-3", "h2d L1", "h2d L1 staging", "head")."""
        if self.blocks is not None:
            return f"{self.kind.value} {self.blocks[0]}-{self.blocks[1]}"
        return self.kind.value if self.layer is None else f"{self.kind.value} L{self.layer}" + (" staging" if self.staging else "")


SpanFields = tuple[SpanKind, float, float, int, "int | None", int, "tuple[int, int] | None", bool]
"""A span's fields in `Span`'s order (kind, start_s, end_s, step, layer, bytes, blocks, staging), for `Timeline.record`."""


@dataclass(kw_only=True, slots=True)
class LayerRecord:
    """One Engram layer in one step: how each needed row was served, what moved, when.

    rows_unique = rows_placed_hbm + cache_hits + rows_missed: every row the step needs is
    served exactly once, or dropped: in deadline mode a layer whose fetch (or a fetch that carried
    its staged rows) has not landed runs without its missed rows (rows_dropped = rows_missed,
    ready_s = when the layer went ahead). Of rows_missed, rows_staged were fetched by an earlier
    step into the staging area and are not fetched again. Speculative rows are fetched but never
    count as served in the step that fetches them; rows_waiting, fetched for waiting requests'
    prefills, neither.
    """

    layer: int
    rows_unique: int
    references: int
    rows_placed_hbm: int  # placed in HBM by the placement
    cache_hits: int  # outside HBM but in the HBM cache
    rows_missed: int  # outside HBM and not cached: fetched for this step, or staged
    rows_speculative: int  # fetched beyond the step's needs (a predictor's guess)
    rows_guessed: int = 0  # of rows_missed, rows the previous step's fetch of this layer carried as speculative rows
    rows_dropped: int = 0  # of rows_missed, rows whose fetch had not landed when the layer ran without them (deadline mode)
    references_dropped: int = 0  # references (tokens x heads) that would have read the dropped rows
    rows_staged: int = 0  # of rows_missed, rows served from the staging area: fetched by an earlier step, not fetched again
    rows_waiting: int = 0  # rows this step fetched into the staging area for waiting requests' prefills (not needed by it)
    bytes_fetched: int  # every row this step moved for this layer: missed and not staged, speculative, waiting
    issue_step: int  # the step during which the fetch was issued (<= the record's step; < means issued ahead)
    issue_s: float
    ready_s: float  # the fetch's last byte arrived (= issue when nothing was fetched; when the layer went ahead, for a dropped fetch)
    stall_s: float = 0.0

    @property
    def rows_hbm(self) -> int:
        """Needed rows served from HBM: placed there or cache hits."""
        return self.rows_placed_hbm + self.cache_hits

    @property
    def rows_fetched(self) -> int:
        """Rows moved over the link by this step for this layer: misses not staged, speculative rows
        and rows for waiting requests."""
        return self.rows_missed - self.rows_staged + self.rows_speculative + self.rows_waiting


@dataclass(kw_only=True, slots=True)
class StepRecord:
    index: int
    kind: str
    start_s: float
    end_s: float
    tokens: int
    seqs: int
    layers: list[LayerRecord] = field(default_factory=list)

    @property
    def latency_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def stall_s(self) -> float:
        return sum(r.stall_s for r in self.layers)


# ---- compact storage --------------------------------------------------------------------------
KINDS = ("prefill", "decode", "mixed")  # StepRecord.kind, stored as its index here (mixed: prompt chunks beside decodes)
LAYER_FIELDS = tuple(f.name for f in fields(LayerRecord))
_LAYER_ROW = attrgetter(*LAYER_FIELDS)  # a LayerRecord as the tuple of its fields, in LAYER_FIELDS order
# Counts of one step fit 32 bits (a value that does not raises OverflowError when stored); bytes and times take 64.
LAYER_DTYPE = np.dtype([(f.name, "f8" if f.type == "float" else "i8" if f.name == "bytes_fetched" else "i4") for f in fields(LayerRecord)])
STEP_DTYPE = np.dtype([("index", "i4"), ("kind", "u1"), ("start_s", "f8"), ("end_s", "f8"), ("tokens", "i4"), ("seqs", "i4"),
                       ("first_layer", "i8")])  # first_layer: the step's first row in the layer columns
CHUNK_ROWS = 4096


class Columns:
    """Rows of one structured dtype in chunks of CHUNK_ROWS: an append never moves the rows stored
    before it, and the memory is the rows' bytes plus at most one chunk."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype
        self._chunks: list[np.ndarray] = []
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, row: tuple) -> None:
        at = self._size % CHUNK_ROWS
        if at == 0:
            self._chunks.append(np.empty(CHUNK_ROWS, dtype=self.dtype))
        self._chunks[-1][at] = row
        self._size += 1

    def extend(self, rows: np.ndarray) -> None:
        """Append many rows (of this dtype) at once."""
        done = 0
        while done < rows.size:
            at = self._size % CHUNK_ROWS
            if at == 0:
                self._chunks.append(np.empty(CHUNK_ROWS, dtype=self.dtype))
            take = min(CHUNK_ROWS - at, rows.size - done)
            self._chunks[-1][at:at + take] = rows[done:done + take]
            self._size += take
            done += take

    def row(self, i: int) -> tuple:
        """Row i as Python values."""
        return self._chunks[i // CHUNK_ROWS][i % CHUNK_ROWS].item()

    def chunks(self) -> Iterator[np.ndarray]:
        """The stored rows chunk by chunk (views of the storage)."""
        for k, chunk in enumerate(self._chunks):
            yield chunk[: self._size - k * CHUNK_ROWS]

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1, as a new array."""
        first = start // CHUNK_ROWS
        parts = self._chunks[first: -(-stop // CHUNK_ROWS)] or [np.empty(0, dtype=self.dtype)]
        return np.concatenate(parts)[start - first * CHUNK_ROWS: stop - first * CHUNK_ROWS]


def column(rows: np.ndarray, record_type: type, name: str) -> np.ndarray:
    """The column of a record field in structured `rows`, or of a record property
    (`StepRecord.latency_s`, `LayerRecord.rows_hbm`), computed by the property's own formula on
    columns widened to 64 bits (a sum of two 32-bit counts may not fit 32 bits)."""
    names = rows.dtype.names or ()
    if name in names:
        return rows[name]
    wide = np.dtype([(n, np.result_type(rows.dtype[n], np.int64)) for n in names])
    return getattr(record_type, name).fget(rows.astype(wide).view(np.recarray))


@dataclass(frozen=True)
class StepBlock:
    """Consecutive steps' records as structured arrays: the steps and, in order, their layers."""

    steps: np.ndarray  # STEP_DTYPE
    layers: np.ndarray  # LAYER_DTYPE

    def step_column(self, name: str) -> np.ndarray:
        """A StepRecord field or property (not `stall_s`: see `per_step`) of every step."""
        return column(self.steps, StepRecord, name)

    def per_step(self, name: str) -> np.ndarray:
        """A LayerRecord field or property summed over each step's layers, one by one in their run
        order (the sum a StepRecord gives, e.g. `stall_s`); 0 for a step without Engram layers."""
        values = column(self.layers, LayerRecord, name)
        first = self.steps["first_layer"] - (self.steps["first_layer"][0] if self.steps.size else 0)
        totals = np.zeros(self.steps.size, dtype=np.result_type(values.dtype, np.int64))
        np.add.at(totals, np.repeat(np.arange(first.size), np.diff(np.append(first, values.size))), values)
        return totals


class StepLog:
    """A pass's step records and their layer records, stored as columns. Indexing or iterating
    gives `StepRecord`s, built on the fly; whole-run readers take columns (`step_column`,
    `layer_column`) or go block by block (`blocks`)."""

    def __init__(self, records: Iterable[StepRecord] = ()) -> None:
        self._steps = Columns(STEP_DTYPE)
        self._layers = Columns(LAYER_DTYPE)
        for record in records:
            self.append(record)

    @classmethod
    def of(cls, records: Iterable[StepRecord]) -> StepLog:
        """`records` as a log (itself when it is one)."""
        return records if isinstance(records, StepLog) else cls(records)

    def append(self, record: StepRecord) -> None:
        self._steps.append((record.index, KINDS.index(record.kind), record.start_s, record.end_s, record.tokens, record.seqs,
                            len(self._layers)))
        for layer in record.layers:
            self._layers.append(_LAYER_ROW(layer))

    def extend(self, steps: np.ndarray, layers: np.ndarray) -> None:
        """Append step records and their layer records given as columns (STEP_DTYPE, whose
        `first_layer` counts from the first of `layers`, and LAYER_DTYPE)."""
        steps = steps.copy()
        steps["first_layer"] += len(self._layers)
        self._steps.extend(steps)
        self._layers.extend(layers)

    def __len__(self) -> int:
        return len(self._steps)

    def __getitem__(self, i: int) -> StepRecord:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"step record {i} of {n}")
        i %= n
        index, kind, start_s, end_s, tokens, seqs, first = self._steps.row(i)
        stop = self._steps.row(i + 1)[-1] if i + 1 < n else len(self._layers)
        layers = [LayerRecord(**dict(zip(LAYER_FIELDS, self._layers.row(j), strict=True))) for j in range(first, stop)]
        return StepRecord(index=index, kind=KINDS[kind], start_s=start_s, end_s=end_s, tokens=tokens, seqs=seqs, layers=layers)

    def __iter__(self) -> Iterator[StepRecord]:
        return (self[i] for i in range(len(self)))

    def step_column(self, name: str) -> np.ndarray:
        """A StepRecord field or property (not `stall_s`: see `StepBlock.per_step`) of every step."""
        return np.concatenate([column(rows, StepRecord, name) for rows in self._steps.chunks()] or [np.empty(0)])

    def layer_column(self, name: str) -> np.ndarray:
        """A LayerRecord field or property of every layer record, in step order (layers in their run order)."""
        return np.concatenate([column(rows, LayerRecord, name) for rows in self._layers.chunks()] or [np.empty(0)])

    def blocks(self) -> Iterator[StepBlock]:
        """The records block by block, CHUNK_ROWS steps at a time: a reader of a long run holds
        one block's columns at once, not the whole run's."""
        chunks = list(self._steps.chunks())
        bounds = [int(steps["first_layer"][0]) for steps in chunks] + [len(self._layers)]
        for k, steps in enumerate(chunks):
            yield StepBlock(steps, self._layers.rows(bounds[k], bounds[k + 1]))


class Timeline:
    """A pass's spans: every span's seconds summed by kind (`busy_s`, exact whatever the run's
    length), and the spans of the first `limit` steps (default `TIMELINE_STEPS`) kept. Iterating
    gives the kept spans in timeline order (`span_order`: by start, then end, kind, step, layer),
    whatever order an executor recorded them in (the event model records a leg when it ends, the
    fast path when it prices the fetch). Each kind's spans are recorded in time order by every
    executor (a lane runs one at a time), so `busy_s` sums them in the same order too."""

    def __init__(self, spans: Iterable[Span] = (), limit: int | None = None) -> None:
        self.limit = TIMELINE_STEPS if limit is None else limit
        self.busy_s = dict.fromkeys(SpanKind, 0.0)
        self.dropped = 0  # spans counted in busy_s but not kept
        self.elsewhere = 0  # a node's: spans of its other GPUs, counted in busy_s, not kept (`joined`)
        self._kept: list[Span] = []
        self._fields: list[SpanFields] = []  # spans `record`ed, as their fields, not built yet
        self._ordered = True
        for span in spans:
            self.add(span)

    @classmethod
    def of(cls, spans: Iterable[Span]) -> Timeline:
        """`spans` as a timeline (itself when it is one)."""
        return spans if isinstance(spans, Timeline) else cls(spans)

    def add(self, span: Span) -> None:
        self.busy_s[span.kind] += span.seconds
        if span.step < self.limit:
            self._kept.append(span)
            self._ordered = False
        else:
            self.dropped += 1

    def record(self, fields: list[SpanFields]) -> None:
        """`add` the spans of these fields, in order, each built only when the timeline is read (a pass records thousands)."""
        busy, limit, kept = self.busy_s, self.limit, self._fields
        before = len(kept)
        for span in fields:
            busy[span[0]] += span[2] - span[1]
            if span[3] < limit:
                kept.append(span)
            else:
                self.dropped += 1
        if len(kept) > before:
            self._ordered = False

    def _spans(self) -> list[Span]:
        """The kept spans, in timeline order."""
        if self._fields:
            self._kept += [Span(kind=kind, start_s=start, end_s=end, step=step, layer=layer, bytes=nbytes, blocks=blocks, staging=staging)
                           for kind, start, end, step, layer, nbytes, blocks, staging in self._fields]
            self._fields.clear()
        if not self._ordered:
            self._kept.sort(key=span_order)
            self._ordered = True
        return self._kept

    @property
    def link_s(self) -> float:
        """Seconds of the spans that moved bytes over the link."""
        return sum(seconds for kind, seconds in self.busy_s.items() if kind.on_link)

    def __len__(self) -> int:
        return len(self._kept) + len(self._fields)

    @classmethod
    def joined(cls, timelines: list[Timeline]) -> Timeline:
        """A node's timeline: every GPU's seconds by kind, the first GPU's spans kept (one GPU's lanes,
        its own step numbers); the other GPUs' spans are counted in `elsewhere`."""
        first = timelines[0]
        out = cls((), first.limit)
        out._kept, out.busy_s, out.dropped = list(first), dict(first.busy_s), first.dropped
        for other in timelines[1:]:
            for kind, seconds in other.busy_s.items():
                out.busy_s[kind] += seconds
            out.elsewhere += len(other) + other.dropped
        return out

    def __iter__(self) -> Iterator[Span]:
        return iter(self._spans())


KIND_ORDER = {kind: i for i, kind in enumerate(SpanKind)}


def span_order(span: Span) -> tuple:
    """Where a span sits on the timeline: by start, then end, then its kind, step, layer and the rest."""
    return (span.start_s, span.end_s, KIND_ORDER[span.kind], span.step, -1 if span.layer is None else span.layer,
            span.blocks or (-1, -1), span.bytes, span.staging)


@dataclass(frozen=True, kw_only=True)
class ServingCounts:
    """What a pass's scheduler counted of its KV cache and preemptions (engramsim/scheduler.py)."""

    kv_blocks: int  # blocks of the paged KV cache
    kv_used_mean: float  # blocks in use while a step runs / kv_blocks, mean over steps
    kv_used_peak: float  # the most blocks in use while a step runs / kv_blocks
    preemptions: int  # sequences preempted (their blocks freed, to be prefilled again)
    recomputed_tokens: int  # tokens fed again after a preemption


@dataclass(frozen=True, kw_only=True)
class RunOutcome:
    """One executed pass: step and layer records, the timeline, and the request-level metrics
    its scheduler recorded. results.py turns it into files and metrics. Lists of records or of
    spans are taken too, and stored as a `StepLog` and a `Timeline`. `serving` is None for an
    outcome built from records alone, without the scheduler that made the steps."""

    steps: StepLog
    spans: Timeline
    events: int  # simulated events (0 for a real run)
    link_busy_s: float  # seconds the link moved bytes, as the executor's link counted them
    makespan_s: float
    output_tokens: int
    prompt_tokens: int
    ttft_s: np.ndarray
    tpot_s: np.ndarray
    serving: ServingCounts | None = None
    gpus: tuple[RunOutcome, ...] = ()  # a node's run (hardware.node): each GPU's own outcome, in GPU order

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", StepLog.of(self.steps))
        object.__setattr__(self, "spans", Timeline.of(self.spans))

    @property
    def throughput_tok_s(self) -> float:
        """Output tokens per second over the whole run, as nano-vLLM's benchmark reports it."""
        return self.output_tokens / self.makespan_s if self.makespan_s > 0 else 0.0

    @classmethod
    def of_node(cls, gpus: list[RunOutcome], events: int) -> RunOutcome:
        """A node's outcome from its GPUs' (in GPU order): their steps, GPU g's step i numbered
        i x gpus + g (so another pass of the node lines up GPU by GPU and step by step, whatever each
        GPU's count) and kept in that order; every span's seconds and the first GPU's spans
        (`Timeline.joined`); all tokens and requests; the makespan of the last GPU to finish; the
        link busy time of the mean GPU (so link utilisation stays a fraction of one link); the KV
        counts summed (the peak: the highest GPU's)."""
        numbered = sorted(((record.index * len(gpus) + g, record) for g, gpu in enumerate(gpus) for record in gpu.steps),
                          key=lambda pair: pair[0])
        steps = StepLog(replace(record, index=index) for index, record in numbered)
        counts = [gpu.serving for gpu in gpus if gpu.serving is not None]
        serving = None if not counts else ServingCounts(
            kv_blocks=sum(c.kv_blocks for c in counts), kv_used_mean=sum(c.kv_used_mean for c in counts) / len(counts),
            kv_used_peak=max(c.kv_used_peak for c in counts), preemptions=sum(c.preemptions for c in counts),
            recomputed_tokens=sum(c.recomputed_tokens for c in counts))
        return cls(steps=steps, spans=Timeline.joined([gpu.spans for gpu in gpus]), events=events,
                   link_busy_s=sum(gpu.link_busy_s for gpu in gpus) / len(gpus), makespan_s=max(gpu.makespan_s for gpu in gpus),
                   output_tokens=sum(gpu.output_tokens for gpu in gpus), prompt_tokens=sum(gpu.prompt_tokens for gpu in gpus),
                   ttft_s=np.concatenate([gpu.ttft_s for gpu in gpus]), tpot_s=np.concatenate([gpu.tpot_s for gpu in gpus]),
                   serving=serving, gpus=tuple(gpus))

"""The workload: trace → requests → token windows → hashed, deduplicated lookups per step.

Every request is a window of prompt_len + output_len consecutive trace tokens: the prompt is its
first prompt_len tokens and the decode steps feed the continuation, so decode lookups hash real
text, not invented tokens. Nothing is stored per token for the whole run: a window is read from
the trace and hashed, as its own sequence, when a step first feeds it (`WindowRows` holds the
windows in use), and a step's lookups are memoized by the step's content (`LookupMemo`), so the
several executor passes of one scenario (offloaded, all-HBM baseline, no-Engram reference) share
them while they fit and compute them again when they do not. Both caches have a fixed bound:
memory grows by a few columns per request, never with their tokens or the table size (tables
reach billions of rows).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from engramsim.errors import InputError
from engramsim.steps import LayerLookup, Requests, Step

if TYPE_CHECKING:
    from engramsim.scenario import Distribution, Scenario
    from engramsim.scenario import Workload as WorkloadConfig
    from engramsim.strategies import Hashing
    from engramsim.tokenizer import CompressedVocab

MEMO_BYTES = 128 << 20
"""The lookups memo's bound (row ids and keys). Speed only: a run whose lookups fit deduplicates
each step once for all its passes; a longer one does it again in every pass that reads them."""
WINDOW_BYTES = 64 << 20
"""The hashed windows' bound, raised to three batches of the longest windows (a step's, those
hashed ahead of it, room to spare) when those need more. Speed only: windows that do not stay
held are hashed again."""


class TraceLike(Protocol):
    """What the workload reads from a trace (engramsim.traces.format.Trace fits)."""

    @property
    def tokens(self) -> np.ndarray:
        """Raw token ids, [N]."""

    @property
    def doc_offsets(self) -> np.ndarray:
        """The int64 start of each document."""


# ---- requests ---------------------------------------------------------------------------------
def draw_lengths(dist: Distribution, n: int, rng: np.random.Generator) -> np.ndarray:
    """n lengths from a fixed or uniform (both ends inclusive) distribution, int64."""
    if dist.dist == "fixed":
        return np.full(n, int(dist.value), dtype=np.int64)  # type: ignore[arg-type]
    return rng.integers(int(dist.low), int(dist.high) + 1, size=n, dtype=np.int64)  # type: ignore[arg-type]


def make_requests(cfg: WorkloadConfig, trace: TraceLike, seed: int | Sequence[int]) -> Requests:
    """The scenario's requests, reproducible from `seed`.

    Draw order (fixed, so changing the arrival process keeps the same windows): prompt lengths,
    output lengths, window starts, then arrival gaps. A window of W = prompt + output tokens
    starts uniformly in [0, T - W] of a trace of T tokens, so it fits. When W > T the trace is
    treated as cyclic: the start is uniform in [0, T) and the window wraps to the trace's
    beginning (see `Workload.tokens`). Windows may cross document boundaries, as a concatenated
    corpus does. Offline arrival puts every request at t = 0; poisson arrival uses cumulative
    exponential gaps at `rate_per_s`, so the first request arrives after one gap.
    """
    n = cfg.requests
    size = int(np.asarray(trace.tokens).size)
    if size == 0:
        raise ValueError("the trace holds no tokens")
    rng = np.random.default_rng(seed)
    prompt = draw_lengths(cfg.prompt_len, n, rng)
    output = draw_lengths(cfg.output_len, n, rng)
    window = prompt + output
    starts = rng.integers(0, np.where(window <= size, size - window + 1, size), dtype=np.int64)
    if cfg.arrival.kind == "poisson":
        arrivals = np.cumsum(rng.exponential(1.0 / float(cfg.arrival.rate_per_s), size=n))  # type: ignore[arg-type]
    else:
        arrivals = np.zeros(n)
    return Requests(*(_frozen(a) for a in (arrivals, prompt, output, starts)))


def window_offsets(requests: Requests) -> np.ndarray:
    """Where each window starts when the windows are laid end to end, [R+1] int64: request i's
    tokens are the flat positions offsets[i]:offsets[i+1], the numbering steps feed tokens by."""
    offsets = np.zeros(len(requests) + 1, dtype=np.int64)
    np.cumsum(requests.window_len, out=offsets[1:])
    return offsets


def run_starts(lengths: np.ndarray) -> np.ndarray:
    """Where each run of `lengths` begins when the runs are laid end to end."""
    return np.cumsum(lengths) - lengths


def window_lengths(offsets: np.ndarray, requests: np.ndarray) -> np.ndarray:
    """Tokens of the windows of `requests`, from the window offsets."""
    return offsets[requests + 1] - offsets[requests]


def unique_sorted(values: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """Sorted unique values of an int64 array (`overwrite`: sort `values` itself, saving a copy).

    Sort + neighbour mask. Measured on numpy 2.4 (2-core x86): 1.5 ms for 262k values and
    0.05 ms for 8k, against 12.8 ms and 0.41 ms for np.unique and for hash-based
    np.unique(sorted=False) + sort; np.sort's SIMD sort is what makes the difference.
    """
    if overwrite:
        s = values.reshape(-1)
        s.sort()
    else:
        s = np.sort(values, axis=None)
    if s.size < 2:
        return s
    keep = np.empty(s.size, dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


# ---- the workload -----------------------------------------------------------------------------
class LookupMemo:
    """Step lookups by the step's positions, least recently used first out past `budget` bytes."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.bytes = 0
        self._entries: OrderedDict[bytes, dict[int, LayerLookup]] = OrderedDict()

    def get(self, key: bytes) -> dict[int, LayerLookup] | None:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def put(self, key: bytes, lookups: dict[int, LayerLookup]) -> None:
        self._entries[key] = lookups
        self.bytes += _entry_bytes(key, lookups)
        while self.bytes > self.budget and len(self._entries) > 1:
            old_key, old = self._entries.popitem(last=False)
            self.bytes -= _entry_bytes(old_key, old)


ENTRY_OVERHEAD = 400  # Python objects beside the arrays' data, once and per layer: a one-layer entry measured ~530 B (tracemalloc, numpy 2.4)


def _entry_bytes(key: bytes, lookups: dict[int, LayerLookup]) -> int:
    return len(key) + ENTRY_OVERHEAD + sum(lookup.rows.nbytes + ENTRY_OVERHEAD for lookup in lookups.values())


class WindowRows:
    """The rows of whole request windows, hashed and held end to end in one array per layer;
    request r's begin at `start[r]` (-1: not held). A step that needs windows not held hashes
    them in one call, with those of the `ahead` requests after them (requests are admitted in id
    order, so these run next). When they do not fit after the held ones, every window is dropped
    and the step's hashed again: at most `capacity` tokens are held, with no per-window
    bookkeeping (8 bytes a request)."""

    def __init__(self, offsets: np.ndarray, capacity: int, ahead: int,
                 hash_windows: Callable[[np.ndarray], dict[int, np.ndarray]]) -> None:
        self.offsets, self.capacity, self.ahead, self.hash_windows = offsets, capacity, ahead, hash_windows
        self.start = np.full(offsets.size - 1, -1, dtype=np.int64)
        self.used = 0
        self.rows: dict[int, np.ndarray] = {}

    def starts(self, requests: np.ndarray) -> np.ndarray | None:
        """Where the windows of `requests` (unique, sorted) begin in `rows`, hashing those not held;
        None when they are more than `capacity` tokens together."""
        missing = requests[self.start[requests] < 0]
        if missing.size:
            after = np.arange(missing[-1] + 1, min(self.start.size, missing[-1] + 1 + self.ahead))
            missing = np.concatenate([missing, after[self.start[after] < 0]])
            if self.used + int(window_lengths(self.offsets, missing).sum()) > self.capacity:
                self.start[self.start >= 0] = -1
                self.used = 0
                missing = requests
            lengths = window_lengths(self.offsets, missing)
            size = int(lengths.sum())
            if size > self.capacity:
                return None
            for layer, rows in self.hash_windows(missing).items():
                if layer not in self.rows:
                    self.rows[layer] = np.empty((self.capacity, rows.shape[1]), dtype=rows.dtype)
                self.rows[layer][self.used:self.used + size] = rows
            self.start[missing] = self.used + run_starts(lengths)
            self.used += size
        return self.start[requests]


@dataclass(eq=False)
class Workload:
    """Requests, the trace their windows are cut from, and the lookups of any step over them.

    Built once per scenario (`build_workload`); every executor pass takes a fresh
    serving engine (`Prepared.scheduler`). Its arrays and memoized lookups are read-only: all passes
    share them.
    """

    requests: Requests
    max_num_seqs: int
    max_num_batched_tokens: int
    window_offsets: np.ndarray  # int64 [R+1]: request i's tokens are flat positions offsets[i]:offsets[i+1]
    trace_tokens: np.ndarray  # the trace's raw ids, shared with the trace (not copied)
    vocab: CompressedVocab | None  # maps the trace's ids to compressed ids; None when they already are
    hashing: Hashing
    window_capacity: int  # tokens of hashed windows held at once (`WindowRows`)
    threads: int = 1  # hashing threads
    _memo: LookupMemo = field(default_factory=lambda: LookupMemo(MEMO_BYTES), repr=False)
    schedules: dict = field(default_factory=dict, repr=False)  # served steps kept for later passes (engramsim/schedule.py)

    def __post_init__(self) -> None:
        self._windows = WindowRows(self.window_offsets, self.window_capacity, self.max_num_seqs, self.hash_windows)

    @property
    def num_tokens(self) -> int:
        return int(self.window_offsets[-1])

    @property
    def total_prompt_tokens(self) -> int:
        return int(self.requests.prompt_len.sum())

    @property
    def total_output_tokens(self) -> int:
        return int(self.requests.output_len.sum())

    def _request_of(self, positions: np.ndarray) -> np.ndarray:
        """The request whose window holds each flat position."""
        return np.searchsorted(self.window_offsets, positions, side="right") - 1

    def _trace_tokens(self, index: np.ndarray) -> np.ndarray:
        """Raw ids at trace indices that may run past the trace's end (a window wrapping round)."""
        return self.trace_tokens[index % self.trace_tokens.size]

    def tokens(self, positions: np.ndarray) -> np.ndarray:
        """Raw trace ids of the window tokens at flat `positions` (what the model is fed)."""
        positions = np.asarray(positions, dtype=np.int64)
        request = self._request_of(positions)
        return self._trace_tokens(positions - self.window_offsets[request] + self.requests.trace_start[request])

    def hash_windows(self, requests: np.ndarray) -> dict[int, np.ndarray]:
        """Per Engram layer, the global row of every token and head of the windows of `requests`,
        laid end to end, [N, heads]: each window hashed as its own sequence, so its first tokens
        see the pad, as a fresh request does; per layer, the heads' offsets added."""
        lengths = window_lengths(self.window_offsets, requests)
        starts = run_starts(lengths)
        raw = self._trace_tokens(np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(self.requests.trace_start[requests] - starts, lengths))
        ids = raw.astype(np.int64) if self.vocab is None else self.vocab.compress(raw)
        rows = self.hashing.hash_sequences(ids, starts, threads=self.threads)
        for layer, layer_rows in rows.items():
            layer_rows += self.hashing.offsets[layer]
        return rows

    def token_rows(self, positions: np.ndarray) -> dict[int, np.ndarray]:
        """Per Engram layer, the global row of every token at `positions` and every head, [N, heads]."""
        positions = np.asarray(positions, dtype=np.int64)
        request = self._request_of(positions)
        needed = unique_sorted(request)
        starts = self._windows.starts(needed)
        if starts is None:  # more windows than are ever held at once: hashed for this call only
            lengths = window_lengths(self.window_offsets, needed)
            starts, rows = run_starts(lengths), self.hash_windows(needed)
        else:
            rows = self._windows.rows
        at = starts[np.searchsorted(needed, request)] + positions - self.window_offsets[request]
        return {layer: layer_rows[at] for layer, layer_rows in rows.items()}

    def lookups(self, step: Step | np.ndarray, key: bytes | None = None) -> dict[int, LayerLookup]:
        """Per Engram layer, the unique rows of the tokens a step feeds (a Step or its positions).

        Memoized by the positions' bytes (`key`, when the caller kept them: a replayed schedule's):
        while it stays in the memo, the same step content returns the same (shared, read-only) dict.
        Deduplication: see `unique_sorted`.
        """
        positions = np.ascontiguousarray(step.positions if isinstance(step, Step) else step, dtype=np.int64)
        key = positions.tobytes() if key is None else key
        found = self._memo.get(key)
        if found is None:
            found = {layer: LayerLookup(layer, _frozen(unique_sorted(rows, overwrite=True)), int(rows.size))
                     for layer, rows in self.token_rows(positions).items()}
            self._memo.put(key, found)
        return found


class StepLookups(Mapping[int, LayerLookup]):
    """A step's lookups, found when read: a pass that plans no Engram layer never hashes, and a
    step a policy only looked ahead at costs nothing until one reads it. Found in the workload's
    memo each time (by the positions' bytes, kept here), never held by the step: a schedule kept
    for later passes (engramsim/schedule.py) holds its steps but not their lookups."""

    def __init__(self, workload: Workload, positions: np.ndarray) -> None:
        self._workload, self._positions = workload, positions
        self._key: bytes | None = None

    def _all(self) -> dict[int, LayerLookup]:
        if self._key is None:  # the memo's key, as `Workload.lookups` makes it, made once
            self._positions = np.ascontiguousarray(self._positions, dtype=np.int64)
            self._key = self._positions.tobytes()
        return self._workload.lookups(self._positions, self._key)

    def __getitem__(self, layer: int) -> LayerLookup:
        return self._all()[layer]

    def __iter__(self) -> Iterator[int]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


def trace_vocab(trace: TraceLike, vocab: CompressedVocab | None) -> CompressedVocab | None:
    """The vocabulary that compresses the trace's ids, None when they are compressed already.

    A trace whose meta says `tokenizer: null` already holds compressed ids (trace format v1);
    so does any trace when no vocabulary is given. A trace tokenized with another tokenizer
    than the scenario's would hash the wrong n-grams, so that is an input error.
    """
    meta = getattr(trace, "meta", None) or {}
    if vocab is None or ("tokenizer" in meta and meta["tokenizer"] is None):
        return None
    info = meta.get("tokenizer")
    if isinstance(info, dict) and info.get("sha256") and info["sha256"] != vocab.tokenizer_sha256:
        raise InputError(
            str(meta.get("name", "trace")),
            f"trace was tokenized with {info.get('file', 'a tokenizer')} (sha256 {info['sha256'][:12]}...), "
            f"but the scenario's tokenizer has sha256 {vocab.tokenizer_sha256[:12]}",
            field="workload.trace",
        )
    return vocab


def build_workload(
    scenario: Scenario,
    trace: TraceLike,
    hashing: Hashing,
    vocab: CompressedVocab | None = None,
    threads: int | None = None,
    replica: int = 0,
) -> Workload:
    """Draw the requests; their windows are hashed as steps need them (`Workload.hash_windows`).
    `replica` g > 0: the requests of a node's GPU g, drawn alike from the seed (run.seed, g)."""
    cfg = scenario.workload
    requests = make_requests(cfg, trace, [scenario.run.seed, replica] if replica else scenario.run.seed)
    offsets = _frozen(window_offsets(requests))
    batching = cfg.batching
    token_bytes = 8 * sum(sizes.size for sizes in hashing.head_sizes.values())
    longest = int(requests.window_len.max(initial=0))
    capacity = min(int(offsets[-1]), max(WINDOW_BYTES // token_bytes, 3 * batching.max_num_seqs * longest))
    return Workload(requests, batching.max_num_seqs, batching.max_num_batched_tokens, offsets,
                    _frozen(np.asarray(trace.tokens).view()), trace_vocab(trace, vocab), hashing, capacity,
                    threads or max(1, min(8, os.cpu_count() or 1)))


def _frozen(array: np.ndarray) -> np.ndarray:
    """Make `array` read-only: the executors' passes share it, so none may change it."""
    array.flags.writeable = False
    return array

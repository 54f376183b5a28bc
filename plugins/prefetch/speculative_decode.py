"""Speculative decode prefetch: while a step runs, fetch the rows its sequences' next tokens would
need, guessed by an n-gram token predictor trained on other tokens than those served.

A sequence that samples at the end of a step (a decode, or the end of its prompt) feeds the
sampled token in its next step, whose Engram lookups are the n-grams ending at that token. During
the current step that token is unknown, but the ones before it are: the predictor (counts of the
next token after the last two, backing off to the last one, then to the most frequent tokens)
gives the `k` most likely next tokens, and the n-grams each would form are hashed with the
scenario's hashing plugin, each sequence's window as its own sequence, as the workload hashes
them. The rows are fetched with the current step's fetch as speculative rows, best guesses
first (every sequence's top candidate, then every second one, ...), so the planner's cut to
`budget_rows` drops the least likely; they never count as served in the step that fetches them.
With `serve_guesses` (the default) they stay in HBM through the next step, whose misses among
them (right guesses) are served from there and not fetched again (engramsim/plan.py, staged rows).

The predictor is trained on `train_range` of `train_trace` (the scenario's trace by default).
When that is the served trace (by content), the served requests' windows are cut out of the
training tokens (`exclude_served`, no n-gram spans a cut), or, with `exclude_served: false`, a
range holding any of them is refused, naming the field: the predictor never sees the tokens it
predicts.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field, PositiveInt, model_validator

from engramsim.errors import InputError
from engramsim.registry import build_hashing, register
from engramsim.splits import range_mask, served_mask, token_split  # noqa: F401 (range_mask, served_mask: re-exported)
from engramsim.strategies import HashingSetup, Params, Prefetch, SetupContext, StepView
from engramsim.tokenizer import compressed_vocab
from engramsim.workload import build_workload, trace_vocab

if TYPE_CHECKING:
    from engramsim.strategies import Hashing
    from engramsim.tokenizer import CompressedVocab
    from engramsim.workload import Workload

FIELD = "strategies.prefetch.params."
EMPTY = np.empty(0, dtype=np.int64)
TRAINED: OrderedDict[tuple[int, bytes], NgramPredictor] = OrderedDict()  # predictors by what trained them, shared by a run's passes
TRAINED_KEPT = 4


class SpeculativeDecodeParams(Params):
    k: PositiveInt = Field(default=4, le=64, description="candidate next tokens per sequence, most likely first")
    budget_rows: PositiveInt = Field(default=4096, le=1 << 30,
                                     description="per Engram layer, the most speculative rows one fetch carries (staging reserved in HBM)")
    train_trace: str | None = Field(default=None, description="trace the predictor is trained on (name or .npz); default: the scenario's")
    train_range: tuple[float, float] = Field(default=(0.0, 1.0), description="[start, end) of the training trace, as fractions of its tokens")
    exclude_served: bool = Field(default=True, description="cut the served requests' windows out of the training tokens (served trace only); "
                                                           "false: a range holding any of them is refused")
    serve_guesses: bool = Field(default=True, description="a right guess serves the next step from where it landed (held in HBM one "
                                                          "step more), which then does not fetch it; false: the next step fetches it again "
                                                          "(what the real backends run; they refuse true)")

    @model_validator(mode="after")
    def _range(self) -> SpeculativeDecodeParams:
        start, end = self.train_range
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"train_range must satisfy 0 <= start < end <= 1, got [{start}, {end}]")
        return self


# ---- the predictor ------------------------------------------------------------------------------
def _top_next(context: np.ndarray, following: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per distinct context key (sorted), the k most frequent following ids (ties: smaller id
    first), -1 where fewer were seen: (keys, [contexts, k])."""
    if context.size == 0:
        return EMPTY, np.empty((0, k), dtype=np.int64)
    span = int(following.max()) + 1
    pairs, counts = np.unique(context * span + following, return_counts=True)  # sorted by context, then following id
    ctx, nxt = np.divmod(pairs, span)
    most = int(counts.max()) + 1
    ranked = np.argsort(ctx * most + (most - 1 - counts), kind="stable")  # by context, count down; stable: ids up
    ctx, nxt = ctx[ranked], nxt[ranked]
    group_first = np.ones(ctx.size, dtype=bool)
    group_first[1:] = ctx[1:] != ctx[:-1]
    group = np.cumsum(group_first) - 1
    rank = np.arange(ctx.size) - np.flatnonzero(group_first)[group]
    keep = rank < k
    table = np.full((int(group[-1]) + 1, k), -1, dtype=np.int64)
    table[group[keep], rank[keep]] = nxt[keep]
    return ctx[group_first], table


def _lookup(keys: np.ndarray, table: np.ndarray, query: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Rows of `table` for the `query` keys found in `keys` (and `valid`), -1 rows elsewhere."""
    out = np.full((query.size, table.shape[1]), -1, dtype=np.int64)
    if keys.size == 0 or query.size == 0:
        return out
    at = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    found = valid & (keys[at] == query)
    out[found] = table[at[found]]
    return out


@dataclass(frozen=True)
class NgramPredictor:
    """Next-token candidates from counts: after the last two tokens, backing off to the last one,
    then to the most frequent tokens; trained only on n-grams whose every token is allowed."""

    k: int
    vocab: int  # ids seen in training are < vocab; other ids match no context
    unigram: np.ndarray  # [k], -1 padded
    bigram_keys: np.ndarray
    bigram_next: np.ndarray  # [contexts, k]
    trigram_keys: np.ndarray  # a * vocab + b
    trigram_next: np.ndarray

    @classmethod
    def train(cls, ids: np.ndarray, allowed: np.ndarray, k: int) -> NgramPredictor:
        ids = np.asarray(ids, dtype=np.int64)
        allowed = np.asarray(allowed, dtype=bool)
        vocab = int(ids[allowed].max()) + 1 if allowed.any() else 1
        if vocab > 1 << 20:  # contexts x following ids are packed into int64
            raise ValueError(f"token ids up to {vocab - 1:,}: the predictor packs three ids below 2**20 into one int64")
        uni_ids = ids[allowed]
        counts = np.bincount(uni_ids, minlength=vocab)
        top = np.lexsort((np.arange(vocab), -counts))[:k]
        unigram = np.full(k, -1, dtype=np.int64)
        top = top[counts[top] > 0]
        unigram[: top.size] = top
        pair = allowed[:-1] & allowed[1:]
        bigram = _top_next(ids[:-1][pair], ids[1:][pair], k)
        triple = allowed[:-2] & allowed[1:-1] & allowed[2:]
        trigram = _top_next(ids[:-2][triple] * vocab + ids[1:-1][triple], ids[2:][triple], k)
        return cls(k, vocab, unigram, *bigram, *trigram)

    def predict(self, before: np.ndarray, last: np.ndarray) -> np.ndarray:
        """[S, k] candidates for the token after (before, last) (`before` -1: unknown), most
        likely first, distinct, -1 where fewer are known."""
        before, last = np.asarray(before, dtype=np.int64), np.asarray(last, dtype=np.int64)
        known_last = (last >= 0) & (last < self.vocab)
        known_both = known_last & (before >= 0) & (before < self.vocab)
        cand = np.concatenate([
            _lookup(self.trigram_keys, self.trigram_next, np.where(known_both, before * self.vocab + last, -1), known_both),
            _lookup(self.bigram_keys, self.bigram_next, last, known_last),
            np.broadcast_to(self.unigram, (last.size, self.k)),
        ], axis=1)
        width = cand.shape[1]
        earlier = np.tril(np.ones((width, width), dtype=bool), -1)  # [j, i]: column i comes before column j
        repeated = ((cand[:, :, None] == cand[:, None, :]) & earlier[None]).any(axis=2)
        keep = (cand >= 0) & ~repeated
        order = np.argsort(~keep, axis=1, kind="stable")[:, : self.k]
        out = np.take_along_axis(cand, order, axis=1)
        out[~np.take_along_axis(keep, order, axis=1)] = -1
        return out


def trained(ids: np.ndarray, allowed: np.ndarray, k: int) -> NgramPredictor:
    """`NgramPredictor.train`, remembered for the same tokens, mask and k (a run's passes share it)."""
    digest = hashlib.blake2b(np.ascontiguousarray(ids, dtype=np.int64).tobytes(), digest_size=16)
    digest.update(np.packbits(allowed).tobytes())
    key = (k, digest.digest())
    if key not in TRAINED:
        TRAINED[key] = NgramPredictor.train(ids, allowed, k)
        while len(TRAINED) > TRAINED_KEPT:
            TRAINED.popitem(last=False)
    TRAINED.move_to_end(key)
    return TRAINED[key]


# ---- the policy ---------------------------------------------------------------------------------
@register("prefetch", "speculative-decode")
class SpeculativeDecode(Prefetch):
    """Fetch, with each step's rows, the rows of its sequences' k likeliest next tokens (an n-gram predictor trained on unserved tokens)."""

    Params = SpeculativeDecodeParams
    params: SpeculativeDecodeParams

    def __init__(self, params: SpeculativeDecodeParams, setup: SetupContext) -> None:
        super().__init__(params, setup)
        scenario = setup.scenario
        split = token_split(scenario, params.train_trace, params.train_range, params.exclude_served,
                            (FIELD + "train_trace", FIELD + "train_range"), "the predictor would train on")
        window = split.allowed
        self.train_name, self.same_trace, self._split = split.name, split.same_trace, split
        self._served, self._trained = split.served, split.trace
        if np.count_nonzero(window[:-1] & window[1:]) == 0:
            raise InputError(f"trace {self.train_name}", "leaves no two consecutive tokens to train the predictor on"
                             + (" outside the served windows" if self.same_trace else ""), field=FIELD + "train_range")
        self.trained_on = window  # the training trace's tokens the predictor may count (tests check it against the served windows)
        self.serve_speculative = params.serve_guesses
        self._ready: tuple[Workload, Hashing, CompressedVocab | None, NgramPredictor] | None = None
        self._memo: tuple[int, dict[int, np.ndarray]] = (-1, {})
        self._lengths: tuple[np.ndarray, np.ndarray] = (EMPTY, EMPTY)  # prompt and window tokens of each request

    def describe(self) -> str:
        """Which tokens trained the predictor, in words."""
        return self._split.describe()

    def source(self) -> dict:
        """Which tokens trained the predictor, as data (results.json's `sources`)."""
        return self._split.source()

    def issue_layer(self, layer: int, view: StepView) -> int:
        return 0  # with the step's own rows, at its start, as layer-ahead

    def speculative_budget(self, layer: int) -> int:
        return self.params.budget_rows

    def speculative_rows(self, layer: int, view: StepView) -> np.ndarray:
        index, rows = self._memo
        if index != view.step.index:
            rows = self._guess(view)
            self._memo = (view.step.index, rows)
        return rows.get(layer, EMPTY)

    # ---- building (on first use: the pass without Engram never guesses) ----------------------------
    def _setup(self) -> tuple[Workload, Hashing, CompressedVocab | None, NgramPredictor]:
        """The served workload and hashing (rebuilt as the session builds them: same seed, same
        requests), the vocabulary that compresses the served trace, and the trained predictor."""
        if self._ready is None:
            from engramsim.session import PAD_ID  # the session imports the registry, which imports this module

            scenario = self.setup.scenario
            engram = scenario.model.engram
            vocab = compressed_vocab(engram.tokenizer)
            hashing = build_hashing(scenario.strategies.hashing, HashingSetup(engram, vocab.size, int(vocab.table[PAD_ID])))
            workload = build_workload(scenario, self._served, hashing, vocab, threads=1)
            try:
                train_vocab = trace_vocab(self._trained, vocab)
            except InputError as exc:
                raise InputError(exc.source, exc.problem, field=FIELD + "train_trace") from None
            raw = np.asarray(self._trained.tokens)
            ids = raw.astype(np.int64) if train_vocab is None else train_vocab.compress(raw)
            self._ready = (workload, hashing, workload.vocab, trained(ids, self.trained_on, self.params.k))
            self._lengths = (workload.requests.prompt_len, workload.requests.window_len)
        return self._ready

    def _guess(self, view: StepView) -> dict[int, np.ndarray]:
        """Per Engram layer, the rows of every sampling sequence's candidate next n-grams, rank by rank."""
        workload, hashing, vocab, predictor = self._setup()
        step = view.step
        seqs, following = step.seq_ids, step.context_lens  # the window index each sequence feeds next
        prompt_len, window_len = self._lengths
        samples = (following >= prompt_len[seqs]) & (following <= window_len[seqs] - 2)
        seqs, following = seqs[samples], following[samples]
        if seqs.size == 0:
            return {}
        orders = self.setup.scenario.model.engram.max_ngram - 1  # tokens before the new one in its longest n-gram
        width = max(2, orders)
        context = np.full((seqs.size, width), -1, dtype=np.int64)  # the tokens before, last column the latest; -1: before the window
        for back in range(1, width + 1):
            at = following - back
            known = at >= 0
            raw = workload.tokens(workload.window_offsets[seqs[known]] + at[known])
            context[known, width - back] = raw.astype(np.int64) if vocab is None else vocab.compress(raw)
        candidates = predictor.predict(context[:, -2], context[:, -1])
        rank, seq = np.nonzero(candidates.T >= 0)  # rank-major: every sequence's best guess first
        if rank.size == 0:
            return {}
        grams = np.concatenate([context[seq, width - orders:], candidates[seq, rank][:, None]], axis=1)
        present = grams >= 0
        lengths = present.sum(axis=1)
        starts = np.cumsum(lengths) - lengths
        hashed = hashing.hash_sequences(grams[present], starts, threads=1)
        last = starts + lengths - 1
        return {layer: (rows[last] + hashing.offsets[layer]).reshape(-1) for layer, rows in hashed.items()}

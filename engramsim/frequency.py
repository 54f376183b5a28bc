"""Row-access frequency profiles: how often each row of each Engram table is looked up when the
tokens of a trace split (`splits.token_split`, never the served tokens) are hashed with the
scenario's hashing plugin.

Each run of consecutive allowed tokens is hashed as its own sequence, as the workload hashes each
request's window (its first tokens' n-grams padded), so no n-gram spans a cut-out served window.
A row's count is the number of (token, head) lookups that land on it. `hot_rows` ranks a layer's
rows by count (ties: the lower row), rows never looked up excluded. Profiles are remembered for
the same tokens, mask and hashing (a run builds its placement and cache several times).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from pydantic import Field, field_validator

from engramsim.errors import InputError
from engramsim.registry import build_hashing
from engramsim.splits import TokenSplit, token_split
from engramsim.strategies import HashingSetup, Params, SetupContext
from engramsim.tokenizer import compressed_vocab
from engramsim.workload import trace_vocab

PROFILES: OrderedDict[bytes, Profile] = OrderedDict()
PROFILES_KEPT = 4


class ProfileParams(Params):
    """The params every frequency-profiled policy takes: which tokens its profile counts."""

    profile_trace: str | None = Field(default=None, description="trace the frequency profile is built on (name or .npz); default: the scenario's")
    profile_range: tuple[float, float] = Field(default=(0.0, 1.0), description="[start, end) of that trace, as fractions of its tokens")
    exclude_served: bool = Field(default=True, description="cut the served requests' windows out of the profiled tokens (served trace "
                                                           "only); false: a range holding any of them is refused")

    @field_validator("profile_range")
    @classmethod
    def _range(cls, value: tuple[float, float]) -> tuple[float, float]:
        start, end = value
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"profile_range must satisfy 0 <= start < end <= 1, got [{start}, {end}]")
        return value


@dataclass(frozen=True)
class Profile:
    """Per Engram layer, the rows looked up (sorted) and how often each was."""

    rows: dict[int, np.ndarray]
    counts: dict[int, np.ndarray]

    def hot_rows(self, layer: int, n: int) -> np.ndarray:
        """The `n` most looked-up rows of `layer` (fewer if fewer were looked up), sorted by row id."""
        rows, counts = self.rows[layer], self.counts[layer]
        if n >= rows.size:
            return rows
        ranked = np.lexsort((rows, -counts))[:n]  # count down, then row up
        return np.sort(rows[ranked])


def segments(allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions of the allowed tokens, where each run of consecutive ones starts among them)."""
    positions = np.flatnonzero(allowed)
    if positions.size == 0:
        return positions, positions
    first = np.ones(positions.size, dtype=bool)
    first[1:] = np.diff(positions) > 1
    return positions, np.flatnonzero(first)


def profile(setup: SetupContext, split: TokenSplit, trace_field: str = "workload.trace") -> Profile:
    """The row counts of the split's allowed tokens, hashed with the scenario's hashing plugin
    (`trace_field`: named if the trace was tokenized with another tokenizer)."""
    from engramsim.session import PAD_ID  # the session imports the registry, which imports the plugins

    scenario = setup.scenario
    engram = scenario.model.engram
    digest = hashlib.blake2b(np.ascontiguousarray(split.trace.tokens).tobytes(), digest_size=16)
    digest.update(np.packbits(split.allowed).tobytes())
    digest.update(json.dumps([engram.model_dump(mode="json"), scenario.strategies.hashing.model_dump(mode="json")],
                             sort_keys=True).encode())
    key = digest.digest()
    if key in PROFILES:
        PROFILES.move_to_end(key)
        return PROFILES[key]
    vocab = compressed_vocab(engram.tokenizer)
    hashing = build_hashing(scenario.strategies.hashing, HashingSetup(engram, vocab.size, int(vocab.table[PAD_ID])))
    try:
        used_vocab = trace_vocab(split.trace, vocab)
    except InputError as exc:
        raise InputError(exc.source, exc.problem, field=trace_field) from None
    positions, starts = segments(split.allowed)
    raw = np.asarray(split.trace.tokens)[positions]
    ids = raw.astype(np.int64) if used_vocab is None else used_vocab.compress(raw)
    rows: dict[int, np.ndarray] = {}
    counts: dict[int, np.ndarray] = {}
    hashed = hashing.hash_sequences(ids, starts, threads=1) if ids.size else {}
    for layer in hashing.head_sizes:
        if layer in hashed:
            rows[layer], counts[layer] = np.unique((hashed[layer] + hashing.offsets[layer]).reshape(-1), return_counts=True)
        else:
            rows[layer], counts[layer] = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    found = Profile(rows, counts)
    PROFILES[key] = found
    while len(PROFILES) > PROFILES_KEPT:
        PROFILES.popitem(last=False)
    return found


def profiled(setup: SetupContext, params: ProfileParams, kind: str) -> tuple[TokenSplit, Profile]:
    """The split a `kind` plugin's params name (refused in one line if it holds served tokens with
    `exclude_served: false`) and its frequency profile."""
    field = f"strategies.{kind}.params."
    split = token_split(setup.scenario, params.profile_trace, params.profile_range, params.exclude_served,
                        (field + "profile_trace", field + "profile_range"), "the frequency profile would count")
    if not split.allowed.any():
        raise InputError(f"trace {split.name}", "leaves no tokens to build the frequency profile on"
                         + (" outside the served windows" if split.same_trace else ""), field=field + "profile_range")
    return split, profile(setup, split, field + "profile_trace")

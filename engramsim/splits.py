"""Which tokens of a trace a policy may learn from: a fraction range of a trace, less the tokens
the scenario serves.

Policies that learn from tokens (the speculative-decode predictor, the frequency profile behind
`static-hot` and `hot-rows`) must never see the tokens they are scored on. `token_split` resolves
the trace they learn from (the scenario's by default, or another by name or .npz), cuts the range
out of it and, when that trace is the served one (compared by content), either removes the served
requests' windows from it (`exclude_served`, wrap-around included) or refuses a range that holds
any served token, in one line naming the range's field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from engramsim.errors import InputError
from engramsim.traces.format import load_trace
from engramsim.workload import make_requests

if TYPE_CHECKING:
    from engramsim.scenario import Scenario
    from engramsim.workload import TraceLike


def served_mask(n_tokens: int, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Mask of the trace's tokens inside any served window (start, length), a window running past
    the end continuing from the start (`workload.wrap_trace`)."""
    mask = np.zeros(n_tokens, dtype=bool)
    if n_tokens == 0 or starts.size == 0:
        return mask
    starts, lengths = np.asarray(starts, dtype=np.int64) % n_tokens, np.asarray(lengths, dtype=np.int64)
    if int(lengths.max()) >= n_tokens:
        mask[:] = True
        return mask
    edges = np.zeros(n_tokens + 1, dtype=np.int64)
    ends = starts + lengths
    inside = ends <= n_tokens
    np.add.at(edges, starts, 1)
    np.add.at(edges, np.where(inside, ends, n_tokens), -1)
    wrapped = ends[~inside] - n_tokens
    np.add.at(edges, np.zeros(wrapped.size, dtype=np.int64), 1)
    np.add.at(edges, wrapped, -1)
    return np.cumsum(edges[:-1]) > 0


def range_mask(n_tokens: int, token_range: tuple[float, float]) -> np.ndarray:
    """Mask of the tokens in [start, end) of the trace, as fractions of its length."""
    lo, hi = (int(round(f * n_tokens)) for f in token_range)
    mask = np.zeros(n_tokens, dtype=bool)
    mask[lo:hi] = True
    return mask


@dataclass(frozen=True)
class TokenSplit:
    """The trace a policy learns from and the mask of its tokens it may see."""

    served: TraceLike  # the scenario's trace
    trace: TraceLike  # the one learned from (`served` itself by default)
    name: str  # as the scenario gave it (the served trace's name by default)
    token_range: tuple[float, float]
    same_trace: bool  # the served trace, by content
    allowed: np.ndarray  # bool, one per token of `trace`

    def describe(self) -> str:
        """Which tokens, in words: 'trace NAME [start, end)', less the served windows if cut out."""
        start, end = self.token_range
        return f"trace {self.name} [{start:g}, {end:g})" + (", less the served windows" if self.same_trace else "")

    def source(self) -> dict:
        """The same, as data (for results.json)."""
        return {"trace": self.name, "range": list(self.token_range), "served_trace": self.same_trace,
                "tokens": int(np.count_nonzero(self.allowed))}


def token_split(scenario: Scenario, trace: str | None, token_range: tuple[float, float], exclude_served: bool,
                fields: tuple[str, str], learner: str) -> TokenSplit:
    """The tokens of `trace` (None: the scenario's) in `token_range` that a policy may learn from.

    `fields`: the full field paths of the trace and range params, named by errors; `learner`: who
    learns, in the refusal's words ('the predictor would train on').
    """
    served = load_trace(scenario.workload.trace)
    trace_field, range_field = fields
    if trace is None:
        learned, name = served, str(scenario.workload.trace)
    else:
        name = trace
        try:
            learned = load_trace(trace)
        except InputError as exc:
            raise InputError(exc.source, exc.problem, field=trace_field) from None
    served_tokens, learned_tokens = np.asarray(served.tokens), np.asarray(learned.tokens)
    same = served_tokens.size == learned_tokens.size and bool(np.array_equal(served_tokens, learned_tokens))
    n = int(learned_tokens.size)
    window = range_mask(n, token_range)
    if same:
        requests = make_requests(scenario.workload, served, scenario.run.seed)
        inside = served_mask(n, requests.trace_start, requests.window_len)
        if not exclude_served and (window & inside).any():
            first = int(np.flatnonzero(window & inside)[0])
            lo, hi = np.flatnonzero(window)[[0, -1]]
            raise InputError(
                f"trace {name}", f"{learner} tokens {lo:,}-{hi + 1:,} of the served trace, which hold served requests' windows "
                f"(the first served token in it: {first:,}); choose a range outside them, another "
                f"{trace_field.rsplit('.', 1)[-1]}, or exclude_served: true",
                field=range_field)
        window &= ~inside
    return TokenSplit(served, learned, name, token_range, same, window)

"""Belady/OPT with a lookahead: an oracle bound, not a policy a server could run (it reads the future).
Shared by all Engram layers, it ranks every layer's rows by their next use.

Each step keeps, of the rows held and the step's misses, the `rows` next needed soonest within
`horizon` steps, so a miss needed later than every row it would evict is not admitted (OPT with
bypass). Rows not needed within the horizon go first, least recent first: with no known future
(requests still arriving) that is exactly LRU.

Ranking every row held each step would cost O(capacity); instead only the rows needed within the
horizon are ranked by their next use, and the others leave in LRU order (`Recency`), so a step
costs O(horizon x rows a step + rows evicted).
"""

from __future__ import annotations

import numpy as np
from pydantic import PositiveInt

from engramsim.plugins.cache.held import EMPTY, Recency, SharedCapacityParams, TableRows
from engramsim.registry import register
from engramsim.rows import member
from engramsim.strategies import CacheLookup, SetupContext, StepView


class BeladyParams(SharedCapacityParams):  # `rows` or `bytes` per Engram layer, or for all of them (`shared`)
    horizon: PositiveInt = 64  # steps of `StepView.future` looked at


@register("cache", "belady")
class Belady(TableRows):
    """Oracle bound: keeps the rows next used soonest in `view.future(horizon)`, unused ones evicted first; no known future (timed arrivals): LRU."""

    Params = BeladyParams
    params: BeladyParams

    def __init__(self, params: BeladyParams, setup: SetupContext) -> None:
        super().__init__(params, setup)
        self._recency = {self._group[layer]: Recency(table, log_limit=self._capacity[layer]) for layer, table in self._tables.items()}

    def _lookup(self, layer: int, rows: np.ndarray, view: StepView, now: int) -> CacheLookup:
        table, recency = self._tables[layer], self._recency[self._group[layer]]
        hit, at, admit = table.find(rows)
        evicted = EMPTY
        over = table.live + admit.size - self._capacity[layer]
        recency.stamp_hits(now, at, hit, evicting=over > 0)
        used = rows
        if over > 0:
            admit, stays, evicted = self._drop(layer, rows, hit, at, over, view, now, recency)
            stays[admit] = True
            used = rows[stays]
        table.insert(rows[admit], at[admit], now if recency.stamping else None)
        recency.push(now, used)
        return CacheLookup(hit, admit, evicted)

    def _drop(self, layer: int, rows: np.ndarray, hit: np.ndarray, at: np.ndarray, over: int, view: StepView, now: int,
              recency: Recency) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Drop the `over` candidates (rows held, and this step's misses) ranked last; evict the
        held ones. (misses admitted as indices into `rows`, mask of the hits that stay, rows evicted).

        Ranked best first by: next use (none within the horizon last), most recent stamp, held
        before new, then held: highest row, new: lowest row. So the drop order is: rows held, not
        used this step nor needed soon, least recent first (LRU); misses not needed soon, highest
        first; hits not needed soon, lowest first; then the rows needed soon, latest need first."""
        table = self._tables[layer]
        soon, distance = self._next_use(layer, view)  # rows needed within the horizon (sorted), steps until each
        soon_held, soon_at, _ = table.find(soon)
        soon_now = member(rows, soon)
        needed = member(soon, rows)  # this step's rows needed soon again
        old = table.live - int(np.count_nonzero(hit)) - int(np.count_nonzero(soon_held & ~soon_now))  # held, unused now, not needed soon
        gone_rows, gone_at = recency.pop(min(over, old), (lambda r: member(soon, r)) if soon.size else None)
        over -= gone_rows.size
        missed = np.flatnonzero(~hit)
        stays = hit.copy()
        if over > 0:  # misses not needed soon, highest row first
            idle = missed[~needed[missed]]
            cut = min(over, idle.size)
            missed = np.setdiff1d(missed, idle[idle.size - cut:], assume_unique=True)
            over -= cut
        if over > 0:  # hits not needed soon, lowest row first
            idle = np.flatnonzero(hit & ~needed)[:over]
            stays[idle] = False
            gone_rows, gone_at = np.concatenate([gone_rows, rows[idle]]), np.concatenate([gone_at, at[idle]])
            over -= idle.size
        if over > 0:  # the rows needed soon, held or missed now, latest need first
            pick = np.flatnonzero(soon_held | soon_now)
            held, cand = soon_held[pick], soon[pick]
            stamps = np.where(held, table.stamps[np.where(held, soon_at[pick], 0)], now)
            drop = pick[np.lexsort((np.where(held, cand, -cand), held, stamps, -distance[pick]))[:over]]
            gone = drop[soon_held[drop]]
            gone_rows, gone_at = np.concatenate([gone_rows, soon[gone]]), np.concatenate([gone_at, soon_at[gone]])
            stays[np.searchsorted(rows, soon[gone[soon_now[gone]]])] = False
            missed = np.setdiff1d(missed, np.searchsorted(rows, soon[drop[~soon_held[drop]]]), assume_unique=True)
        table.remove(gone_at)
        return missed, stays, np.sort(gone_rows)

    def _next_use(self, layer: int, view: StepView) -> tuple[np.ndarray, np.ndarray]:
        """The keys needed within the horizon (sorted, unique) and the steps until each is first
        needed; shared by all layers: every layer's, and this step's later layers' at 0 steps."""
        layers = self._layer_at.tolist() if self.shared else [layer]
        future = [[(0, self.keys(other, view.step.lookups[other].rows)) for other in layers if other > layer]]
        future += [[(d, self.keys(other, s.lookups[other].rows)) for other in layers]
                   for d, s in enumerate(view.future(self.params.horizon), start=1)]
        parts = [part for step in future for part in step]
        if not parts:
            return EMPTY, EMPTY
        needed = np.concatenate([rows for _, rows in parts])
        distance = np.repeat(np.array([d for d, _ in parts], dtype=np.int64), [rows.size for _, rows in parts])
        seen, first = np.unique(needed, return_index=True)
        return seen, distance[first]

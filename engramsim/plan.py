"""Per-step decisions shared by every executor: which rows are in HBM, which must be fetched, and
when each fetch is issued — at a block of its own step or of an earlier one. The simulator prices
a plan; a real backend executes it.

Steps are planned once each and in step order, so a cache sees lookups in the order they run.
A prefetch policy that leads by k steps gets the steps up to k ahead planned early, from
`StepView.future`; when the future is not known (requests still arriving) a fetch is issued in
its own step instead.

Staged rows: rows an earlier step fetched into the HBM staging area serve a later step's misses,
which that step then does not fetch; its Engram layer waits for the fetches that carried them
(`FetchPlan.staged_from`). Two kinds (`Staged`): a step's speculative rows, held for the next
step of their layer and released after it (`Prefetch.serve_speculative`); and, for a policy with
`Prefetch.fetch_waiting`, the prompt rows of the requests waiting to be admitted
(`StepView.waiting`), fetched at the start of a step whose future is not known by one staging
fetch per layer (`FetchPlan.staging`), in queue order while they fit `max_staged_rows`, and held
until a step brings the request's KV cache to its prefill's tokens (a request preempted after
that is staged again while it waits). Any row held serves any step's miss of its layer, but a
step is never served by the staging fetch issued in it. A staged row is never fetched again
while it is held: staging fetches and speculative rows leave out the rows held.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeAlias

import numpy as np

from engramsim.records import LayerRecord
from engramsim.rows import member
from engramsim.steps import Step
from engramsim.strategies import PRICED_TIERS, Cache, Placement, Prefetch, StepView, Tier, Waiting

EMPTY = np.empty(0, dtype=np.int64)
EMPTY.flags.writeable = False
HBM = int(Tier.HBM)  # compared as a plain int: numpy compares an IntEnum twice as slowly

FetchKey: TypeAlias = tuple[int, int, bool]
"""A fetch as executors key it: (step, layer, staging): a step's own fetch of a layer, or its staging fetch."""


def _shifted(future: Callable[[int], list[Step]], k: int) -> Callable[[int], list[Step]]:
    """The future as seen from k steps ahead: `future` less its first k steps."""
    return lambda n: future(k + n)[k:]


@dataclass(frozen=True, kw_only=True)
class FetchPlan:
    """One Engram layer of one step: how each needed row is served, and the fetch for the rest."""

    step: int  # the step whose Engram layer needs the rows
    layer: int
    rows: np.ndarray  # every unique row the step needs, sorted
    references: int
    placed_hbm: int  # needed rows the placement keeps in HBM
    cache_hits: int  # needed rows outside HBM found in the HBM cache
    fetch: np.ndarray  # rows to move over the link: misses (sorted), then speculative extras
    misses: int  # how many of `fetch` the step needs
    issue_step: int  # the step during which the fetch is issued (<= step)
    issue_block: int  # ... at the start of this block
    admitted: np.ndarray = field(default_factory=lambda: EMPTY)  # rows the cache took in with this lookup (each one a miss)
    evicted: np.ndarray = field(default_factory=lambda: EMPTY)  # rows the cache dropped with this lookup
    guessed: int = 0  # of the misses (fetched or staged), rows the previous step's fetch of this layer carried as speculative rows
    deadline: bool = False  # the layer proceeds without the misses if their fetch has not landed (deadline mode)
    missed_references: int = 0  # references that read the misses, fetched or staged (deadline mode only: what dropping them costs)
    staged: np.ndarray = field(default_factory=lambda: EMPTY)  # misses served from the staging area (fetched by earlier steps), sorted
    staged_from: tuple[FetchKey, ...] = ()  # the fetches that carried `staged`: the layer waits for them too
    waiting: int = 0  # rows this step's staging fetch of this layer carries for waiting requests (counted in this record)
    staging: bool = False  # a staging fetch: `fetch` holds waiting requests' rows for later steps; no Engram layer of its own
    carries: bool = False  # later steps are served from this fetch: an executor keeps it until a StepPlan releases its key

    @property
    def speculative(self) -> int:
        return 0 if self.staging else int(self.fetch.size - self.misses)

    @property
    def missed(self) -> int:
        """Needed rows outside HBM and not cached: fetched by this fetch or staged."""
        return self.misses + int(self.staged.size)

    @property
    def key(self) -> FetchKey:
        return (self.step, self.layer, self.staging)

    def record(self, row_bytes: int, issue_s: float, ready_s: float, stall_s: float, dropped: bool = False) -> LayerRecord:
        """What this layer cost, once an executor knows when its fetch was issued and landed;
        `dropped`: the layer went ahead without the misses (deadline mode, the fetch late)."""
        if dropped and not self.deadline:
            raise ValueError(f"layer {self.layer} of step {self.step} dropped its rows without a deadline")
        return LayerRecord(
            layer=self.layer, rows_unique=int(self.rows.size), references=self.references, rows_placed_hbm=self.placed_hbm,
            cache_hits=self.cache_hits, rows_missed=self.missed, rows_speculative=self.speculative, rows_guessed=self.guessed,
            rows_dropped=self.missed if dropped else 0, references_dropped=self.missed_references if dropped else 0,
            rows_staged=int(self.staged.size), rows_waiting=self.waiting, bytes_fetched=(int(self.fetch.size) + self.waiting) * row_bytes,
            issue_step=self.issue_step, issue_s=issue_s, ready_s=ready_s, stall_s=stall_s,
        )


@dataclass(frozen=True)
class Staged:
    """Rows of one layer held in the staging area: carried by fetch `key`, for the prefill of
    `seq` (held until a step brings its KV cache to `tokens`), or (seq None) the speculative rows
    of step key[0], held for the next step."""

    rows: np.ndarray  # sorted, unique
    key: FetchKey
    seq: int | None = None
    tokens: int = 0


@dataclass(frozen=True)
class StepPlan:
    """Everything an executor needs to run one step."""

    step: Step
    layers: dict[int, FetchPlan]  # this step's Engram layers, by layer
    issues: dict[int, list[FetchPlan]] = field(default_factory=dict)  # block -> fetches issued at its start (some for later steps)
    released: tuple[FetchKey, ...] = ()  # fetches whose staged rows no step after this one is served from


def _one_tier(placement: Placement) -> int | None:
    """The tier that holds every row of every table, when the placement says one does
    (`bytes_per_tier`), else None."""
    try:
        per_tier = placement.bytes_per_tier()
    except NotImplementedError:
        return None
    used = [tier for tier, size in per_tier.items() if size > 0]
    return int(used[0]) if len(used) == 1 else None


class Planner:
    """Applies placement, cache and prefetch to every step, in step order (caches keep state)."""

    def __init__(self, placement: Placement, cache: Cache, prefetch: Prefetch, table_rows: dict[int, int], blocks: int,
                 references_to: Callable[[Step, int, np.ndarray], int] | None = None) -> None:
        """`table_rows`: the rows of each Engram layer's table to plan (none: a pass without
        Engram); `blocks`: backbone depth; `references_to(step, layer, rows)`: how many of the
        step's references read `rows` (sorted), for a deadline-mode prefetch when only some of a
        layer's rows are missed (none: such a plan is an error)."""
        self.placement, self.cache, self.prefetch = placement, cache, prefetch
        self.references_to = references_to
        self.table_rows, self.blocks = table_rows, blocks
        self.layers = sorted(table_rows)
        self._planned: dict[int, dict[int, FetchPlan]] = {}  # steps planned ahead of their turn
        self._issues: dict[int, dict[int, list[FetchPlan]]] = {}  # issuing step -> block -> fetches
        self._next = 0  # the next step index not yet planned
        self._held = {layer: cache.size(layer) for layer in self.layers}  # rows each layer's cache holds, by its reports
        self._speculated = {layer: EMPTY for layer in self.layers}  # the speculative rows of each layer's last fetch
        self._staged: dict[int, list[Staged]] = {layer: [] for layer in self.layers}  # rows held in the staging area, oldest first
        self._index: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # per layer: the rows held, sorted, and each one's entry in _staged
        self._waiting_rows = dict.fromkeys(self.layers, 0)  # rows held for waiting requests, per layer
        self._staged_seqs: dict[int, int] = {}  # staged request -> the tokens its prefill feeds
        self._refs: Counter[FetchKey] = Counter()  # staged entries each carrying fetch serves
        self._released: dict[int, list[FetchKey]] = {}  # step -> carrying fetches released while planning it
        self._one_tier = _one_tier(placement)  # the tier of every row, when the placement keeps them all in one
        self._cacheless = {layer: cache.capacity_rows(layer) <= 0 for layer in self.layers}  # a cache of no rows misses every lookup

    def plan(self, view: StepView) -> StepPlan:
        """The plan of `view.step`; plans the steps the prefetch policy leads into on the way."""
        index = view.step.index
        horizon = self.prefetch.horizon if self.layers else 0
        futures = view.future(horizon) if horizon > 0 else []
        if index >= self._next:
            stage = self.prefetch.fetch_waiting and bool(self.layers) and not (futures or view.future(1))
            self._plan_step(view, issuing=index, waiting=view.waiting() if stage else None)
        for k, future in enumerate(futures, start=1):
            if future.index >= self._next:
                self._plan_step(StepView(future, _shifted(view.future, k)), issuing=index)
        layers = self._planned.pop(index)
        return StepPlan(view.step, layers, self._issues.pop(index, {}), tuple(self._released.pop(index, ())))

    def _plan_step(self, view: StepView, issuing: int, waiting: Waiting | None = None) -> None:
        """Plan one step (the next one in order) whose fetches may be issued from step `issuing` on;
        with `waiting`, also its staging fetches of those requests' rows."""
        step = view.step
        if step.index != self._next:
            raise RuntimeError(f"step {step.index} planned out of order (expected {self._next})")
        self._next += 1
        staging = self._stage_waiting(step.index, waiting) if waiting is not None and waiting.seqs.size else {}
        plans = {}
        for layer in self.layers:
            lookup = step.lookups[layer]
            plan = self._plan_layer(layer, lookup.rows, lookup.references, view, issuing, staging.get(layer))
            plans[layer] = plan
            self._issues.setdefault(plan.issue_step, {}).setdefault(plan.issue_block, []).append(plan)
        for fetch in staging.values():  # after the step's own fetches issued at its start
            self._issues.setdefault(step.index, {}).setdefault(0, []).append(fetch)
        self._planned[step.index] = plans
        if self._staged_seqs and step.kind != "decode":
            self._release_prefilled(step)

    def _plan_layer(self, layer: int, rows: np.ndarray, references: int, view: StepView, issuing: int,
                    staging: FetchPlan | None = None) -> FetchPlan:
        step = view.step
        outside = self._outside_hbm(layer, rows)
        misses, admitted, evicted = (outside, EMPTY, EMPTY) if self._cacheless[layer] else self._cache_lookup(layer, outside, view)
        before = self._speculated[layer]
        guessed = int(np.count_nonzero(np.isin(misses, before, assume_unique=True))) if before.size and misses.size else 0
        fetched, staged, carriers = self._from_staging(layer, misses, step.index)
        self._release_speculative(layer, step.index)
        extra = self._speculative(layer, view, rows)
        self._speculated[layer] = extra
        lead, block = self.issue_at(layer, view, issuing)
        carries = bool(extra.size) and self.prefetch.serve_speculative
        if carries:
            self._hold(layer, Staged(np.sort(extra), (step.index, layer, False)))
        return FetchPlan(
            step=step.index, layer=layer, rows=rows, references=references, placed_hbm=int(rows.size - outside.size),
            cache_hits=int(outside.size - misses.size), fetch=np.concatenate([fetched, extra]) if extra.size else fetched,
            misses=int(fetched.size), issue_step=step.index - lead, issue_block=block, admitted=admitted, evicted=evicted, guessed=guessed,
            deadline=self.prefetch.deadline, missed_references=self._missed_references(step, layer, rows, references, misses),
            staged=staged, staged_from=carriers, waiting=0 if staging is None else int(staging.fetch.size), carries=carries,
        )

    def issue_at(self, layer: int, view: StepView, issuing: int) -> tuple[int, int]:
        """(steps ahead, block) at which the fetch of `layer` for `view.step` is issued, planned while
        step `issuing` runs: the prefetch policy's lead, cut to the steps planned ahead, and its block,
        at most the layer itself in the fetch's own step."""
        lead = min(max(0, int(self.prefetch.lead_steps(layer, view))), view.step.index - issuing)
        return lead, min(max(0, int(self.prefetch.issue_layer(layer, view))), layer if lead == 0 else self.blocks - 1)

    def stateless(self) -> int | None:
        """The tier that holds every row, when each step's plan depends on that step alone, so an
        executor may read every step's plan off its lookups (simulator/bulk.py): a cache of no rows,
        every row in that one tier, no fetch led across steps, no speculative rows, no staging of
        waiting requests, no deadline. None otherwise; HBM for a pass without Engram."""
        prefetch = self.prefetch
        if not self.layers:
            return HBM
        if (self._one_tier is None or not all(self._cacheless.values()) or prefetch.horizon > 0 or prefetch.deadline
                or prefetch.fetch_waiting or any(prefetch.speculative_budget(layer) > 0 for layer in self.layers)):
            return None
        return self._one_tier

    def _outside_hbm(self, layer: int, rows: np.ndarray) -> np.ndarray:
        """The rows the placement keeps outside HBM (all or none of them, without asking it row by
        row, when it keeps every row in one tier)."""
        tier = self._one_tier
        if tier is None:
            tiers = self.placement.tier_of(layer, rows)
            tier = int(tiers.max()) if tiers.size else HBM
        if tier not in PRICED_TIERS:
            raise ValueError(f"placement {self.placement.name!r} put rows of layer {layer} in tier {Tier(tier).name}, which no executor "
                             "prices yet")
        if self._one_tier is not None:
            return rows if tier != HBM else rows[:0]
        return rows[tiers != HBM]

    # ---- the staging area ----------------------------------------------------------------------
    def staged_rows(self, layer: int) -> list[Staged]:
        """What the staging area holds of `layer` now (for tests)."""
        return list(self._staged[layer])

    def _hold(self, layer: int, entry: Staged) -> None:
        self._staged[layer].append(entry)
        self._refs[entry.key] += 1
        self._index.pop(layer, None)

    def _drop(self, layer: int, keep: Callable[[Staged], bool], step: int) -> None:
        """Release the entries of `layer` that `keep` refuses; a carrying fetch none of whose entries is left is released at `step`."""
        held = self._staged[layer]
        gone = [entry for entry in held if not keep(entry)]
        if not gone:
            return
        self._staged[layer] = [entry for entry in held if keep(entry)]
        self._index.pop(layer, None)
        for entry in gone:
            if entry.seq is not None:
                self._waiting_rows[layer] -= int(entry.rows.size)
            self._refs[entry.key] -= 1
            if not self._refs[entry.key]:
                del self._refs[entry.key]
                self._released.setdefault(step, []).append(entry.key)

    def _held_index(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """The rows held for `layer`, sorted, and the entry (index into _staged[layer]) of each, the oldest first for repeats."""
        found = self._index.get(layer)
        if found is None:
            held = self._staged[layer]
            rows = np.concatenate([entry.rows for entry in held]) if held else EMPTY
            owner = np.repeat(np.arange(len(held)), [entry.rows.size for entry in held]) if held else EMPTY
            order = np.argsort(rows, kind="stable")
            found = self._index[layer] = (rows[order], owner[order])
        return found

    def _is_held(self, layer: int, rows: np.ndarray) -> np.ndarray:
        return member(self._held_index(layer)[0], rows)

    def _from_staging(self, layer: int, misses: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray, tuple[FetchKey, ...]]:
        """(misses still to fetch, misses served from the staging area, the fetches that carried
        those), never from a staging fetch issued in `step` itself."""
        held, owner = self._held_index(layer)
        if not held.size or not misses.size:
            return misses, EMPTY, ()
        at = np.minimum(np.searchsorted(held, misses), held.size - 1)
        found = held[at] == misses
        entries = self._staged[layer]
        if found.any():
            usable = np.fromiter((entries[i].key[0] != step or not entries[i].key[2] for i in owner[at[found]]), dtype=bool,
                                 count=int(np.count_nonzero(found)))
            found[found] = usable
        if not found.any():
            return misses, EMPTY, ()
        keys = sorted({entries[i].key for i in np.unique(owner[at[found]])})
        return misses[~found], misses[found], tuple(keys)

    def _release_speculative(self, layer: int, step: int) -> None:
        """The previous step's speculative rows serve this step only."""
        if self._speculated[layer].size:
            self._drop(layer, lambda entry: entry.seq is not None, step)

    def _release_prefilled(self, step: Step) -> None:
        """Release the rows of staged requests whose prefill this step completes."""
        done = set()
        for seq, context in zip(step.seq_ids.tolist(), step.context_lens.tolist()):
            tokens = self._staged_seqs.get(seq)
            if tokens is not None and context >= tokens:
                done.add(seq)
        for seq in done:
            del self._staged_seqs[seq]
        if done:
            for layer in self.layers:
                self._drop(layer, lambda entry: entry.seq not in done, step.index)

    def _stage_waiting(self, index: int, waiting: Waiting) -> dict[int, FetchPlan]:
        """Per layer, the staging fetch issued at the start of step `index`: the rows of the waiting
        requests not staged yet, in queue order while they fit `max_staged_rows`, outside HBM, not
        cached and not held already."""
        room = {layer: self.prefetch.max_staged_rows(layer) - self._waiting_rows[layer] for layer in self.layers}
        taken: dict[int, np.ndarray] = dict.fromkeys(self.layers, EMPTY)
        for seq, tokens in zip(waiting.seqs.tolist(), waiting.tokens.tolist()):
            if seq in self._staged_seqs:
                continue
            lookups = waiting.lookups(seq)
            new = {}
            for layer in self.layers:
                rows = self._not_in_hbm(layer, lookups[layer].rows)
                new[layer] = rows[~np.isin(rows, taken[layer], assume_unique=True)] if taken[layer].size else rows
            if any(new[layer].size > room[layer] for layer in self.layers):
                break  # queue order: the requests behind it wait for room too
            self._staged_seqs[seq] = tokens
            for layer, rows in new.items():
                room[layer] -= int(rows.size)
                if rows.size:
                    taken[layer] = np.union1d(taken[layer], rows)
                    self._waiting_rows[layer] += int(rows.size)
                    self._hold(layer, Staged(rows, (index, layer, True), seq, tokens))
        return {layer: FetchPlan(step=index, layer=layer, rows=EMPTY, references=0, placed_hbm=0, cache_hits=0, fetch=taken[layer],
                                 misses=0, issue_step=index, issue_block=0, staging=True, carries=True)
                for layer in self.layers if taken[layer].size}

    def _missed_references(self, step: Step, layer: int, rows: np.ndarray, references: int, misses: np.ndarray) -> int:
        """References that read the misses: counted for a deadline-mode prefetch only (0 otherwise)."""
        if not self.prefetch.deadline or not misses.size:
            return 0
        if misses.size == rows.size:  # every row missed: every reference reads one
            return references
        if self.references_to is None:
            raise RuntimeError(f"deadline mode: layer {layer} of step {step.index} misses some of its rows, and the planner "
                               "has no references_to to count the references they would serve")
        return int(self.references_to(step, layer, misses))

    def _cache_lookup(self, layer: int, outside: np.ndarray, view: StepView) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(misses, rows admitted, rows evicted) of one lookup, checked against the
        cache's capacity and against fetching what it admits: in O(rows looked up) when the cache
        says what it changed, else by diffing its contents."""
        cache = self.cache
        report = cache.lookup_changes(layer, outside, view)
        if report is None:
            hit, admitted, evicted = self._diffed_lookup(layer, outside, view)
            return outside[~hit] if hit.any() else outside, admitted, evicted
        hit, admit, evicted = np.asarray(report.hit, dtype=bool), np.asarray(report.admitted, dtype=np.int64), report.evicted
        if hit.shape != outside.shape:
            raise RuntimeError(f"cache {cache.name!r} answered a lookup of {outside.size} rows of layer {layer} with {hit.size} hits or misses")
        if admit.size and (admit[0] < 0 or admit[-1] >= outside.size or (admit.size > 1 and (np.diff(admit) <= 0).any()) or hit[admit].any()):
            raise RuntimeError(f"cache {cache.name!r} admitted rows of layer {layer} that this step does not fetch")
        held = self._held[layer] + admit.size - evicted.size
        if held > cache.capacity_rows(layer):
            raise RuntimeError(f"cache {cache.name!r} holds {held} rows of layer {layer}, over its capacity of {cache.capacity_rows(layer)}")
        self._count_held(layer, held)
        for other, rows in report.elsewhere.items():  # a shared cache: what it dropped of other layers
            self._count_held(other, self._held[other] - len(rows))
        if cache.shared and (total := sum(self._held.values())) > cache.capacity_rows(layer):
            raise RuntimeError(f"cache {cache.name!r} holds {total} rows of all layers, over its shared capacity of {cache.capacity_rows(layer)}")
        if admit.size == outside.size - np.count_nonzero(hit):  # distinct misses, as many as there are: every miss
            misses = outside[admit]
            return misses, misses, evicted
        return outside[~hit], outside[admit], evicted

    def _count_held(self, layer: int, held: int) -> None:
        """`held`: the rows of `layer` the cache's reported admissions and evictions add up to; it must say the same."""
        if held != self.cache.size(layer):
            raise RuntimeError(f"cache {self.cache.name!r} holds {self.cache.size(layer)} rows of layer {layer}, but its lookups admitted "
                               f"and evicted {held} in all")
        self._held[layer] = held

    def _diffed_lookup(self, layer: int, outside: np.ndarray, view: StepView) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`_cache_lookup` for a cache that does not say what it changed: its contents before and after."""
        cache = self.cache
        before = cache.contents(layer)
        hit = np.asarray(cache.lookup(layer, outside, view), dtype=bool)
        after = cache.contents(layer)
        if after.size > cache.capacity_rows(layer):
            raise RuntimeError(f"cache {cache.name!r} holds {after.size} rows of layer {layer}, over its capacity of {cache.capacity_rows(layer)}")
        if hit.any() and not np.isin(outside[hit], before, assume_unique=True).all():
            raise RuntimeError(f"cache {cache.name!r} reported hits on rows of layer {layer} it does not hold")
        if not before.size and not after.size:
            return hit, EMPTY, EMPTY
        admitted = np.setdiff1d(after, before, assume_unique=True)
        if not np.isin(admitted, outside[~hit], assume_unique=True).all():
            raise RuntimeError(f"cache {cache.name!r} admitted rows of layer {layer} that this step does not fetch")
        return hit, admitted, np.setdiff1d(before, after, assume_unique=True)

    def _speculative(self, layer: int, view: StepView, rows: np.ndarray) -> np.ndarray:
        """The policy's guess in its own order, less duplicates, rows the step needs and rows in
        HBM (placed, cached or staged), cut to the budget."""
        budget = self.prefetch.speculative_budget(layer)
        if budget <= 0:
            return EMPTY
        guess = np.asarray(self.prefetch.speculative_rows(layer, view), dtype=np.int64)
        if guess.size == 0:
            return EMPTY
        if guess.min() < 0 or guess.max() >= self.table_rows[layer]:
            raise ValueError(f"prefetch {self.prefetch.name!r} guessed rows outside layer {layer}'s table of {self.table_rows[layer]} rows")
        _, first = np.unique(guess, return_index=True)
        guess = guess[np.sort(first)]
        return self._not_in_hbm(layer, guess[~np.isin(guess, rows)])[:budget]

    def _not_in_hbm(self, layer: int, rows: np.ndarray) -> np.ndarray:
        """`rows` (order kept) less those already in HBM: placed there, cached, or held in the
        staging area (a row held there is never fetched again)."""
        rows = rows[self.placement.tier_of(layer, rows) != HBM]
        rows = rows[~np.asarray(self.cache.holds(layer, rows), dtype=bool)]
        return rows[~self._is_held(layer, rows)] if self._staged[layer] else rows

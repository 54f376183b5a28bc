"""The real executor, shared by the CPU and CUDA backends: the steps the scheduler hands out and
the planner's decisions, executed with torch and timed.

Each step is the segment list of engramsim/skeleton.py, the one the simulator prices, walked
with one handler per segment kind: host work (plan and input layout) timed as the "host" span;
`Issue` hands fetches to the fetch worker (backends/fetch.py), some of them for later steps;
`EngramLayer` waits for the layer's fetch (the wait is the stall) and runs the layer
(backends/engram_layer.py); `Blocks` runs stand-in blocks; `Head` the LM head. The step ends
by synchronizing the compute timeline (not the copy stream, where a fetch for the next step may
be in flight), after which its marks become seconds. Only device.py's few operations differ
between CPU and CUDA.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from types import TracebackType

import torch

from engramsim.backends.device import PLAIN, Device, Mark, make_device
from engramsim.backends.engram_layer import engram_forward
from engramsim.backends.engram_memory import CacheBuffer, LayerMemory
from engramsim.backends.engram_module import EngramModule
from engramsim.backends.fetch import Fetch, FetchWorker, Pending
from engramsim.backends.memory import TABLE_FIELD, Footprint
from engramsim.backends.standin import StandIn, block_shapes, nbytes, step_limits
from engramsim.backends.tables import fill_table, table_format
from engramsim.errors import InputError
from engramsim.hbm import engram_params, staging_bytes, staging_rows, staging_slots
from engramsim.plan import Planner, StepPlan
from engramsim.records import LayerRecord, RunOutcome, Span, SpanKind, StepLog, StepRecord, Timeline
from engramsim.registry import build
from engramsim.scenario import StrategyChoice
from engramsim.scheduler import Scheduler
from engramsim.session import Prepared, planner, strategies
from engramsim.skeleton import Blocks, EngramLayer, Head, Host, Issue, Segment, skeleton
from engramsim.strategies import StageKind, Tier, Transport, cache_bytes, tables_bytes

PIPELINES = {(StageKind.GATHER, StageKind.H2D), (StageKind.ZERO_COPY,)}  # stage sequences a real device can execute


def engram_activation_bytes(prepared: Prepared, tokens: int, dtype_bytes: int) -> int:
    """A bound on one Engram layer's activations for `tokens` tokens."""
    engram, hidden = prepared.scenario.model.engram, prepared.scenario.model.backbone.hidden
    return tokens * (4 * engram.d_mem + 2 * (engram.hc_mult + 1) * hidden + 8 * engram.hc_mult * hidden) * dtype_bytes


SetupProgress = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]
"""`setup_progress(label, total_bytes)`: a context manager yielding `advance(bytes)`, like `engramsim
run`'s progress bars, so the minutes a big table takes to fill are not silent."""

FIELDS = {  # the scenario field that sizes each footprint item, for a refusal to name
    "Engram tables": TABLE_FIELD, "Engram tables in HBM": TABLE_FIELD, "Engram modules": "model.engram",
    "staging buffers": "workload.batching.max_num_batched_tokens", "landing buffers": "workload.batching.max_num_batched_tokens",
    "activations": "workload.batching.max_num_batched_tokens", "Engram activations": "workload.batching.max_num_batched_tokens",
    "stand-in weights": "model.backbone", "weight packing": "model.backbone", "KV buffer": "workload.batching.max_num_seqs",
    "Engram caches": "strategies.cache",
}


def _silent(label: str, total: int) -> AbstractContextManager[Callable[[int], None]]:
    return contextlib.nullcontext(lambda n: None)


class SessionLayout:
    """What a real session for these passes holds, decided before a device exists: the checks
    every real run makes first (a refusal is one InputError line) and the bytes it allocates
    (`footprint`), which the session's memory check and engramsim/estimate.py both read.

    `placements` are those of the passes to come (None: the scenario's), so a resident table is
    counted in HBM when one of them needs it.
    """

    def __init__(self, prepared: Prepared, placements: Sequence[StrategyChoice | None] = (None,)) -> None:
        self.prepared = prepared
        scenario = prepared.scenario
        att = scenario.model.backbone.attention
        if att.kind == "gqa" and att.heads % att.kv_heads:
            raise InputError(prepared.source, f"attention heads ({att.heads}) must be a multiple of kv_heads ({att.kv_heads})",
                             field="model.backbone.attention.kv_heads")
        node = scenario.hardware.node
        if node is not None and node.shared:
            raise InputError(prepared.source, f"a node of {node.gpus} GPU(s) on {node.numa_nodes} socket(s) shares one host; the real "
                             "backends run one device (simulate it: --backend sim)", field="hardware.node")
        _, cache, self.prefetch = strategies(prepared)
        if cache.shared:
            raise InputError(prepared.source, f"cache {scenario.strategies.cache.name!r} is shared by all Engram layers; the real backends "
                             "mirror one buffer per layer (simulate it: --backend sim)", field="strategies.cache.params.shared")
        if self.prefetch.deadline:
            raise InputError(prepared.source, f"prefetch {scenario.strategies.prefetch.name!r} is deadline mode (a layer goes ahead "
                             "without late rows); the real backends always wait for a fetch (simulate it: --backend sim)",
                             field="strategies.prefetch")
        waits = self.prefetch.fetch_waiting and bool((prepared.workload.requests.arrival_s > 0).any())  # offline: the future is known, nothing waits
        serves = self.prefetch.serve_speculative and any(self.prefetch.speculative_budget(layer) > 0 for layer in prepared.tables)
        if waits or serves:
            raise InputError(prepared.source, f"prefetch {scenario.strategies.prefetch.name!r} serves later steps from rows staged in HBM "
                             "(waiting requests' prompt rows or the previous step's speculative rows); the real backends keep a fetch's "
                             "rows for its own step only (simulate it: --backend sim)", field="strategies.prefetch.name")
        self.transport: Transport = build("transport", scenario.strategies.transport, prepared.setup())
        self.stages = tuple(s.kind for s in self.transport.stages(1, scenario.model.engram.row_bytes))
        if self.stages not in PIPELINES or self.transport.batches_layers:
            raise InputError(prepared.source, f"the real backends run a gather then an h2d copy, or a zero-copy gather, per fetch; "
                             f"transport {scenario.strategies.transport.name!r} has stages {[k.value for k in self.stages]}"
                             + (" for fetches batched together" if self.transport.batches_layers else ""),
                             field="strategies.transport")
        in_hbm = [self._resident(p) for p in placements]
        self.resident, self.offloaded = any(in_hbm), not all(in_hbm)
        self.cache_rows = {layer: cache.capacity_rows(layer) for layer in prepared.tables}
        self.limits = step_limits(prepared.workload)

    def _resident(self, placement: StrategyChoice | None) -> bool:
        """Does a pass with this placement read rows placed in HBM? Only whole tables can be: a
        placement that splits a table between tiers is refused."""
        chosen, _, _ = strategies(self.prepared, placement)
        beyond = [tier.name for tier, size in chosen.bytes_per_tier().items() if size > 0 and tier not in (Tier.HBM, Tier.HOST)]
        if beyond:
            raise InputError(self.prepared.source, f"placement {chosen.name!r} puts rows in {', '.join(beyond)}; the real backends "
                             "hold tables in HBM or host memory only (simulate it: --backend sim)", field="strategies.placement")
        in_hbm = chosen.bytes_per_tier().get(Tier.HBM, 0)
        total = tables_bytes(self.prepared.tables)
        if 0 < in_hbm < total:
            raise InputError(self.prepared.source, f"placement {chosen.name!r} splits the tables between HBM and another "
                             "tier; the real backends run whole-table placements only", field="strategies.placement")
        return in_hbm > 0

    def slot_rows(self, layer: int) -> int:
        """Rows of one staging/landing slot; none when no pass fetches (hbm.py counts the same)."""
        if not self.offloaded:
            return 0
        return staging_rows(self.prepared.tables[layer], self.prepared.scenario.model.engram, self.prepared.workload,
                            self.prefetch)

    def footprint(self, device: Device, resident: bool) -> Footprint:
        """Bytes a session on `device` allocates (in the dtype it computes in; a resident table
        copied only where the device copies it), activations as a bound."""
        backbone, engram = self.prepared.scenario.model.backbone, self.prepared.scenario.model.engram
        tables = self.prepared.tables
        buffers = staging_bytes(tables, engram, self.prepared.workload, self.prefetch) if self.offloaded else 0
        b = device.compute_dtype(backbone.dtype).itemsize
        fp = Footprint(host={"Engram tables": tables_bytes(tables)}, fields=dict(FIELDS))
        if StageKind.GATHER in self.stages:
            fp.host["staging buffers"] = buffers
        fp.device = {"landing buffers": buffers, **nbytes(backbone, self.limits, b),
                     "Engram modules": len(tables) * engram_params(engram, backbone.hidden) * b,
                     "Engram activations": len(tables) * engram_activation_bytes(self.prepared, self.limits.tokens, b),
                     "Engram caches": cache_bytes(tables, self.cache_rows.__getitem__)}
        if resident and device.resident_copies:
            fp.device["Engram tables in HBM"] = fp.host["Engram tables"]
        if device.linear() is not PLAIN:  # packing a weight holds it as drawn and transposed beside the packed copy
            shapes = [(backbone.hidden, backbone.vocab)] + [s for block in range(backbone.layers)
                                                            for s in block_shapes(backbone, block).values() if len(s) == 2]
            fp.device["weight packing"] = 2 * max(math.prod(s) for s in shapes) * b
        return fp


class RealSession:
    """What a real run allocates once and reuses for every pass: tables, buffers, modules, blocks.

    Every check runs before the first allocation (`SessionLayout`, then the device's memory
    check); a refusal is one InputError line. `setup_progress` follows the tables' fill and the
    stand-in weights. Each pass warms itself up first (`_warm_up`).
    """

    def __init__(self, prepared: Prepared, backend: str, placements: Sequence[StrategyChoice | None] = (None,),
                 setup_progress: SetupProgress | None = None) -> None:
        scenario = self.scenario = prepared.scenario
        self.prepared = prepared
        layout = self.layout = SessionLayout(prepared, placements)
        self.transport, self.cache_rows = layout.transport, layout.cache_rows  # what every pass uses
        self.device = device = make_device(backend, prepared.source)
        self.dtype = device.compute_dtype(scenario.model.backbone.dtype)
        self.sampler = None  # the hardware monitor of the first pass that asked for one
        progress = setup_progress or _silent
        try:
            footprint = self.footprint(layout.resident)
            device.check_memory(prepared.source, footprint)
            self.layers = self._allocate(layout.resident, progress)
            weights = footprint.device["stand-in weights"]
            with progress("stand-in weights", weights) as advance:
                self.standin = StandIn(scenario.model.backbone, layout.limits, device.torch_device, self.dtype,
                                       device.generator(scenario.run.seed), device.linear())
                advance(weights)
        except BaseException:
            device.close()
            raise

    def __enter__(self) -> RealSession:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        """Release the device; when a failure is already unwinding, a second one from the release
        (a CUDA error is sticky: the synchronize in close raises it again) must not replace it."""
        try:
            self.device.close()
        except Exception:
            if exc is None:
                raise

    def footprint(self, resident: bool) -> Footprint:
        return self.layout.footprint(self.device, resident)

    def _allocate(self, resident: bool, progress: SetupProgress) -> dict[int, LayerMemory]:
        """Per Engram layer: the table, filled block by block under a progress bar (a 100 GB table
        takes minutes), its staging and landing slots and its EngramModule."""
        device, engram, hidden = self.device, self.scenario.model.engram, self.scenario.model.backbone.hidden
        dtype, width = table_format(engram)
        generator = torch.Generator().manual_seed(engram.seed)  # table contents: drawn on the host, same on every device
        slots, stages = staging_slots(self.layout.prefetch), self.layout.stages
        layers = {}
        with progress("Engram tables", tables_bytes(self.prepared.tables)) as advance:
            for layer, info in self.prepared.tables.items():
                table = device.host_table(info.rows, width, dtype)
                fill_table(table, engram, generator, advance)
                rows = self.layout.slot_rows(layer)
                module = EngramModule(hidden, engram.d_mem, hc_mult=engram.hc_mult, max_ngram=engram.max_ngram,
                                      kernel_size=engram.kernel_size, generator=self.scenario.run.seed + layer,
                                      device=device.torch_device, dtype=self.dtype)
                layers[layer] = LayerMemory(
                    info, table, [device.landing(rows, width, dtype) for _ in range(slots)],
                    [device.staging(rows, width, dtype) for _ in range(slots)] if StageKind.GATHER in stages else None,
                    device.zero_copy_source(table) if StageKind.ZERO_COPY in stages else None,
                    device.resident(table) if resident else None,
                    None, module,
                )
        return layers

    # ---- a pass -----------------------------------------------------------------------------------
    def run(self, placement: StrategyChoice | None = None, engram: bool = True, progress: Callable | None = None,
            sample: bool = False) -> RunOutcome:
        """One measured pass over the workload; `sample` records hardware counters (CUDA: NVML)."""
        device = self.device
        scheduler = self.prepared.scheduler(engram)
        monitor = device.monitor() if sample else None
        with self._threads() as worker:
            self._warm_up(worker, placement, engram)
            device.start_clock()
            with monitor or contextlib.nullcontext():
                records, spans = self._loop(scheduler, planner(self.prepared, placement, engram), worker,
                                            self.scenario.run.max_steps, device.now, progress)
        if monitor is not None and self.sampler is None:
            self.sampler = monitor
        ttft, tpot = scheduler.latencies()
        return RunOutcome(steps=records, spans=spans, events=0, link_busy_s=spans.link_s,
                          makespan_s=records[-1].end_s if records else 0.0, output_tokens=scheduler.output_tokens,
                          prompt_tokens=scheduler.prompt_tokens, ttft_s=ttft, tpot_s=tpot, serving=scheduler.serving())

    def _warm_up(self, worker: FetchWorker, placement: StrategyChoice | None, engram: bool) -> None:
        """The pass's own first steps (`device.warmup_steps`; None: all of them), untimed, on the
        threads the pass will use (the worker's OpenMP pool is per thread), repeated for at least
        the device's `warmup_s` (GPU clocks ramp up under load): first calls pay one-off costs
        (kernel loading and selection, allocator growth, lazy initialisation) that would otherwise
        land on the measured steps. Requests arrive as in the pass, but idle gaps are skipped
        rather than slept, so the warm-up meets the pass's own batch shapes. The pass then starts
        with empty caches and a fresh worker clock."""
        until = time.perf_counter() + self.device.warmup_s
        while True:
            self._empty_caches()  # each repetition plans from empty caches
            self.device.start_clock()
            steps = self.device.warmup_steps
            skipped = [0.0]

            def clock() -> float:
                return self.device.now() + skipped[0]

            def skip(gap: float) -> None:
                skipped[0] += gap

            self._loop(self.prepared.scheduler(engram), planner(self.prepared, placement, engram), worker,
                       self.scenario.run.max_steps if steps is None else steps, clock, None, idle=skip)
            if time.perf_counter() >= until:
                break
        self.device.synchronize()
        worker.restart()
        self._empty_caches()

    def _empty_caches(self) -> None:
        engram = self.scenario.model.engram
        dtype, width = table_format(engram)
        for layer, mem in self.layers.items():
            mem.cache = CacheBuffer(self.cache_rows[layer], width, dtype, self.device) if self.cache_rows[layer] else None

    @contextlib.contextmanager
    def _threads(self) -> Iterator[FetchWorker]:
        """The compute thread's context and a running fetch worker, for one pass."""
        self._empty_caches()
        engram = self.scenario.model.engram
        with self.device.compute(), torch.no_grad(), FetchWorker(self.device, self.transport, engram.row_bytes) as worker:
            yield worker

    def _loop(self, scheduler: Scheduler, plans: Planner, worker: FetchWorker, max_steps: int | None,
              clock: Callable[[], float], progress: Callable | None,
              idle: Callable[[float], None] = time.sleep) -> tuple[StepLog, Timeline]:
        """Steps back to back, as `simulate` runs them; `idle(seconds)` until the next arrival when idle."""
        records = StepLog()
        spans = Timeline()
        run = PassState(self, worker)
        while not scheduler.done and (max_steps is None or len(records) < max_steps):
            step = scheduler.next_step(clock())
            if step is None:
                arrival = scheduler.next_arrival()
                if arrival is None:
                    break
                idle(max(0.0, arrival - clock()))
                continue
            len(step.lookups)  # hash and deduplicate the step's rows now, before its time starts (the workload's work, not the step's)
            start = self.device.mark()
            record = run.step(start, plans.plan(scheduler.view(step, max_steps)), spans)
            scheduler.finish_step(step, record.end_s)
            records.append(record)
            if progress is not None:
                progress(step)
        run.drain()
        return records, spans


class PassState:
    """One pass's walk over the steps: the fetches in flight (some issued steps ahead) and the
    handlers of the step skeleton's segments."""

    def __init__(self, session: RealSession, worker: FetchWorker) -> None:
        self.session, self.device, self.worker = session, session.device, worker
        self.fetches: dict[tuple[int, int], Fetch] = {}
        self.handlers: dict[type, Callable[[Segment], None]] = {
            Host: self._host, Issue: self._issue, EngramLayer: self._engram_layer, Blocks: self._blocks, Head: self._head,
        }

    def drain(self) -> None:
        """Wait for the fetches issued for steps that were never run (the pass stopped at
        `max_steps`), so none is in flight when the pass ends; a failed one raises here."""
        for fetch in self.fetches.values():
            if fetch.plan.fetch.size:
                fetch.done.wait()
                if fetch.error is not None:
                    raise fetch.error
        self.fetches.clear()

    def step(self, start: Mark, plan: StepPlan, spans: Timeline) -> StepRecord:
        """Run one step; `start` was marked before it was planned (planning is host work)."""
        device, step = self.device, plan.step
        self.plan, self.start = plan, start
        self.pending: list[Pending] = []
        self.waits: list[tuple[Fetch, tuple[Mark, Mark] | None]] = []  # each Engram layer's fetch and its wait
        self.layout = self.session.standin.layout(step, device.attention_groups)
        self.h = self.session.standin.input(self.layout)
        for segment in skeleton(plan, self.session.scenario.model.backbone.layers):
            self.handlers[type(segment)](segment)
        device.synchronize_compute()  # not the copy stream: a fetch for the next step may be in flight
        record = StepRecord(index=step.index, kind=step.kind, start_s=device.seconds(start), end_s=device.seconds(self.end),
                            tokens=step.num_tokens, seqs=step.num_seqs)
        resolved = [p.resolve(device) for p in self.pending + self.worker.take_spans(step.index)]
        for fetch, wait in self.waits:
            stall = self._stall(fetch, wait)
            if stall is not None:
                resolved.append(stall)
            record.layers.append(self._layer_record(fetch, stall))
        for span in sorted(resolved, key=lambda s: s.start_s):
            spans.add(span)
        return record

    def _host(self, segment: Segment) -> None:
        self.pending.append(Pending(kind=SpanKind.HOST, start=self.start, end=self.device.mark(), step=self.plan.step.index))

    def _issue(self, segment: Segment) -> None:
        assert isinstance(segment, Issue)
        for plan in segment.fetches:
            fetch = self.fetches[(plan.step, plan.layer)] = Fetch(plan, self.session.layers[plan.layer].buffers(plan.step),
                                                                  self.device.mark())
            if plan.fetch.size:
                self.worker.submit(fetch)

    def _engram_layer(self, segment: Segment) -> None:
        assert isinstance(segment, EngramLayer)
        plan, step = segment.plan, self.plan.step
        fetch = self.fetches.pop((plan.step, plan.layer))
        self.waits.append((fetch, self._wait(fetch)))
        mem = self.session.layers[plan.layer]
        mark = self.device.mark()
        token_rows = self.session.prepared.workload.token_rows(step.positions)[plan.layer]
        self.h = engram_forward(mem.module, mem.rows(plan, token_rows), self.session.scenario.model.engram, self.h)
        if mem.cache is not None:
            mem.cache.update(plan, fetch.buffers.landing)
        self.pending.append(Pending(kind=SpanKind.ENGRAM, start=mark, end=self.device.mark(), step=step.index, layer=plan.layer))

    def _blocks(self, segment: Segment) -> None:
        assert isinstance(segment, Blocks)
        mark = self.device.mark()
        for block in range(segment.start, segment.stop):
            self.h = self.session.standin.block(block, self.h, self.layout)
        self.pending.append(Pending(kind=SpanKind.BLOCKS, start=mark, end=self.device.mark(), step=self.plan.step.index,
                                    blocks=(segment.start, segment.stop - 1)))

    def _head(self, segment: Segment) -> None:
        mark = self.device.mark()
        self.session.standin.head(self.h, self.layout)
        self.end = self.device.mark()
        self.pending.append(Pending(kind=SpanKind.HEAD, start=mark, end=self.end, step=self.plan.step.index))

    def _wait(self, fetch: Fetch) -> tuple[Mark, Mark] | None:
        """Make the compute timeline wait for the fetch; the marks around the wait, if it may stall."""
        if not fetch.plan.fetch.size:
            return None
        device = self.device
        waited_from = None if fetch.done.is_set() and fetch.error is None and device.landed(fetch.ready) else device.mark()
        fetch.land(device)
        return None if waited_from is None else (waited_from, device.mark())

    def _stall(self, fetch: Fetch, wait: tuple[Mark, Mark] | None) -> Span | None:
        """The stall span, when the rows landed after the compute timeline reached the layer
        (on CUDA the host often waits while the GPU is still busy with earlier blocks: no stall)."""
        if wait is None or self.device.seconds(fetch.ready) <= self.device.seconds(wait[0]):
            return None
        return Pending(kind=SpanKind.STALL, start=wait[0], end=wait[1], step=fetch.plan.step, layer=fetch.plan.layer).resolve(self.device)

    def _layer_record(self, fetch: Fetch, stall: Span | None) -> LayerRecord:
        plan, seconds = fetch.plan, self.device.seconds
        issue = seconds(fetch.issued)
        return plan.record(self.session.prepared.tables[plan.layer].row_bytes, issue,
                           seconds(fetch.ready) if plan.fetch.size else issue, stall.seconds if stall else 0.0)

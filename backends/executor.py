"""The real executor, shared by the CPU and CUDA backends: the scheduler's steps and the Planner's
decisions, executed with torch and timed.

The objects the simulator prices drive it: `workload.scheduler()` hands out the steps,
`runner.planner(prepared, placement)` decides per step which rows are in HBM, which are fetched
and at which block each fetch is issued, and the transport plugin's stages say how rows travel.
Only device.py's few operations differ between CPU and CUDA.

A step on the compute thread, cut where simulator/engine.py cuts it (where a fetch is issued or
an Engram layer starts): plan and layout, timed with the hand-off of block 0's fetches as the
step's "host" span (the simulator's step overhead); for each cut hand the fetches issued at this block to the worker,
wait for the Engram layer's fetch (the wait is the stall), run the Engram layer, run the blocks
up to the next cut; the LM head; synchronize and resolve every mark into seconds.
The fetch worker thread runs each fetch's stages in issue order: gather (index_select of the
fetched rows into the staging buffer), h2d (staging → landing buffer) or zero-copy (rows straight
into the landing buffer).

The Engram layer builds the step's unique rows (fetched ones from the landing buffer, rows placed
in HBM from the resident table), maps every token's per-head rows onto them with np.searchsorted
on the sorted unique rows, and runs the real EngramModule. All tokens of a step go through it as
one sequence [1, tokens, hc_mult, hidden], the residual copied into every mHC branch and the
branch outputs averaged back: the short conv then runs across sequence boundaries and keeps no
decode state between steps, which changes values, not the work.

Tables are filled with FILL_BLOCK_ROWS seeded random rows (N(0, 1); fp8: random e4m3 bytes with
a unit e8m0 scale) repeated down the table: deterministic, and a 100 GB table fills at memcpy
speed instead of randn speed. Row values change no timing.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType

import numpy as np
import torch

from engramsim.backends.device import TORCH_DTYPES, Device, Mark, make_device, to_index
from engramsim.backends.engram_module import EngramModule
from engramsim.backends.memory import Footprint
from engramsim.backends.standin import StandIn, nbytes, step_layout, step_limits
from engramsim.errors import InputError
from engramsim.plan import FetchPlan, Planner
from engramsim.registry import build
from engramsim.results import RunOutcome
from engramsim.runner import Prepared, planner
from engramsim.scheduler import Scheduler
from engramsim.scenario import Engram, StrategyChoice
from engramsim.simulator.engine import LayerRecord, SimOutcome, Span, StepRecord
from engramsim.steps import Step
from engramsim.strategies import StepView, TableInfo, Tier

PIPELINES = {("gather", "h2d"), ("zero_copy",)}  # stage sequences a real device can execute
LANES = {"gather": "gather", "h2d": "copy", "zero_copy": "zero-copy"}
NAMES = {"gather": "gather", "h2d": "h2d", "zero_copy": "zero-copy"}
FILL_BLOCK_ROWS = 1 << 16
WARMUP_STEPS = 2  # the first prefill and the first decode, before any pass is measured


# ---- tables ---------------------------------------------------------------------------------------
def table_format(engram: Engram) -> tuple[torch.dtype, int]:
    """Storage dtype and row width; fp8 rows are raw bytes: head_dim e4m3 values, then e8m0 scales."""
    if engram.dtype == "fp8":
        return torch.uint8, engram.row_bytes
    return TORCH_DTYPES[engram.dtype], engram.head_dim


def seed_rows(n: int, engram: Engram, generator: torch.Generator) -> torch.Tensor:
    if engram.dtype != "fp8":
        return torch.randn(n, engram.head_dim, generator=generator).to(TORCH_DTYPES[engram.dtype])
    values = torch.randint(0, 0x7F, (n, engram.head_dim), generator=generator, dtype=torch.uint8)  # 0x7F: NaN
    values |= torch.randint(0, 2, (n, engram.head_dim), generator=generator, dtype=torch.uint8) << 7
    scales = torch.full((n, engram.row_bytes - engram.head_dim), 127, dtype=torch.uint8)  # 2^(127-127) = 1
    return torch.cat([values, scales], dim=1)


def fill_table(table: torch.Tensor, engram: Engram, generator: torch.Generator) -> None:
    block = seed_rows(min(FILL_BLOCK_ROWS, table.shape[0]), engram, generator)
    for start in range(0, table.shape[0], block.shape[0]):
        n = min(block.shape[0], table.shape[0] - start)
        table[start : start + n].copy_(block[:n])


def row_values(rows: torch.Tensor, engram: Engram, dtype: torch.dtype) -> torch.Tensor:
    """Table rows → head vectors in the compute dtype (fp8: e4m3 values times their scale per 32)."""
    if engram.dtype != "fp8":
        return rows.to(dtype)
    values = rows[:, : engram.head_dim].view(torch.float8_e4m3fn).to(dtype)
    scales = torch.exp2(rows[:, engram.head_dim :].float() - 127).repeat_interleave(32, dim=1)[:, : engram.head_dim]
    return values * scales.to(dtype)


def engram_bytes(engram: Engram, hidden: int, tokens: int, dtype_bytes: int) -> int:
    """One EngramModule's weights plus a bound on its activations for `tokens` tokens."""
    hc = engram.hc_mult
    params = engram.d_mem * (hc + 1) * hidden + (hc + 1) * hidden + 3 * hc * hidden + hc * hidden * engram.kernel_size
    per_token = 4 * engram.d_mem + 2 * (hc + 1) * hidden + 8 * hc * hidden
    return (params + tokens * per_token) * dtype_bytes


@dataclass
class LayerMemory:
    """One Engram layer's table, fetch buffers and module."""

    info: TableInfo
    table: torch.Tensor  # host memory, all heads: [rows, width]
    landing: torch.Tensor  # device: where fetched rows land
    staging: torch.Tensor | None  # host: the gather's destination (staged transport only)
    resident: torch.Tensor | None  # what rows placed in HBM are read from (None: no pass places rows there)
    zero_copy: torch.Tensor | None  # what a zero-copy gather reads (zero-copy transport only)
    module: EngramModule

    def room(self, rows: int, device: Device) -> None:
        """Grow the buffers for a fetch larger than any step needs (speculative extra rows)."""
        if rows <= self.landing.shape[0]:
            return
        width, dtype = self.landing.shape[1], self.landing.dtype
        self.landing = device.landing(rows, width, dtype)
        if self.staging is not None:
            self.staging = device.staging(rows, width, dtype)


# ---- fetches ---------------------------------------------------------------------------------------
@dataclass
class Pending:
    """A span whose marks become seconds after the step's synchronize."""

    lane: str
    name: str
    start: Mark
    end: Mark
    step: int
    layer: int | None = None
    bytes: int = 0

    def resolve(self, device: Device) -> Span:
        return Span(self.lane, self.name, device.seconds(self.start), device.seconds(self.end), self.step, self.layer, self.bytes)


@dataclass
class Fetch:
    """One Engram layer's fetch in one step, handed from the compute thread to the worker."""

    plan: FetchPlan
    step: int
    issued: Mark  # the issuing block's start
    done: threading.Event = field(default_factory=threading.Event)
    ready: Mark | None = None  # the last stage's end
    error: BaseException | None = None


class FetchWorker:
    """The thread that runs fetches one after another, in the order they are issued."""

    def __init__(self, device: Device, layers: dict[int, LayerMemory], transport) -> None:
        self.device, self.layers, self.transport = device, layers, transport
        self._jobs: queue.SimpleQueue[Fetch | None] = queue.SimpleQueue()
        self._spans: list[Pending] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="engram-fetch", daemon=True)

    def __enter__(self) -> FetchWorker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._jobs.put(None)
        self._thread.join()

    def submit(self, fetch: Fetch) -> None:
        self._jobs.put(fetch)

    def take_spans(self) -> list[Pending]:
        with self._lock:
            spans, self._spans = self._spans, []
        return spans

    def _loop(self) -> None:
        with self.device.worker(), torch.no_grad():
            while (fetch := self._jobs.get()) is not None:
                try:
                    self._run(fetch)
                except BaseException as exc:  # handed to the compute thread, which raises it
                    fetch.error = exc
                finally:
                    fetch.done.set()

    def _run(self, fetch: Fetch) -> None:
        plan, device = fetch.plan, self.device
        mem, n = self.layers[plan.layer], int(plan.fetch.size)
        device.wait_reached(fetch.issued)
        mem.room(n, device)
        index = torch.from_numpy(plan.fetch)
        spans = []
        for stage in self.transport.stages(n, mem.info.row_bytes):
            if stage.resource == "gather":
                marks = device.gather(mem.table, index, mem.staging[:n])
            elif stage.resource == "h2d":
                marks = device.h2d(mem.landing[:n], mem.staging[:n])
            else:
                marks = device.zero_copy(mem.zero_copy, index, mem.landing[:n])
            spans.append(Pending(LANES[stage.resource], f"{NAMES[stage.resource]} L{plan.layer}", *marks, fetch.step, plan.layer, stage.bytes))
        with self._lock:
            self._spans += spans
        fetch.ready = spans[-1].end


# ---- the session ------------------------------------------------------------------------------------
def needs_resident(p: Planner, layers: Sequence[int]) -> bool:
    """Does a pass with this planner read rows from HBM (placement or cache)?"""
    return p.placement.bytes_per_tier().get(Tier.HBM, 0) > 0 or any(p.cache.capacity_rows(layer) > 0 for layer in layers)


class RealSession:
    """What a real run allocates once and reuses for every pass: tables, buffers, modules, blocks.

    `placements` are those of the passes to come (None: the scenario's), so the memory check
    counts a resident table in HBM when one of them needs it. Every check runs before the first
    allocation; a refusal is one InputError line. Construction ends with an untimed warm-up.
    """

    def __init__(self, prepared: Prepared, backend: str, placements: Sequence[StrategyChoice | None] = (None,)) -> None:
        scenario = self.scenario = prepared.scenario
        self.prepared = prepared
        backbone, engram = scenario.model.backbone, scenario.model.engram
        att = backbone.attention
        if att.heads % att.kv_heads:
            raise InputError(prepared.source, f"attention heads ({att.heads}) must be a multiple of kv_heads ({att.kv_heads})",
                             field="model.backbone.attention.kv_heads")
        self.transport = build("transport", scenario.strategies.transport, prepared.setup())
        stages = tuple(s.resource for s in self.transport.stages(1, engram.row_bytes))
        if stages not in PIPELINES:
            raise InputError(prepared.source, f"the real backends run a gather then an h2d copy, or a zero-copy gather; "
                             f"transport {scenario.strategies.transport.name!r} has stages {list(stages)}", field="strategies.transport")
        self.device = device = make_device(backend, prepared.source)
        self.limits = step_limits(prepared.workload)
        self.dtype = device.compute_dtype(backbone.dtype)
        self.sampler = None  # the hardware monitor of the first pass that asked for one
        resident = any(needs_resident(planner(prepared, p), list(prepared.tables)) for p in placements)
        try:
            device.check_memory(prepared.source, self.footprint(stages, resident))
            self.layers = self._allocate(stages, resident)
            self.standin = StandIn(backbone, self.limits, device.torch_device, self.dtype, device.generator(scenario.run.seed),
                                   device.linear())
            self._warm_up(placements[0] if placements else None)
        except BaseException:
            device.close()
            raise

    def __enter__(self) -> RealSession:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.device.close()

    def _capacity(self, info: TableInfo) -> int:
        """Landing/staging rows: a step's tokens x heads can never need more distinct rows."""
        return min(info.rows, self.limits.tokens * self.scenario.model.engram.heads_per_layer)

    def footprint(self, stages: tuple[str, ...], resident: bool) -> Footprint:
        backbone, engram = self.scenario.model.backbone, self.scenario.model.engram
        tables = self.prepared.tables.values()
        buffers = sum(self._capacity(t) * t.row_bytes for t in tables)
        b = self.dtype.itemsize
        fp = Footprint(host={"Engram tables": sum(t.bytes for t in tables)})
        if "gather" in stages:
            fp.host["staging buffers"] = buffers
        fp.device = {"landing buffers": buffers, **nbytes(backbone, self.limits, b),
                     "Engram layers": len(tables) * engram_bytes(engram, backbone.hidden, self.limits.tokens, b)}
        if resident and self.device.resident_copies:
            fp.device["Engram tables in HBM"] = fp.host["Engram tables"]
        return fp

    def _allocate(self, stages: tuple[str, ...], resident: bool) -> dict[int, LayerMemory]:
        device, engram, hidden = self.device, self.scenario.model.engram, self.scenario.model.backbone.hidden
        dtype, width = table_format(engram)
        generator = torch.Generator().manual_seed(engram.seed)  # table contents: drawn on the host, same on every device
        layers = {}
        for layer, info in self.prepared.tables.items():
            table = device.host_table(info.rows, width, dtype)
            fill_table(table, engram, generator)
            rows = self._capacity(info)
            module = EngramModule(hidden, engram.d_mem, hc_mult=engram.hc_mult, max_ngram=engram.max_ngram,
                                  kernel_size=engram.kernel_size, generator=self.scenario.run.seed + layer,
                                  device=device.torch_device, dtype=self.dtype)
            layers[layer] = LayerMemory(
                info, table, device.landing(rows, width, dtype),
                device.staging(rows, width, dtype) if "gather" in stages else None,
                device.resident(table) if resident else None,
                device.zero_copy_source(table) if "zero_copy" in stages else None,
                module,
            )
        return layers

    # ---- a pass -----------------------------------------------------------------------------------
    def run(self, placement: StrategyChoice | None = None, engram: bool = True, progress: Callable | None = None,
            sample: bool = False) -> RunOutcome:
        """One measured pass over the workload; `sample` records hardware counters (CUDA: NVML)."""
        device = self.device
        plans = planner(self.prepared, placement) if engram else None
        scheduler = self.prepared.workload.scheduler()
        monitor = device.monitor() if sample else None
        with self._threads() as worker:
            device.start_clock()
            with monitor or contextlib.nullcontext():
                records, spans = self._loop(scheduler, plans, worker, self.scenario.run.max_steps, device.now, progress)
        if monitor is not None and self.sampler is None:
            self.sampler = monitor
        busy = sum(s.end_s - s.start_s for s in spans if s.lane in ("copy", "zero-copy"))
        ttft, tpot = scheduler.latencies()
        sim = SimOutcome(records, spans, 0, busy, records[-1].end_s if records else 0.0)
        return RunOutcome(sim, scheduler.output_tokens, scheduler.prompt_tokens, ttft, tpot)

    def _warm_up(self, placement: StrategyChoice | None) -> None:
        """Run the workload's first steps once, untimed, every request taken as arrived: first
        calls pay one-off costs (kernel selection, allocator growth, lazy initialisation) that
        would otherwise land on the first measured step."""
        with self._threads() as worker:
            self.device.start_clock()
            self._loop(self.prepared.workload.scheduler(), planner(self.prepared, placement), worker, WARMUP_STEPS,
                       lambda: math.inf, None)

    @contextlib.contextmanager
    def _threads(self) -> Iterator[FetchWorker]:
        """The compute thread's context and a running fetch worker, for one pass."""
        with self.device.compute(), torch.no_grad(), FetchWorker(self.device, self.layers, self.transport) as worker:
            yield worker

    def _loop(self, scheduler: Scheduler, plans: Planner | None, worker: FetchWorker, max_steps: int | None,
              clock: Callable[[], float], progress: Callable | None) -> tuple[list[StepRecord], list[Span]]:
        """Steps back to back, as `simulate` runs them; sleep until the next arrival when idle."""
        records: list[StepRecord] = []
        spans: list[Span] = []
        while not scheduler.done and (max_steps is None or len(records) < max_steps):
            step = scheduler.next_step(clock())
            if step is None:
                arrival = scheduler.next_arrival()
                if arrival is None:
                    break
                time.sleep(max(0.0, arrival - clock()))
                continue
            record = self._step(step, plans, worker, spans)
            scheduler.finish_step(step, record.end_s)
            records.append(record)
            if progress is not None:
                progress(step)
        return records, spans

    def _step(self, step: Step, plans: Planner | None, worker: FetchWorker, spans: list[Span]) -> StepRecord:
        device, index = self.device, step.index
        start = device.mark()
        layer_plans = plans.plan(step, StepView(step)) if plans is not None else {}
        layout = step_layout(step, device.torch_device, device.attention_groups)
        issues: dict[int, list[int]] = {}
        for layer, plan in layer_plans.items():
            issues.setdefault(plan.issue_block, []).append(layer)
        pending: list[Pending] = []
        fetches: dict[int, Fetch] = {}
        waits: list[tuple[Fetch, tuple[Mark, Mark] | None]] = []
        h = self.standin.input(layout)
        cuts = sorted({0, self.scenario.model.backbone.layers, *issues, *layer_plans})
        for begin, stop in zip(cuts, cuts[1:]):
            for layer in issues.get(begin, []):
                fetch = fetches[layer] = Fetch(layer_plans[layer], index, device.mark())
                if fetch.plan.fetch.size:
                    worker.submit(fetch)
            if begin == 0:  # the step's host work: plan, layout, the first fetches handed to the worker
                pending.append(Pending("compute", "host", start, device.mark(), index))
            if begin in layer_plans:
                waits.append((fetches[begin], self._wait(fetches[begin])))
                mark = device.mark()
                h = h + self._engram_output(begin, fetches[begin].plan, step, h)
                pending.append(Pending("compute", f"engram L{begin}", mark, device.mark(), index, begin))
            mark = device.mark()
            for block in range(begin, stop):
                h = self.standin.block(block, h, layout)
            pending.append(Pending("compute", f"blocks {begin}-{stop - 1}", mark, device.mark(), index))
        mark = device.mark()
        self.standin.head(h, layout)
        end = device.mark()
        pending.append(Pending("compute", "head", mark, end, index))
        device.synchronize()
        record = StepRecord(index, step.kind, device.seconds(start), device.seconds(end), step.num_tokens, step.num_seqs)
        resolved = [p.resolve(device) for p in pending + worker.take_spans()]
        for fetch, wait in waits:
            stall = self._stall(fetch, wait)
            if stall is not None:
                resolved.append(stall)
            record.layers.append(self._layer_record(fetch, stall))
        spans += sorted(resolved, key=lambda s: s.start_s)
        return record

    def _wait(self, fetch: Fetch) -> tuple[Mark, Mark] | None:
        """Make the compute timeline wait for the fetch; the marks around the wait, if it may stall."""
        if not fetch.plan.fetch.size:
            return None
        device = self.device
        waited_from = None if fetch.done.is_set() and device.landed(fetch.ready) else device.mark()
        fetch.done.wait()
        if fetch.error is not None:
            raise fetch.error
        device.wait_landed(fetch.ready)
        return None if waited_from is None else (waited_from, device.mark())

    def _stall(self, fetch: Fetch, wait: tuple[Mark, Mark] | None) -> Span | None:
        """The stall span, when the rows landed after the compute timeline reached the layer
        (on CUDA the host often waits while the GPU is still busy with earlier blocks: no stall)."""
        if wait is None or self.device.seconds(fetch.ready) <= self.device.seconds(wait[0]):
            return None
        layer = fetch.plan.layer
        return Pending("compute", f"stall L{layer}", *wait, fetch.step, layer).resolve(self.device)

    def _engram_output(self, layer: int, plan: FetchPlan, step: Step, h: torch.Tensor) -> torch.Tensor:
        mem, engram, where = self.layers[layer], self.scenario.model.engram, self.device.torch_device
        tokens = h.shape[0]
        slots = np.searchsorted(plan.rows, self.prepared.workload.rows[layer][step.positions])  # [tokens, heads]
        missed = np.searchsorted(plan.rows, plan.fetch[: plan.misses])  # misses land first, in row order
        unique = mem.landing.new_empty(plan.rows.size, mem.landing.shape[1])
        if plan.misses:
            unique.index_copy_(0, to_index(missed, where), mem.landing[: plan.misses])
        if plan.rows_hbm:
            if mem.resident is None:
                raise RuntimeError(f"layer {layer}: the placement put rows in HBM but declared no HBM bytes")
            in_hbm = np.ones(plan.rows.size, dtype=bool)
            in_hbm[missed] = False
            at = np.flatnonzero(in_hbm)
            unique.index_copy_(0, to_index(at, where), mem.resident.index_select(0, to_index(plan.rows[at], where)))
        e = row_values(unique, engram, self.dtype).index_select(0, to_index(slots.reshape(-1), where))
        branches = h.view(1, tokens, 1, -1).expand(1, tokens, engram.hc_mult, h.shape[-1])
        return mem.module(branches, e.view(1, tokens, engram.d_mem))[0].mean(dim=1)

    def _layer_record(self, fetch: Fetch, stall: Span | None) -> LayerRecord:
        plan, seconds = fetch.plan, self.device.seconds
        n = int(plan.fetch.size)
        issue = seconds(fetch.issued)
        return LayerRecord(plan.layer, int(plan.rows.size), plan.references, plan.rows_hbm, n, n * self.layers[plan.layer].info.row_bytes,
                           issue, seconds(fetch.ready) if n else issue, stall.end_s - stall.start_s if stall else 0.0)

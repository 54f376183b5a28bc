"""The micro-benchmarks: the pieces the cost model prices, run on the backend's own operations
(the `Device` of backends/device.py, the stand-in blocks and the Engram layer the real executor
runs), timed by the harness the way a real step sees them."""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch

from engramsim.backends.device import make_device
from engramsim.backends.engram_layer import LayerRows, engram_forward
from engramsim.backends.engram_module import EngramModule
from engramsim.backends.fetch import Buffers, FetchWorker
from engramsim.backends.memory import host_memory
from engramsim.backends.standin import Limits, StandIn
from engramsim.backends.tables import fill_table
from engramsim.hardware.presets import load_profile
from engramsim.kernels import block_kernels, engram_kernels, head_kernels
from engramsim.plan import FetchPlan
from engramsim.records import SpanKind
from engramsim.registry import build
from engramsim.scenario import Engram, Model, Scenario, StrategyChoice
from engramsim.strategies import SetupContext

from .budgets import Budget, Case, Shape, backbone_cases, host_scenario, make_step, shape_model
from .harness import FetchTiming, Harness, median
from .machine import cache_bytes, huge_page_advice
from .measurements import Measurements, kernel_fields

GB = 1e9
ENGRAM_ROW_BYTES = 256  # the rows of the table fill, the timed Engram layer, the host scenario and the interference gathers
NO_ROWS = np.empty(0, dtype=np.int64)
Progress = Callable[[str, int, int], None]  # (stage label, done, total)
SIZE_ROWS = 16384  # rows of each gather timed against the table's size (a decode step's rows, order of magnitude)
SIZE_MEMORY_SHARE = 0.6  # of the memory available, the most one table of the size sweep takes
MADV_HUGEPAGE, MADV_NOHUGEPAGE = 14, 15  # linux/mman.h
HUGE_PAGE = 2 << 20


def size_threads(gather_threads: int) -> list[int]:
    """Thread counts of the size sweep: 1, 2, the backend's gather threads and every core, as far as the cores go."""
    cores = os.cpu_count() or 1
    return sorted({t for t in (1, 2, gather_threads, cores) if t <= cores})


def advised_buffer(nbytes: int, huge: bool) -> torch.Tensor:
    """A flat float32 buffer of `nbytes`, its whole 2 MiB-aligned span advised to the kernel as
    huge-page memory or not, before any page is touched (the advice applies as pages fault in)."""
    flat = torch.empty(nbytes // 4, dtype=torch.float32)
    start = -(-flat.data_ptr() // HUGE_PAGE) * HUGE_PAGE
    end = (flat.data_ptr() + nbytes) // HUGE_PAGE * HUGE_PAGE
    if end > start:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_HUGEPAGE if huge else MADV_NOHUGEPAGE) != 0:
            raise OSError(ctypes.get_errno(), f"madvise of a {nbytes}-byte gather table failed")
    return flat


def sorted_unique_rows(gen: np.random.Generator, total: int, n: int) -> np.ndarray:
    """n distinct random rows of a table of `total`, sorted, as the planner hands fetches over."""
    if n >= total:
        return np.arange(total, dtype=np.int64)
    rows = np.unique(gen.integers(0, total, size=int(n * 1.05) + 8, dtype=np.int64))
    while rows.size < n:
        rows = np.unique(np.concatenate([rows, gen.integers(0, total, size=n, dtype=np.int64)]))
    return np.sort(gen.choice(rows, size=n, replace=False))


def calibration_setup() -> SetupContext:
    """What a transport plugin is built from, for the fetch benchmarks (the built-in ones read none of it)."""
    scenario = Scenario(name="calibration")
    return SetupContext(scenario, {}, load_profile(scenario.hardware.profile), scenario.run.seed)


def run_blocks(standin: StandIn, layers: int, layout: Any) -> torch.Tensor:
    """Every stand-in block in turn, the hidden states chained through, as a step runs them."""
    h = standin.input(layout)
    for block in range(layers):
        h = standin.block(block, h, layout)
    return h


def limits_of(steps: list[Case]) -> Limits:
    """The largest of `steps`: what the stand-in's buffers are sized for."""
    return Limits(tokens=max(int(n.sum()) for _, n, _ in steps), seqs=max(n.size for _, n, _ in steps),
                  context=max(int(c.max()) for _, _, c in steps))


class Calibrator:
    """Runs the micro-benchmarks of one backend on its `Device`, into `self.m`."""

    def __init__(self, backend: str, budget: Budget, progress: Progress | None = None, seed: int = 0) -> None:
        self.backend = backend
        self.budget = budget
        self.progress = progress or (lambda stage, done, total: None)
        self.rng = np.random.default_rng(seed)
        self.device = make_device(backend, "calibration")
        self.dtype = torch.bfloat16 if backend == "cuda" else torch.float32
        self.dtype_name = "bf16" if backend == "cuda" else "fp32"
        self.esize = torch.tensor([], dtype=self.dtype).element_size()
        self.engram_head_dim = ENGRAM_ROW_BYTES // self.esize
        self.m = Measurements(backend, budget.name, threads=self._gather_threads(), table_bytes=budget.table_bytes)
        self.harness = Harness(self.device, self.m.threads)
        self._table: torch.Tensor | None = None
        self._decode: Callable[[], None] | None = None
        self._fetches = 0  # fetches handed to a worker so far: each its own step index
        self.device.start_clock()

    def _gather_threads(self) -> int:
        """Threads the backend's gather runs with (CPU: its one fetch worker; CUDA: `gather_threads`)."""
        threads = getattr(self.device, "gather_threads", None)
        if isinstance(threads, int):
            return threads
        threads = getattr(importlib.import_module(f"engramsim.backends.{self.backend}"), "THREADS", None)
        return threads if isinstance(threads, int) else torch.get_num_threads()

    def close(self) -> None:
        self._table = None
        self.device.close()

    # ---- the table -------------------------------------------------------------------------------
    def table(self) -> torch.Tensor:
        """One flat float32 host buffer of `table_bytes`, every page written, then read (warm)."""
        if self._table is None:
            self._table = self.device.host_table(self.budget.table_bytes // 4, 1, torch.float32).view(-1)
            self._fill()
        return self._table

    def _fill(self) -> None:
        """The table filled (`fill_rows`), then warmed."""
        self.fill_rows(self.table())
        self._warm()

    def fill_rows(self, flat: torch.Tensor) -> torch.Tensor:
        """`flat` as rows of `ENGRAM_ROW_BYTES`, seeded rows repeated down it as the executor fills
        real tables (backends/tables.py): the same memory content, so the same behaviour (on an
        overcommitted VM, random pages read back slower than constant ones)."""
        rows = self.view_rows(flat, flat.numel() * 4 // ENGRAM_ROW_BYTES, ENGRAM_ROW_BYTES)
        fill_table(rows, Engram.model_validate({"head_dim": self.engram_head_dim, "dtype": self.dtype_name}),
                   torch.Generator().manual_seed(0))
        return rows

    def _warm(self) -> None:
        """A sequential read of the whole table and a few untimed gathers: on some VMs the first
        random reads after a large write run many times slower for a while."""
        flat = self.table()
        float(flat.sum())
        rb = self.budget.row_bytes[0]
        total = self.budget.table_bytes // rb
        table = self.view_rows(flat, total, rb)
        for n in (64, 256, 1024) * 4:
            torch.index_select(table, 0, self._random_index(total, n))

    def view_rows(self, flat: torch.Tensor, rows: int, row_bytes: int) -> torch.Tensor:
        """`rows` rows of `row_bytes` in the backend's table dtype, viewed over a flat buffer."""
        width = row_bytes // self.esize
        return flat.view(torch.uint8)[: rows * row_bytes].view(self.dtype).view(rows, width)

    def _random_index(self, total: int, n: int) -> torch.Tensor:
        return torch.from_numpy(sorted_unique_rows(self.rng, total, n))

    def _shuffled(self, cases: list) -> list:
        """Cases in random order, so a slow spell of the machine (after the table's fill, say)
        spreads over all of them instead of biasing the first row size."""
        return [cases[i] for i in self.rng.permutation(len(cases))]

    def decode_step(self) -> Callable[[], None]:
        """A decode step of the first backbone shape (blocks, LM head, synchronize) as a call that
        runs it on the calling thread: the compute the executor runs between fetches."""
        if self._decode is None:
            dev = self.device
            shape, steps = backbone_cases(self.backend, self.budget)[0]
            decode = [s for s in steps if s[0] == "decode"]
            case = decode[len(decode) // 2]
            model = shape_model(shape, self.dtype_name, self.engram_head_dim, self.dtype_name)
            standin = StandIn(model.backbone, limits_of([case]), dev.torch_device, dev.compute_dtype(self.dtype_name),
                              dev.generator(1), dev.linear())
            layout = standin.layout(make_step(*case), dev.attention_groups)
            dev.synchronize()  # weights and index uploads were queued on this thread's stream: land them before another stream reads them

            def run() -> None:
                standin.head(run_blocks(standin, shape.layers, layout), layout)
                dev.synchronize()
            self._decode = run
        return self._decode

    # ---- fetches -----------------------------------------------------------------------------------
    def bench_fetches(self, transport: str) -> None:
        """Fetches of sorted unique random rows through the executor's fetch worker, each after a
        stand-in decode step and waited for as an Engram layer waits (`Harness.fetch_timer`).
        staged: the gather span (from the hand-over) and the h2d stage (from the gather's end until
        the waiting thread resumed); zero-copy: from the issue until the waiting thread resumed."""
        b, dev = self.budget, self.device
        flat = self.table()
        cases = self._shuffled([(n, rb) for rb in b.row_bytes for n in b.gather_rows])
        words = max(b.gather_rows) * max(b.row_bytes) // 4
        staging = dev.staging(words, 1, torch.float32).view(-1) if transport == "staged" else None
        landing = dev.landing(words, 1, torch.float32).view(-1)
        choice = build("transport", StrategyChoice(name=transport), calibration_setup())
        with contextlib.ExitStack() as stack:
            timed = stack.enter_context(self.harness.fetch_timer(self.decode_step()))
            workers = {rb: stack.enter_context(FetchWorker(dev, choice, rb)) for rb in b.row_bytes}
            buffers = {}
            for rb in b.row_bytes:
                table = self.view_rows(flat, b.table_bytes // rb, rb)
                buffers[rb] = Buffers(table, None if staging is None else self.view_rows(staging, max(b.gather_rows), rb),
                                      self.view_rows(landing, max(b.gather_rows), rb),
                                      dev.zero_copy_source(table) if transport == "zero-copy" else None)
            for i, (n, rb) in enumerate(cases):
                total = b.table_bytes // rb
                timings = []
                for _ in range(b.repeats + 1):  # the first one warms up
                    rows = sorted_unique_rows(self.rng, total, n)
                    self._fetches += 1
                    plan = FetchPlan(step=self._fetches, layer=0, rows=rows, references=n, placed_hbm=0, cache_hits=0, fetch=rows,
                                     misses=n, issue_step=self._fetches, issue_block=0)
                    timings.append(timed(workers[rb], plan, buffers[rb]))
                self._record_fetches(transport, n, rb, timings[1:])
                self.progress("gather + h2d" if transport == "staged" else transport, i + 1, len(cases))

    def _record_fetches(self, transport: str, n: int, rb: int, timings: list[FetchTiming]) -> None:
        """The medians of one case's fetches, in the stages the simulator prices."""
        if transport == "zero-copy":
            self.m.zero_copy.append({"rows": n, "row_bytes": rb, "seconds": median([t.resumed_s - t.issued_s for t in timings])})
            return
        gathers = [next(s for s in t.spans if s.kind is SpanKind.GATHER) for t in timings]
        self.m.gather.append({"rows": n, "row_bytes": rb, "seconds": median([g.seconds for g in gathers])})
        self.m.copy.append({"bytes": n * rb, "seconds": median([t.resumed_s - g.end_s for t, g in zip(timings, gathers)])})

    def bench_quiet_gather(self) -> None:
        """Gathers back to back on a quiet machine (`gather_alone`, for the description)."""
        b = self.budget
        flat = self.table()
        cases = self._shuffled([(n, rb) for rb in b.row_bytes for n in b.gather_rows])
        staging = self.device.staging(max(b.gather_rows) * max(b.row_bytes) // 4, 1, torch.float32).view(-1)
        with self.harness.quiet_gather() as timed:
            for i, (n, rb) in enumerate(cases):
                total = b.table_bytes // rb
                table = self.view_rows(flat, total, rb)
                out = self.view_rows(staging, n, rb)
                self.device.gather(table, self._random_index(total, n), out)  # warm-up
                times = [timed(table, self._random_index(total, n), out) for _ in range(b.repeats)]
                self.m.gather_alone.append({"rows": n, "row_bytes": rb, "seconds": median(times)})
                self.progress("gather (quiet)", i + 1, len(cases))

    def bench_gather_sizes(self) -> None:
        """The gather against its table's size (`gather_size`): per size of the budget that fits in
        `SIZE_MEMORY_SHARE` of the memory available, a fresh table in 4 KiB pages and, where the
        kernel takes the advice, one in 2 MiB pages (`madvise`), filled as real tables are; on each,
        random gathers of `SIZE_ROWS` rows back to back, at every thread count of `size_threads`.
        Pageable memory on both backends: what is measured is the CPU's caches and TLB."""
        b = self.budget
        self.m.caches, self.m.huge_page_mode = cache_bytes(), huge_page_advice()
        pages = (False, True) if self.m.huge_page_mode in ("always", "madvise") else (False,)
        limit = SIZE_MEMORY_SHARE * host_memory()[1]
        cases = [(size, huge) for size in b.size_tables if size <= limit for huge in pages]
        n, rb = SIZE_ROWS, ENGRAM_ROW_BYTES
        out = torch.empty(n * rb // 4, dtype=torch.float32)
        with self.harness.quiet_gather() as timed:
            for i, (size, huge) in enumerate(cases):
                table, rows = self.fill_rows(advised_buffer(size, huge)), self.view_rows(out, n, rb)
                total = table.shape[0]
                for threads in size_threads(self.m.threads):
                    torch.set_num_threads(threads)
                    timed(table, self._random_index(total, n), rows)  # warm-up
                    times = [timed(table, self._random_index(total, n), rows) for _ in range(b.repeats)]
                    self.m.gather_size.append({"table_bytes": size, "huge_pages": huge, "threads": threads, "rows": n, "row_bytes": rb,
                                               "seconds": median(times)})
                del table
                self.progress("gather vs table size", i + 1, len(cases))

    def bench_stream(self) -> None:
        """Streaming copy bandwidth of host memory (read + write counted), the gather's DRAM ceiling."""
        flat = self.table()
        half = flat.numel() // 2
        src, dst = flat[:half], flat[half : 2 * half]
        times = []
        with self.harness.fetch_threads():
            for _ in range(max(3, self.budget.repeats // 2)):
                t0 = time.perf_counter()
                dst.copy_(src)
                times.append(time.perf_counter() - t0)
        self._fill()  # the copy overwrote half the table
        self.m.stream_gbps = 2 * half * 4 / min(times) / GB
        self.progress("host bandwidth", 1, 1)

    # ---- backbone ------------------------------------------------------------------------------------
    def bench_backbone(self) -> None:
        """Per case, steps run the way the executor runs them: every block in turn with the hidden
        states chained through, the Engram layer (`engram_forward`, rows from the landing buffer),
        then the LM head; each part timed in place (so weights are as cold or warm as in a real
        step), medians over the repeats."""
        cases = backbone_cases(self.backend, self.budget)
        total = sum(len(steps) for _, steps in cases)
        done = 0
        dev = self.device
        with dev.compute(), torch.no_grad():
            for shape, steps in cases:
                model = shape_model(shape, self.dtype_name, self.engram_head_dim, self.dtype_name)
                limits, compute_dtype = limits_of(steps), dev.compute_dtype(self.dtype_name)
                standin = StandIn(model.backbone, limits, dev.torch_device, compute_dtype, dev.generator(0), dev.linear())
                engram = model.engram
                module = EngramModule(shape.hidden, engram.d_mem, hc_mult=engram.hc_mult, max_ngram=engram.max_ngram,
                                      kernel_size=engram.kernel_size, generator=0, device=dev.torch_device, dtype=compute_dtype)
                heads = engram.heads_per_layer
                landing = dev.landing(limits.tokens * heads, engram.head_dim, self.dtype)
                landing.normal_()
                for kind, new, ctx in steps:
                    step = make_step(kind, new, ctx)
                    layout = standin.layout(step, dev.attention_groups)
                    h = standin.input(layout)
                    tokens = int(new.sum())
                    rows = max(1, min(landing.shape[0], tokens * heads * 2 // 3))  # ~1.5 references per unique row
                    unique = sorted_unique_rows(self.rng, 1 << 40, rows)
                    layer_rows = LayerRows(unique=unique, token_rows=unique[self.rng.integers(0, rows, size=(tokens, heads))],
                                           landed=landing, fetched=unique, resident=None, resident_index=NO_ROWS)
                    parts = {"block": partial(run_blocks, standin, shape.layers, layout),
                             "engram": partial(engram_forward, module, layer_rows, engram, h),
                             "head": partial(standin.head, h, layout)}  # final norm, LM head, sampling
                    times: dict[str, list[float]] = {part: [] for part in parts}
                    for _ in range(self.budget.repeats + 1):  # the first round warms up
                        for part, fn in parts.items():
                            times[part].append(self.harness.device_time(fn))
                    base = {"shape": shape.name, "kind": kind, "seqs": int(new.size), "tokens": tokens, "context": int(ctx.max())}
                    works = {"block": block_kernels(model, step, 0), "engram": engram_kernels(model, step, rows),
                             "head": head_kernels(model, step)}
                    for part in parts:
                        per = shape.layers if part == "block" else 1
                        getattr(self.m, part).append({**base, "rows": rows, **kernel_fields(works[part]),
                                                      "seconds": median(times[part][1:]) / per})
                    done += 1
                    self.progress("backbone", done, total)
                if shape is cases[0][0]:
                    self._interference(standin, shape, model, steps)
                del standin, module, landing
                if self.backend == "cuda":
                    torch.cuda.empty_cache()

    def _interference(self, standin: StandIn, shape: Shape, model: Model, steps: list[Case]) -> None:
        """Blocks timed while a gather loops on another thread (`block_under_gather`)."""
        dev, b = self.device, self.budget
        rb, n = ENGRAM_ROW_BYTES, min(16384, max(b.gather_rows))
        total_rows = b.table_bytes // rb
        table = self.view_rows(self.table(), total_rows, rb)
        out = self.view_rows(self.device.staging(n * rb // 4, 1, torch.float32).view(-1), n, rb)

        def gather_loop(stop: threading.Event) -> None:
            torch.set_num_threads(self.m.threads)
            with dev.worker():
                while not stop.is_set():
                    dev.gather(table, self._random_index(total_rows, n), out)

        picked = [steps[0], steps[-1], steps[len(steps) // 2]][: b.interference_cases]
        for kind, new, ctx in picked:
            step = make_step(kind, new, ctx)
            blocks = partial(run_blocks, standin, shape.layers, standin.layout(step, dev.attention_groups))
            stop = threading.Event()
            worker = threading.Thread(target=gather_loop, args=(stop,), daemon=True)
            worker.start()
            try:
                under = median([self.harness.device_time(blocks) / shape.layers for _ in range(b.repeats)])
            finally:
                stop.set()
                worker.join()
            self.m.block_under_gather.append({"shape": shape.name, "kind": kind, "seqs": int(new.size), "tokens": int(new.sum()),
                                              "context": int(ctx.max()), **kernel_fields(block_kernels(model, step, 0)),
                                              "seconds": under})

    # ---- host work ------------------------------------------------------------------------------------
    def bench_host(self) -> None:
        """The executor's per-step host work (plan, step layout, the first fetch handed to the
        worker): the HOST spans of short real passes over `host_scenario`, one per batch size."""
        from engramsim.backends.executor import RealSession
        from engramsim.session import prepare

        shape = backbone_cases(self.backend, self.budget)[0][0]
        batches = self.budget.host_batches
        for i, seqs in enumerate(batches):
            scenario = Scenario.model_validate(host_scenario(shape, seqs, self.dtype_name, self.engram_head_dim,
                                                             self.budget.host_steps))
            with RealSession(prepare(scenario, "calibration"), self.backend) as session:
                outcome = session.run()
            steps = {r.index: r for r in outcome.steps}
            for span in outcome.spans:
                if span.kind is SpanKind.HOST:
                    step = steps[span.step]
                    self.m.host.append({"kind": step.kind, "seqs": step.seqs, "tokens": step.tokens, "seconds": span.seconds})
            self.progress("host work", i + 1, len(batches))


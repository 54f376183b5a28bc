"""Memory that grows with the requests of a simulated run: the quickstart's shape (prompts of
64-512 tokens, outputs of 32-256, one Engram layer of 16 heads, 64 sequences a batch), all three
passes (offloaded, all-HBM baseline, no-Engram reference) and the files but the plot, as
`engramsim run` makes them.

Bytes a request are the growth of tracemalloc's numbers (numpy's arrays are traced too) between
two request counts, phase by phase: the run's peak comes last, while the results are written on
top of the records every pass kept, so that is the one held to the target; the passes' own peak
and what they leave held are shown beside it. What is bounded whatever the run's length (the
lookups memo, the hashed windows, the timeline's spans, the records' last chunk, a schedule kept
for later passes) is bounded lower here, so that both counts are past the bounds and the difference is only what grows with
the requests.

Before: the same run held the rows of every window token, every step's lookups, and Python
records and spans of every step: 125 KB a request (tracemalloc peak of the three passes, 2,000
-> 8,000 requests; 121 KB in peak RSS), so 1 M requests needed ~125 GB. Checked end to end once
since: `engramsim run` of 1 M such requests (plot off) ran 43 minutes and peaked at 1.76 GiB RSS.
"""

from __future__ import annotations

import contextlib
import time
import tracemalloc
from dataclasses import dataclass, field

import pytest

from engramsim import records, schedule, workload
from engramsim.runner import run_sim
from engramsim.scenario_io import load_scenario
from engramsim.session import prepare

TARGET = 2_000  # bytes a request: 1 M requests in 2 GB
BEFORE = 125_000  # bytes a request, before (see above)


@dataclass
class Phases:
    """A progress factory for `run_sim` that closes a phase at the end of each pass: the traced
    peak so far and the bytes then held are noted and the peak restarts, so after the run the
    peak is the results phase's."""

    passes_peak: int = 0
    held: list[int] = field(default_factory=list)

    @contextlib.contextmanager
    def __call__(self, label: str, total: int):
        yield lambda advance=1: None
        held, peak = tracemalloc.get_traced_memory()
        self.passes_peak = max(self.passes_peak, peak)
        self.held.append(held)
        tracemalloc.reset_peak()


@dataclass(frozen=True)
class Measured:
    requests: int
    steps: int
    passes_peak: int  # bytes
    held: int  # after the three passes
    results_peak: int  # the run's peak: writing the results over what the passes held
    seconds: float


def measure(requests: int, out) -> Measured:
    path = "scenarios/quickstart.yaml"
    scenario = load_scenario(path, [f"workload.requests={requests}", "run.outputs.plot=false"])
    phases = Phases()
    tracemalloc.start()
    try:
        start = time.perf_counter()
        report = run_sim(prepare(scenario, path), out / str(requests), phases)
        _, results_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return Measured(requests, len(report.outcome.steps), phases.passes_peak, phases.held[-1], results_peak,
                    time.perf_counter() - start)


@pytest.mark.benchmark(group="memory-per-request")
def test_memory_grows_by_under_2kb_a_request(benchmark, compare, monkeypatch, tmp_path):
    monkeypatch.setattr(workload, "MEMO_BYTES", 1 << 20)
    monkeypatch.setattr(workload, "WINDOW_BYTES", 24 << 20)  # 196k tokens: over three batches' longest windows, under 600 requests
    monkeypatch.setattr(records, "TIMELINE_STEPS", 10)  # its file's transient objects, below the steps.csv's
    monkeypatch.setattr(records, "CHUNK_ROWS", 256)  # the records' storage grows by a chunk: smaller ones, finer steps
    monkeypatch.setattr(schedule, "SCHEDULE_TOKENS", 1 << 16)  # a kept schedule (~30 bytes a token) only below it: served step by step past it
    measure(20, tmp_path)  # loads what stays loaded (the vocabulary, lazy imports) before anything is traced
    small, large = benchmark.pedantic(lambda: (measure(600, tmp_path), measure(2_400, tmp_path)), rounds=1)

    def per_request(what: str) -> float:
        return (getattr(large, what) - getattr(small, what)) / (large.requests - small.requests)

    ours = per_request("results_peak")
    benchmark.extra_info.update(bytes_per_request=ours, held_per_request=per_request("held"),
                                passes_peak_per_request=per_request("passes_peak"))
    compare(f"memory of a simulated quickstart-shaped run, {small.requests:,} -> {large.requests:,} requests, "
            f"{per_request('steps'):.2f} steps a request (target <= {TARGET:,} bytes a request: 1 M requests in 2 GB)",
            ours=f"{ours:,.0f} bytes a request at the run's peak, writing the results (~{ours / 1e3:.1f} GB for 1 M requests "
                 f"past the fixed bounds); {per_request('held'):,.0f} held after the passes, {per_request('passes_peak'):,.0f} "
                 f"at the passes' peak; {large.requests:,} requests in {large.seconds:.1f} s traced",
            baseline=f"before: {BEFORE:,} bytes a request (~{BEFORE / 1e3:.0f} GB for 1 M requests)", ratio=BEFORE / ours)
    assert ours <= TARGET

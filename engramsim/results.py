"""Results: the summary metrics, results.json, steps.csv, timeline.json (Perfetto) and plot.png.

Every executor (simulator or real backend) produces a `RunOutcome`; this module alone turns it
into files, so the files of two backends compare line by line. results.json holds no wall-clock
values, so the same scenario and seed give a byte-identical file.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from engramsim import __version__
from engramsim.files import atomic_path, write_text_atomic
from engramsim.metrics import LAYER_COUNTS, MetricContext, per_layer, registered
from engramsim.records import LANES, RunOutcome, Span

SCHEMA_VERSION = 1
STEP_SPLIT = ("cache_hits", "rows_missed", "rows_speculative")  # steps.csv's split of rows_hbm and rows_fetched


def summarize(outcome: RunOutcome, baseline: RunOutcome | None, seed: int, link_gbps: float, *,
              no_engram: RunOutcome | None = None) -> dict[str, Any]:
    """results.json's `summary`: every registered metric (engramsim/metrics.py), None where a
    reference pass it needs did not run."""
    context = MetricContext(outcome=outcome, baseline=baseline, no_engram=no_engram, seed=seed, link_gbps=link_gbps)
    return {name: metric.compute(context) for name, metric in registered().items()}


def results_document(summary: dict, outcome: RunOutcome, scenario: dict, hardware: dict, backend: str) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "engramsim_version": __version__,
        "backend": backend,
        "summary": summary,
        "per_layer": per_layer(outcome.steps),
        "simulation": {"events": outcome.events, "simulated_s": outcome.makespan_s},
        "hardware": hardware,
        "scenario": scenario,
    }


STEP_COLUMNS = ("step", "kind", "start_ms", "end_ms", "latency_ms", "seqs", "tokens", *LAYER_COUNTS, "stall_ms",
                "baseline_latency_ms", *STEP_SPLIT)


def steps_csv(outcome: RunOutcome, baseline: RunOutcome | None) -> str:
    base = {s.index: s.latency_s for s in baseline.steps} if baseline else {}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(STEP_COLUMNS)
    for s in outcome.steps:
        sums = {k: sum(getattr(r, k) for r in s.layers) for k in LAYER_COUNTS + STEP_SPLIT}
        writer.writerow([
            s.index, s.kind, f"{s.start_s * 1e3:.6f}", f"{s.end_s * 1e3:.6f}", f"{s.latency_s * 1e3:.6f}", s.seqs, s.tokens,
            *(sums[k] for k in LAYER_COUNTS), f"{s.stall_s * 1e3:.6f}",
            f"{base[s.index] * 1e3:.6f}" if s.index in base else "", *(sums[k] for k in STEP_SPLIT),
        ])
    return buf.getvalue()


def timeline_json(spans: list[Span], title: str, counters: list[dict[str, Any]] | None = None) -> str:
    """Chrome/Perfetto trace-event JSON: one thread per lane, times in microseconds; `counters`
    are extra trace events appended as given (a CUDA run's NVML samples, "ph": "C")."""
    tids = {lane: i + 1 for i, lane in enumerate(LANES)}
    events: list[dict[str, Any]] = [{"name": "process_name", "ph": "M", "pid": 1, "args": {"name": title}}]
    events += [{"name": "thread_name", "ph": "M", "pid": 1, "tid": tid, "args": {"name": lane}} for lane, tid in tids.items()]
    for span in spans:
        args: dict[str, Any] = {"step": span.step}
        if span.layer is not None:
            args["layer"] = span.layer
        if span.bytes:
            args["bytes"] = span.bytes
        events.append({"name": span.name, "ph": "X", "pid": 1, "tid": tids[span.kind.lane], "ts": round(span.start_s * 1e6, 3),
                       "dur": round(span.seconds * 1e6, 3), "args": args})
    events += counters or []
    return json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}, separators=(",", ":"))


def write_plot(path: Path, outcome: RunOutcome, baseline: RunOutcome | None, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = outcome.steps
    t = np.array([s.start_s for s in steps])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    top.plot(t, [s.latency_s * 1e3 for s in steps], lw=0.8, label="offloaded")
    if baseline is not None:
        top.plot([s.start_s for s in baseline.steps], [s.latency_s * 1e3 for s in baseline.steps], lw=0.8, alpha=0.7, label="all tables in HBM")
    top.set_ylabel("step latency (ms)")
    top.legend(loc="upper right")
    top.set_title(title)
    bottom.plot(t, [s.stall_s * 1e3 for s in steps], lw=0.8, color="tab:red")
    bottom.set_ylabel("Engram stall per step (ms)")
    bottom.set_ylim(bottom=0)
    bottom.set_xlabel("simulated time (s)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_results(out_dir: Path, document: dict, outcome: RunOutcome, baseline: RunOutcome | None, outputs,
                  counters: list[dict[str, Any]] | None = None) -> list[Path]:
    """Write every requested file atomically; return their paths. `counters`: see `timeline_json`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "results.json"]
    write_text_atomic(written[0], json.dumps(document, indent=2, sort_keys=True) + "\n")
    if outputs.steps_csv:
        written.append(out_dir / "steps.csv")
        write_text_atomic(written[-1], steps_csv(outcome, baseline))
    if outputs.timeline:
        written.append(out_dir / "timeline.json")
        write_text_atomic(written[-1], timeline_json(outcome.spans, document["scenario"]["name"], counters))
    if outputs.plot:
        written.append(out_dir / "plot.png")
        write_plot(written[-1], outcome, baseline, document["scenario"]["name"])
    return written

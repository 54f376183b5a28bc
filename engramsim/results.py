"""Results: the summary metrics, results.json, steps.csv, timeline.json (Perfetto) and plot.png.

Every executor (simulator or real backend) produces a `RunOutcome`; this module alone turns it
into files, so the files of two backends compare line by line. results.json holds no wall-clock
values, so the same scenario and seed give a byte-identical file.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engramsim import __version__
from engramsim.errors import InputError
from engramsim.files import atomic_path, write_text_atomic
from engramsim.metrics import LAYER_COUNTS, MetricContext, per_layer, registered
from engramsim.plot import write_plot
from engramsim.records import KINDS, LANES, RunOutcome, Span, Timeline

SCHEMA_VERSION = 1
STEP_SPLIT = ("cache_hits", "rows_missed", "rows_speculative", "rows_staged", "rows_waiting")  # steps.csv's split of rows_hbm and rows_fetched


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


def steps_csv(outcome: RunOutcome, baseline: RunOutcome | None) -> Iterator[str]:
    """One row per step, with the baseline's latency of the step of the same index, as text
    block by block: a long run's columns and text are never all held at once."""
    base = latency_by_index(baseline)
    yield _csv([STEP_COLUMNS])
    for block in outcome.steps.blocks():
        index = block.step_column("index")
        base_s = np.full(index.size, np.nan)
        known = index < base.size
        base_s[known] = base[index[known]]
        yield _csv(zip(
            index.tolist(), [KINDS[k] for k in block.step_column("kind").tolist()],
            *(_ms(block.step_column(k)) for k in ("start_s", "end_s", "latency_s")),
            block.step_column("seqs").tolist(), block.step_column("tokens").tolist(),
            *(block.per_step(k).tolist() for k in LAYER_COUNTS), _ms(block.per_step("stall_s")), _ms(base_s),
            *(block.per_step(k).tolist() for k in STEP_SPLIT), strict=True,
        ))


def _csv(rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _ms(seconds: np.ndarray) -> list[str]:
    """steps.csv's milliseconds ("" for NaN: no such step)."""
    return ["" if math.isnan(s) else f"{s * 1e3:.6f}" for s in seconds.tolist()]


def latency_by_index(outcome: RunOutcome | None) -> np.ndarray:
    """A pass's step latency in seconds by step index (NaN for an index it has no step of)."""
    if outcome is None or not len(outcome.steps):
        return np.empty(0)
    index = outcome.steps.step_column("index")
    latency = np.full(int(index.max()) + 1, np.nan)
    latency[index] = outcome.steps.step_column("latency_s")
    return latency


def timeline_events(spans: Iterable[Span], title: str, pid: int = 1) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One process of a Chrome/Perfetto trace (its name, one thread per lane, a complete event per
    span, times in microseconds) and the `otherData` it needs. A timeline that kept the spans of
    its first steps only (`records.TIMELINE_STEPS`) says so in its title and in `otherData`."""
    timeline = Timeline.of(spans)
    tids = {lane: i + 1 for i, lane in enumerate(LANES)}
    other: dict[str, Any] = {}
    if timeline.dropped:
        title += f" (steps 0-{timeline.limit - 1} only: {timeline.dropped:,} later spans not drawn)"
        other = {"spans_of_steps_below": timeline.limit, "spans_not_drawn": timeline.dropped}
    if timeline.elsewhere:
        title += f" (GPU 0 of the node: {timeline.elsewhere:,} spans of its other GPUs not drawn)"
        other["spans_of_other_gpus"] = timeline.elsewhere
    events: list[dict[str, Any]] = [{"name": "process_name", "ph": "M", "pid": pid, "args": {"name": title}}]
    events += [{"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": lane}} for lane, tid in tids.items()]
    for span in timeline:
        args: dict[str, Any] = {"step": span.step}
        if span.layer is not None:
            args["layer"] = span.layer
        if span.bytes:
            args["bytes"] = span.bytes
        if span.staging:
            args["staging"] = True
        events.append({"name": span.name, "ph": "X", "pid": pid, "tid": tids[span.kind.lane], "ts": round(span.start_s * 1e6, 3),
                       "dur": round(span.seconds * 1e6, 3), "args": args})
    return events, other


def trace_json(events: list[dict[str, Any]], other: dict[str, Any] | None = None) -> str:
    """A trace-event JSON document of `events` (times in microseconds, shown in ms)."""
    return json.dumps({"traceEvents": events, "displayTimeUnit": "ms", **({"otherData": other} if other else {})}, separators=(",", ":"))


def timeline_json(spans: Iterable[Span], title: str, counters: list[dict[str, Any]] | None = None) -> str:
    """A run's timeline.json (`timeline_events`, one process); `counters` are extra trace events
    appended as given (a CUDA run's NVML samples, "ph": "C")."""
    events, other = timeline_events(spans, title)
    return trace_json(events + (counters or []), other)


def results_json(document: dict, path: Path) -> str:
    """results.json's text: standard JSON only, so a value no run should produce (an infinite
    makespan from an extreme profile) is refused, naming the first such key, not written."""
    try:
        return json.dumps(document, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except ValueError:
        raise InputError(path, "is not finite (NaN or Infinity): a scenario or profile value is too extreme for this run",
                         field=_first_non_finite(document)) from None


def _first_non_finite(value: Any, where: str = "") -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return where
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in sorted(items, key=lambda kv: str(kv[0])):
        found = _first_non_finite(item, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def write_results(out_dir: Path, document: dict, outcome: RunOutcome, baseline: RunOutcome | None,
                  no_engram: RunOutcome | None, outputs, counters: list[dict[str, Any]] | None = None) -> list[Path]:
    """Write every requested file atomically; return their paths. `counters`: see `timeline_json`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "results.json"]
    write_text_atomic(written[0], results_json(document, written[0]))
    if outputs.steps_csv:
        written.append(out_dir / "steps.csv")
        with atomic_path(written[-1]) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(steps_csv(outcome, baseline))
    if outputs.timeline:
        written.append(out_dir / "timeline.json")
        write_text_atomic(written[-1], timeline_json(outcome.spans, document["scenario"]["name"], counters))
    if outputs.plot:
        written.append(out_dir / "plot.png")
        write_plot(written[-1], document, outcome, baseline, no_engram)
    return written

"""Results: the summary metrics, results.json, steps.csv, timeline.json (Perfetto) and plot.png.

Every executor (simulator or real backend) produces a `RunOutcome`; this module alone turns it
into files, so the files of two backends compare line by line. results.json holds no wall-clock
values, so the same scenario and seed give a byte-identical file.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engramsim import __version__
from engramsim.files import atomic_path, write_text_atomic
from engramsim.simulator.engine import SimOutcome, Span

SCHEMA_VERSION = 1
LANES = ("compute", "stall", "gather", "copy", "zero-copy")


@dataclass(frozen=True)
class RunOutcome:
    """One executed run plus the request-level metrics its scheduler recorded."""

    sim: SimOutcome
    output_tokens: int
    prompt_tokens: int
    ttft_s: np.ndarray
    tpot_s: np.ndarray

    @property
    def throughput_tok_s(self) -> float:
        """Output tokens per second over the whole run, as nano-vLLM's benchmark reports it."""
        return self.output_tokens / self.sim.makespan_s if self.sim.makespan_s > 0 else 0.0


def _quantiles_ms(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"mean": 0.0, "p50": 0.0, "p99": 0.0}
    ms = values * 1e3
    return {"mean": float(ms.mean()), "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def per_layer(outcome: RunOutcome) -> list[dict[str, Any]]:
    layers: dict[int, dict[str, Any]] = {}
    for step in outcome.sim.steps:
        for rec in step.layers:
            acc = layers.setdefault(rec.layer, dict(layer=rec.layer, stall_ms_total=0.0, steps_stalled=0, fetch_ms_total=0.0,
                                                    fetch_ms_max=0.0, rows_unique=0, references=0, rows_hbm=0, rows_fetched=0,
                                                    bytes_fetched=0))
            acc["stall_ms_total"] += rec.stall_s * 1e3
            fetch_ms = (rec.ready_s - rec.issue_s) * 1e3
            acc["fetch_ms_total"] += fetch_ms
            acc["fetch_ms_max"] = max(acc["fetch_ms_max"], fetch_ms)
            acc["steps_stalled"] += int(rec.stall_s > 0)
            for key in ("rows_unique", "references", "rows_hbm", "rows_fetched", "bytes_fetched"):
                acc[key] += getattr(rec, key)
    for acc in layers.values():
        acc["dedup_ratio"] = acc["references"] / max(1, acc["rows_unique"])
    return [layers[k] for k in sorted(layers)]


def summarize(outcome: RunOutcome, baseline: RunOutcome | None, seed: int, link_gbps: float) -> dict[str, Any]:
    sim = outcome.sim
    latencies = np.array([s.latency_s for s in sim.steps])
    layers = per_layer(outcome)
    pcie_bytes = sum(layer["bytes_fetched"] for layer in layers)
    rows_fetched = sum(layer["rows_fetched"] for layer in layers)
    references = sum(layer["references"] for layer in layers)
    unique = sum(layer["rows_unique"] for layer in layers)
    lat = _quantiles_ms(latencies)
    ttft, tpot = _quantiles_ms(outcome.ttft_s), _quantiles_ms(outcome.tpot_s)
    tput = outcome.throughput_tok_s
    base = baseline.throughput_tok_s if baseline is not None else None
    return {
        "throughput_tok_s": tput,
        "baseline_throughput_tok_s": base,
        "overhead_pct": (base - tput) / base * 100 if base else None,
        "makespan_s": sim.makespan_s,
        "steps": len(sim.steps),
        "output_tokens": outcome.output_tokens,
        "prompt_tokens": outcome.prompt_tokens,
        "step_latency_ms_mean": lat["mean"],
        "step_latency_ms_p50": lat["p50"],
        "step_latency_ms_p99": lat["p99"],
        "ttft_ms_mean": ttft["mean"],
        "ttft_ms_p50": ttft["p50"],
        "ttft_ms_p99": ttft["p99"],
        "tpot_ms_mean": tpot["mean"],
        "tpot_ms_p50": tpot["p50"],
        "tpot_ms_p99": tpot["p99"],
        "engram_stall_ms_total": sum(layer["stall_ms_total"] for layer in layers),
        "pcie_bytes": pcie_bytes,
        "pcie_utilisation": sim.link_busy_s / sim.makespan_s if sim.makespan_s > 0 else 0.0,
        "pcie_avg_gbps": pcie_bytes / sim.makespan_s / 1e9 if sim.makespan_s > 0 else 0.0,
        "link_gbps": link_gbps,
        "rows_fetched": rows_fetched,
        "rows_fetched_per_step_mean": rows_fetched / max(1, len(sim.steps)),
        "dedup_ratio": references / max(1, unique),
        "seed": seed,
    }


def results_document(summary: dict, outcome: RunOutcome, scenario: dict, hardware: dict, backend: str) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "engramsim_version": __version__,
        "backend": backend,
        "summary": summary,
        "per_layer": per_layer(outcome),
        "simulation": {"events": outcome.sim.events, "simulated_s": outcome.sim.makespan_s},
        "hardware": hardware,
        "scenario": scenario,
    }


STEP_COLUMNS = ("step", "kind", "start_ms", "end_ms", "latency_ms", "seqs", "tokens", "rows_unique", "references",
                "rows_hbm", "rows_fetched", "bytes_fetched", "stall_ms", "baseline_latency_ms")


def steps_csv(outcome: RunOutcome, baseline: RunOutcome | None) -> str:
    base = {s.index: s.latency_s for s in baseline.sim.steps} if baseline else {}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(STEP_COLUMNS)
    for s in outcome.sim.steps:
        sums = {k: sum(getattr(r, k) for r in s.layers) for k in ("rows_unique", "references", "rows_hbm", "rows_fetched", "bytes_fetched")}
        writer.writerow([
            s.index, s.kind, f"{s.start_s * 1e3:.6f}", f"{s.end_s * 1e3:.6f}", f"{s.latency_s * 1e3:.6f}", s.seqs, s.tokens,
            sums["rows_unique"], sums["references"], sums["rows_hbm"], sums["rows_fetched"], sums["bytes_fetched"],
            f"{sum(r.stall_s for r in s.layers) * 1e3:.6f}",
            f"{base[s.index] * 1e3:.6f}" if s.index in base else "",
        ])
    return buf.getvalue()


def _lane(span: Span) -> str:
    return "stall" if span.name.startswith("stall") else span.lane


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
        events.append({"name": span.name, "ph": "X", "pid": 1, "tid": tids[_lane(span)], "ts": round(span.start_s * 1e6, 3),
                       "dur": round((span.end_s - span.start_s) * 1e6, 3), "args": args})
    events += counters or []
    return json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}, separators=(",", ":"))


def write_plot(path: Path, outcome: RunOutcome, baseline: RunOutcome | None, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = outcome.sim.steps
    t = np.array([s.start_s for s in steps])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    top.plot(t, [s.latency_s * 1e3 for s in steps], lw=0.8, label="offloaded")
    if baseline is not None:
        top.plot([s.start_s for s in baseline.sim.steps], [s.latency_s * 1e3 for s in baseline.sim.steps], lw=0.8, alpha=0.7, label="all tables in HBM")
    top.set_ylabel("step latency (ms)")
    top.legend(loc="upper right")
    top.set_title(title)
    bottom.plot(t, [sum(r.stall_s for r in s.layers) * 1e3 for s in steps], lw=0.8, color="tab:red")
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
        write_text_atomic(written[-1], timeline_json(outcome.sim.spans, document["scenario"]["name"], counters))
    if outputs.plot:
        written.append(out_dir / "plot.png")
        write_plot(written[-1], outcome, baseline, document["scenario"]["name"])
    return written

"""The metric registry: the README lists exactly its metrics, the summary is computed from hand-built
records as worked out by hand, and a metric added with one declaration reaches every output."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from rich.console import Console

from engramsim.commands.diff import metric_rows
from engramsim.commands.run import print_report
from engramsim.metrics import (
    GROUPS,
    METRICS,
    Metric,
    MetricContext,
    per_layer,
    readme_table,
    register,
    validated_metrics,
)
from engramsim.records import LayerRecord, RunOutcome, ServingCounts, Span, SpanKind, StepLog, StepRecord
from engramsim.results import STEP_COLUMNS, steps_csv, summarize, timeline_json

README = Path(__file__).parent.parent / "README.md"


def results_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Results\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def first_table(section: str) -> list[str]:
    lines = section.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(first, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[first:end]


def layer(layer_id: int, unique: int, refs: int, placed: int, hits: int, missed: int, spec: int, issue_step: int,
          issue_s: float, ready_s: float, stall_s: float) -> LayerRecord:
    return LayerRecord(layer=layer_id, rows_unique=unique, references=refs, rows_placed_hbm=placed, cache_hits=hits,
                       rows_missed=missed, rows_speculative=spec, bytes_fetched=64 * (missed + spec), issue_step=issue_step,
                       issue_s=issue_s, ready_s=ready_s, stall_s=stall_s)


def outcome(makespan_s: float, steps: list[StepRecord] | None = None, spans: list[Span] | None = None,
            link_busy_s: float = 0.0) -> RunOutcome:
    return RunOutcome(steps=steps or [], spans=spans or [], events=0, link_busy_s=link_busy_s, makespan_s=makespan_s,
                      output_tokens=10, prompt_tokens=40, ttft_s=np.array([0.002, 0.004]), tpot_s=np.array([0.001, 0.003]))


STEPS = [
    StepRecord(index=0, kind="prefill", start_s=0.0, end_s=0.010, tokens=40, seqs=2, layers=[
        layer(1, 100, 150, 40, 30, 30, 5, 0, 0.001, 0.004, 0.002),
        layer(3, 50, 50, 50, 0, 0, 0, 0, 0.005, 0.005, 0.0),
    ]),
    StepRecord(index=1, kind="decode", start_s=0.010, end_s=0.016, tokens=2, seqs=2, layers=[
        layer(1, 20, 30, 10, 10, 0, 10, 0, 0.009, 0.011, 0.0005),  # issued during step 0
        layer(3, 30, 60, 0, 0, 30, 0, 1, 0.012, 0.014, 0.001),
    ]),
]
SPANS = [
    Span(kind=SpanKind.BLOCKS, start_s=0.0, end_s=0.002, step=0, blocks=(0, 3)),
    Span(kind=SpanKind.STALL, start_s=0.002, end_s=0.004, step=0, layer=1),
    Span(kind=SpanKind.H2D, start_s=0.001, end_s=0.004, step=0, layer=1, bytes=1920),
]
RUN = outcome(0.016, STEPS, SPANS, link_busy_s=0.004)  # 10 tokens in 16 ms: 625 tok/s
ALL_HBM = outcome(0.0125)  # 800 tok/s
NO_ENGRAM = outcome(0.010)  # 1000 tok/s


# ---- (a) the README lists exactly the registry -----------------------------------------------------
def test_readme_results_table_is_the_registry():
    table = first_table(results_section())
    assert "\n".join(table) + "\n" == readme_table(), "regenerate it: python -m engramsim.metrics"
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    assert [(re.fullmatch(r"`summary\.(\w+)`", key).group(1), unit, meaning) for key, unit, meaning in rows] == \
        [(m.name, m.unit, m.meaning) for m in METRICS.values()]


# ---- (b) values worked out by hand -----------------------------------------------------------------
def test_summary_from_hand_built_records():
    s = summarize(RUN, ALL_HBM, 7, 53.0, no_engram=NO_ENGRAM)
    assert list(s) == list(METRICS)
    assert s["throughput_tok_s"] == pytest.approx(625.0)
    assert s["baseline_throughput_tok_s"] == pytest.approx(800.0)
    assert s["overhead_pct"] == pytest.approx(21.875)
    assert s["no_engram_throughput_tok_s"] == pytest.approx(1000.0)
    assert s["overhead_vs_no_engram_pct"] == pytest.approx(37.5)
    assert s["engram_stall_ms_total"] == pytest.approx(3.5)
    assert s["pcie_utilisation"] == pytest.approx(0.25)  # link busy 4 ms of 16 ms
    assert s["pcie_bytes"] == 64 * 75 and s["pcie_avg_gbps"] == pytest.approx(64 * 75 / 0.016 / 1e9)
    assert (s["rows_placed_hbm"], s["cache_hits"], s["rows_missed"], s["rows_speculative"]) == (100, 40, 60, 15)
    assert s["rows_fetched"] == 75 and s["rows_fetched_per_step_mean"] == pytest.approx(37.5)
    assert s["cache_hit_rate"] == pytest.approx(0.4)  # hits / (hits + misses): of the rows outside HBM
    assert s["dedup_ratio"] == pytest.approx(290 / 200)
    assert (s["step_latency_ms_mean"], s["step_latency_ms_p50"]) == pytest.approx((8.0, 8.0))
    assert s["step_latency_ms_p99"] == pytest.approx(6.0 + 0.99 * 4.0)
    assert (s["ttft_ms_mean"], s["tpot_ms_p50"]) == pytest.approx((3.0, 2.0))
    assert (s["steps"], s["makespan_s"], s["output_tokens"], s["prompt_tokens"]) == (2, 0.016, 10, 40)
    assert (s["seed"], s["link_gbps"]) == (7, 53.0)


def test_reference_metrics_are_none_without_the_reference_passes():
    s = summarize(RUN, None, 7, 53.0)
    assert s["baseline_throughput_tok_s"] is s["overhead_pct"] is None
    assert s["no_engram_throughput_tok_s"] is s["overhead_vs_no_engram_pct"] is None


def test_cache_hit_rate_is_none_when_every_row_is_in_hbm():
    step = StepRecord(index=0, kind="decode", start_s=0.0, end_s=0.001, tokens=1, seqs=1,
                      layers=[layer(1, 10, 10, 10, 0, 0, 0, 0, 0.0, 0.0, 0.0)])
    assert summarize(outcome(0.001, [step]), None, 0, 1.0)["cache_hit_rate"] is None


def test_the_schedulers_counts_reach_the_summary():
    counts = ServingCounts(kv_blocks=40, kv_used_mean=0.25, kv_used_peak=0.5, preemptions=3, recomputed_tokens=120)
    s = summarize(replace(RUN, serving=counts), None, 7, 53.0)
    keys = ("kv_blocks_total", "kv_utilisation_mean", "kv_utilisation_peak", "preemptions", "recomputed_tokens")
    assert tuple(s[key] for key in keys) == (40, 0.25, 0.5, 3, 120)
    assert all(summarize(RUN, None, 7, 53.0)[key] is None for key in keys), "an outcome built from records alone has none"


def test_a_mixed_step_reads_back_and_reaches_steps_csv():
    mixed = StepRecord(index=0, kind="mixed", start_s=0.0, end_s=0.002, tokens=9, seqs=3)
    log = StepLog([mixed, *STEPS[1:]])
    assert [record.kind for record in log] == ["mixed", "decode"]
    rows = list(csv.DictReader(io.StringIO("".join(steps_csv(outcome(0.016, list(log)), None)))))
    assert [r["kind"] for r in rows] == ["mixed", "decode"]


def test_per_layer_and_steps_csv_carry_the_split_counts():
    first, third = per_layer(STEPS)
    assert first["layer"] == 1 and third["layer"] == 3
    assert first["stall_ms_total"] == pytest.approx(2.5) and first["steps_stalled"] == 2
    assert first["fetch_ms_total"] == pytest.approx(5.0) and first["fetch_ms_max"] == pytest.approx(3.0)
    assert (first["rows_hbm"], first["rows_fetched"], first["cache_hits"], first["rows_speculative"]) == (90, 45, 40, 15)
    rows = list(csv.DictReader(io.StringIO("".join(steps_csv(RUN, ALL_HBM)))))
    assert STEP_COLUMNS[-5:] == ("cache_hits", "rows_missed", "rows_speculative", "rows_staged", "rows_waiting")
    assert [(int(r["rows_staged"]), int(r["rows_waiting"])) for r in rows] == [(0, 0), (0, 0)]
    assert [int(r["rows_hbm"]) for r in rows] == [120, 20] and [int(r["rows_fetched"]) for r in rows] == [35, 40]
    assert [(int(r["cache_hits"]), int(r["rows_missed"]), int(r["rows_speculative"])) for r in rows] == [(30, 30, 5), (10, 30, 10)]
    assert [r["baseline_latency_ms"] for r in rows] == ["", ""], "the all-HBM pass here has no steps"


def test_timeline_lanes_come_from_span_kinds():
    """Each span on its kind's lane, in timeline order (by start), not the order recorded."""
    events = json.loads(timeline_json(SPANS, "t"))["traceEvents"]
    lanes = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert [(e["name"], lanes[e["tid"]]) for e in events if e["ph"] == "X"] == \
        [("blocks 0-3", "compute"), ("h2d L1", "copy"), ("stall L1", "stall")]


# ---- (c) one declaration reaches every output ------------------------------------------------------
@pytest.fixture
def registry():
    """The registry, restored after the test."""
    saved = dict(METRICS)
    yield METRICS
    METRICS.clear()
    METRICS.update(saved)


def test_a_registered_metric_reaches_summary_diff_report_and_readme(registry):
    def dma_ms(c: MetricContext) -> float:
        return c.outcome.spans.busy_s[SpanKind.H2D] * 1e3

    register(Metric(name="h2d_ms_total", unit="ms", meaning="time spent in DMA copies", compute=dma_ms,
                    label="DMA time", digits=1, group="link traffic"))
    a = summarize(RUN, None, 7, 53.0)
    b = summarize(outcome(0.016, STEPS, [*SPANS, Span(kind=SpanKind.H2D, start_s=0.004, end_s=0.005, step=1)]), None, 7, 53.0)
    assert a["h2d_ms_total"] == pytest.approx(3.0) and b["h2d_ms_total"] == pytest.approx(4.0)
    rows = {row.key: row for row in metric_rows({"summary": a | {"extra": 1}}, {"summary": b})}
    assert rows["summary.h2d_ms_total"].unit == "ms" and rows["summary.h2d_ms_total"].pct == pytest.approx(100 / 3)
    keys = list(rows)
    assert keys.index("summary.h2d_ms_total") < keys.index("summary.extra") == len(keys) - 1, "unknown keys come last"
    assert "| `summary.h2d_ms_total` | ms | time spent in DMA copies |" in readme_table()
    console = Console(file=io.StringIO(), width=120)
    document = {"summary": a, "backend": "sim", "scenario": {"name": "t"}, "simulation": {"events": 0}, "per_layer": per_layer(STEPS)}
    print_report(console, SimpleNamespace(document=document), 0.1)
    assert re.search(r"DMA time +│ 3\.0 ms", console.file.getvalue())


def test_declarations_are_checked(registry):
    with pytest.raises(ValueError, match="already registered"):
        register(METRICS["seed"])
    with pytest.raises(ValueError, match="group"):
        Metric(name="x", unit="", meaning="x", compute=lambda c: 0, label="x", group="nowhere")
    with pytest.raises(ValueError, match="README"):
        Metric(name="x", unit="a|b", meaning="x", compute=lambda c: 0, label="x")
    assert all(m.group in GROUPS for m in METRICS.values() if m.group is not None)
    assert validated_metrics() == [m for m in METRICS.values() if m.validated]

"""Validation: the shipped validation scenarios are valid and vary what they claim to; `engramsim
validate` repeats each real run, counts the simulation's error against the median, and writes the
documented JSON and a side-by-side trace; bad flags, outputs and profiles and a missing GPU are one
line and exit 2, before any run."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from engramsim import validate
from engramsim.backends.calibration.machine import machine_host
from engramsim.cli import main
from engramsim.metrics import METRICS as REGISTRY
from engramsim.records import LANES, RunOutcome, Span, SpanKind, StepLog, Timeline
from engramsim.runner import simulate_run
from engramsim.scenario_io import load_scenario
from engramsim.validate import (
    HEADLINE,
    METRICS,
    Spread,
    default_scenarios,
    error_pct,
    median_repetition,
    overrides,
    stage_totals_ms,
)

VALIDATION = Path(__file__).parent.parent / "scenarios" / "validation"

TINY = """
name: tiny-validation
model:
  backbone: {layers: 3, hidden: 256, intermediate: 688, attention: {heads: 4, kv_heads: 2, head_dim: 64}, vocab: 4096, dtype: fp32}
  engram: {layers: [1], rows_per_head: 20000, head_dim: 32, dtype: fp32, hc_mult: 1}
hardware: h100-pcie
workload:
  trace: english-prose
  requests: 4
  prompt_len: {dist: uniform, low: 16, high: 48}
  output_len: {dist: uniform, low: 4, high: 8}
  batching: {max_num_seqs: 4, max_num_batched_tokens: 256}
strategies: {prefetch: layer-ahead, transport: staged}
run: {seed: 2}
"""

# Round numbers of the size a CPU calibration gives; calibrated here, so no host warning.
PROFILE: dict[str, Any] = {
    "name": "tiny-cpu",
    "gpu": {"name": "cpu", "bf16_tflops": 0.1, "hbm_gbps": 10.0, "hbm_gib": 8.0, "compute_efficiency": 1.0,
            "memory_efficiency": 1.0, "layer_overhead_us": 100.0, "copy_engines": 1},
    "link": {"name": "memcpy", "h2d_gbps": 10.0, "d2h_gbps": 10.0, "dma_latency_us": 1.0, "zero_copy_gbps": 4.0,
             "zero_copy_latency_us": 5.0, "transaction_bytes": 64},
    "host": {"name": "cpu", "dram_gbps": 10.0, "dram_gib": 8.0, "gather_rows_per_s": 1.5e7, "gather_threads": 1,
             "gather_overhead_us": 10.0},
    "step_overhead_us": 200.0,
    "provenance": {"kind": "calibrated", "source": "test", "host": None},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scenario") / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def profile(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("profile") / "tiny-cpu.yaml"
    data = {**PROFILE, "provenance": {**PROFILE["provenance"], "host": machine_host()}}
    path.write_text(yaml.safe_dump(data))
    return path


# ---- the shipped validation set ------------------------------------------------------------------
def test_at_least_eight_validation_scenarios_and_all_pass_check(capsys):
    paths = default_scenarios()
    assert len(paths) >= 8
    assert [p.name for p in paths] == sorted(p.name for p in VALIDATION.glob("*.yaml"))
    for path in paths:
        assert main(["check", str(path)]) == 0, path
        assert "OK" in capsys.readouterr().out


def test_validation_scenarios_vary_what_they_should():
    scenarios = [load_scenario(p) for p in default_scenarios()]

    def seen(f):
        return {f(s) for s in scenarios}

    assert len(seen(lambda s: s.workload.batching.max_num_seqs)) >= 3
    assert len(seen(lambda s: s.model.engram.rows_per_head[0])) >= 3
    assert len(seen(lambda s: tuple(s.model.engram.layers))) >= 3
    assert seen(lambda s: s.strategies.prefetch.name) >= {"on-demand", "layer-ahead"}
    assert seen(lambda s: s.strategies.transport.name) >= {"staged", "zero-copy"}
    assert seen(lambda s: s.strategies.scheduler.name) >= {"nano-vllm", "vllm"}
    assert seen(lambda s: "kv_blocks" in s.strategies.scheduler.params) == {False, True}, "one scenario preempts"
    assert seen(lambda s: s.model.backbone.moe is None) == {False, True}
    assert seen(lambda s: (s.model.backbone.attention.kind, s.model.backbone.hc_mult)) >= {("gqa", 1), ("mla", 4)}
    assert seen(lambda s: s.model.engram.max_ngram) >= {3, 4}
    for s in scenarios:  # CPU-sized, offline (the same steps real and simulated), no baseline passes
        assert s.model.backbone.layers <= 8 and s.model.backbone.hidden <= 1024 and s.model.backbone.dtype == "fp32"
        assert s.workload.arrival.kind == "offline" and s.run.max_steps is None


def test_overrides_put_the_scenario_on_the_profile(tmp_path):
    odd = tmp_path / "a profile: v1.yaml"
    scenario = load_scenario(VALIDATION / "v01-base.yaml", overrides(str(odd), "cpu"))
    assert scenario.hardware.profile == str(odd) and scenario.hardware.link is None
    assert scenario.run.backend == "cpu" and scenario.run.baseline is False


def test_validated_metrics_come_from_the_registry():
    assert METRICS == tuple(name for name, m in REGISTRY.items() if m.validated)
    assert {"step_latency_ms_mean", "step_latency_ms_p99", "throughput_tok_s", "engram_stall_ms_total"} == set(METRICS)


def test_stage_totals_sum_span_seconds_by_kind_and_errors():
    spans = [
        Span(kind=SpanKind.BLOCKS, start_s=0.0, end_s=0.002, step=0, blocks=(0, 3)),
        Span(kind=SpanKind.BLOCKS, start_s=0.004, end_s=0.005, step=0, blocks=(4, 7)),
        Span(kind=SpanKind.STALL, start_s=0.002, end_s=0.003, step=0, layer=1),
        Span(kind=SpanKind.ZERO_COPY, start_s=0.001, end_s=0.0035, step=0, layer=1, bytes=4096),
    ]
    outcome = RunOutcome(steps=StepLog(), spans=Timeline(spans), events=0, link_busy_s=0.0025, makespan_s=0.005, output_tokens=0, prompt_tokens=0,
                         ttft_s=np.array([]), tpot_s=np.array([]))
    totals = stage_totals_ms(outcome)
    assert list(totals) == [kind.value for kind in SpanKind]
    assert totals["blocks"] == pytest.approx(3.0) and totals["stall"] == pytest.approx(1.0)
    assert totals["zero-copy"] == pytest.approx(2.5) and totals["host"] == totals["h2d"] == 0.0
    assert error_pct(110.0, 100.0) == pytest.approx(10.0)
    assert error_pct(1.0, 0.0) is None and error_pct(None, 1.0) is None


def test_spread_is_the_median_and_range_of_the_repetitions():
    odd = Spread((3.0, 1.0, 2.0))
    assert (odd.median, odd.low, odd.high, odd.spread_pct) == (2.0, 1.0, 3.0, 100.0)
    assert odd.as_dict() == {"values": [3.0, 1.0, 2.0], "median": 2.0, "min": 1.0, "max": 3.0, "spread_pct": 100.0}
    assert Spread((4.0, 1.0, 3.0, 2.0)).median == 2.5 and Spread((5.0,)).spread_pct == 0.0
    assert Spread((0.0, 0.0)).spread_pct is None
    assert median_repetition([3.0, 1.0, 2.0]) == 2
    assert median_repetition([4.0, 1.0, 3.0, 2.0]) == 3, "even count: the lower middle value (2.0, index 3)"
    assert median_repetition([7.0]) == 0


# ---- the command ----------------------------------------------------------------------------------
FACTORS = (1.5, 0.9, 1.1)  # the fake real runs: the simulated run slowed down by these; median 1.1 (the third), mean 1.17


def scaled(outcome: RunOutcome, factor: float) -> RunOutcome:
    """`outcome` with every time multiplied by `factor`."""
    steps = [replace(s, start_s=s.start_s * factor, end_s=s.end_s * factor,
                     layers=[replace(r, issue_s=r.issue_s * factor, ready_s=r.ready_s * factor, stall_s=r.stall_s * factor)
                             for r in s.layers]) for s in outcome.steps]
    spans = [replace(s, start_s=s.start_s * factor, end_s=s.end_s * factor) for s in outcome.spans]
    return RunOutcome(steps=StepLog(steps), spans=Timeline(spans), events=0, link_busy_s=outcome.link_busy_s * factor,
                      makespan_s=outcome.makespan_s * factor, output_tokens=outcome.output_tokens,
                      prompt_tokens=outcome.prompt_tokens, ttft_s=outcome.ttft_s * factor, tpot_s=outcome.tpot_s * factor)


@pytest.fixture
def fake_real(monkeypatch) -> list[int]:
    """Real runs replaced by the simulated run scaled by FACTORS; returns the repeats each call asked for."""
    calls: list[int] = []

    def measure(prepared, backend, repeats, progress_factory=None):
        calls.append(repeats)
        return [scaled(simulate_run(prepared), f) for f in FACTORS[:repeats]]

    monkeypatch.setattr(validate, "measure", measure)
    return calls


@pytest.fixture
def no_run(monkeypatch) -> None:
    """Any real run fails the test: for refusals that must come before any work."""
    def measure(*args, **kwargs):
        raise AssertionError("a real run started")

    monkeypatch.setattr(validate, "measure", measure)


def test_errors_are_against_the_median_of_the_repetitions(tiny, profile, tmp_path, fake_real):
    out = tmp_path / "validate.json"
    assert main(["validate", "--backend", "cpu", "--profile", str(profile), str(tiny), "--json", str(out), "--quiet"]) == 0
    assert fake_real == [3], "three repetitions by default"
    doc = json.loads(out.read_text())
    assert doc["repeats"] == 3
    (entry,) = doc["scenarios"]
    assert entry["repeats"] == 3 and entry["median_repetition"] == 2
    for key in METRICS:
        if entry["sim"][key] == 0:  # no stall simulated: no error to count
            continue
        power = -1 if key == "throughput_tok_s" else 1  # a slower run has the lower throughput
        values = [entry["sim"][key] * f ** power for f in FACTORS]
        real = entry["real"][key]
        assert real["values"] == pytest.approx(values)
        assert (real["median"], real["min"], real["max"]) == pytest.approx((values[2], min(values), max(values)))
        assert real["spread_pct"] == pytest.approx((max(values) - min(values)) / values[2] * 100)
        assert entry["error_pct"][key] == pytest.approx((1.1 ** -power - 1) * 100)
    blocks = entry["stages_ms"]["real"]["blocks"]
    assert blocks["values"] == pytest.approx([entry["stages_ms"]["sim"]["blocks"] * f for f in FACTORS])
    assert entry["stage_error_pct"]["blocks"] == pytest.approx((1 / 1.1 - 1) * 100)
    assert doc["median_abs_error_pct"] == doc["max_abs_error_pct"] == pytest.approx((1 - 1 / 1.1) * 100)


def test_the_timeline_shows_each_scenarios_median_real_run_beside_its_simulation(tiny, profile, tmp_path, fake_real, capsys):
    other = tmp_path / "other.yaml"
    other.write_text(TINY.replace("name: tiny-validation", "name: tiny-other"))
    trace = tmp_path / "compare.json"
    assert main(["validate", "--backend", "cpu", "--profile", str(profile), str(tiny), str(other), "--timeline", str(trace)]) == 0
    assert f"wrote {trace}" in " ".join(capsys.readouterr().out.split())
    events = json.loads(trace.read_text())["traceEvents"]
    processes = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert processes == {1: "tiny-validation real", 2: "tiny-validation sim", 3: "tiny-other real", 4: "tiny-other sim"}
    lanes = {pid: [e["args"]["name"] for e in events if e["name"] == "thread_name" and e["pid"] == pid] for pid in processes}
    assert all(names == list(LANES) for names in lanes.values())
    spans = {pid: [e for e in events if e["ph"] == "X" and e["pid"] == pid] for pid in processes}
    assert {e["pid"] for e in events} == set(processes)
    for real, sim in ((1, 2), (3, 4)):
        assert sim and [(e["name"], e["tid"]) for e in spans[real]] == [(e["name"], e["tid"]) for e in spans[sim]]
        assert [e["ts"] for e in spans[real]] == pytest.approx([e["ts"] * 1.1 for e in spans[sim]], abs=1e-2), \
            "the real process draws the median repetition"


def test_validate_runs_real_repetitions_and_writes_the_documented_json(tiny, profile, tmp_path, capsys):
    out, trace = tmp_path / "validate.json", tmp_path / "trace.json"
    assert main(["validate", "--backend", "cpu", "--profile", str(profile), str(tiny), str(tiny), "--repeats", "2",
                 "--json", str(out), "--timeline", str(trace), "--quiet"]) == 0
    assert "warning" not in capsys.readouterr().err, "calibrated on this host: no warning"
    doc = json.loads(out.read_text())
    assert {"scenarios", "median_abs_error_pct", "max_abs_error_pct"} <= set(doc) and doc["repeats"] == 2 and doc["complete"] is True
    assert len(doc["scenarios"]) == 2
    for entry in doc["scenarios"]:
        assert entry["name"] == "tiny-validation" and entry["median_repetition"] in (0, 1)
        assert set(entry["real"]) == set(entry["sim"]) == set(entry["error_pct"]) == set(METRICS)
        for key in ("step_latency_ms_mean", "throughput_tok_s"):
            real = entry["real"][key]
            assert len(real["values"]) == 2 and real["min"] <= real["median"] <= real["max"] and real["min"] > 0
            assert entry["sim"][key] > 0
        err = entry["error_pct"][HEADLINE]
        assert err == pytest.approx((entry["sim"][HEADLINE] / entry["real"][HEADLINE]["median"] - 1) * 100)
        assert entry["stages_ms"]["real"]["blocks"]["median"] > 0 and entry["stages_ms"]["sim"]["blocks"] > 0
    errors = sorted(abs(e["error_pct"][HEADLINE]) for e in doc["scenarios"])
    assert doc["max_abs_error_pct"] == pytest.approx(errors[-1])
    assert doc["median_abs_error_pct"] == pytest.approx(sum(errors) / 2)
    names = [e["args"]["name"] for e in json.loads(trace.read_text())["traceEvents"] if e["name"] == "process_name"]
    assert names == ["tiny-validation real", "tiny-validation sim"] * 2


def test_validate_keeps_the_scenarios_measured_before_one_that_fails(tiny, profile, tmp_path, monkeypatch):
    """--json is rewritten after every scenario (complete: false until the last), so a run cut short
    by a failure or a time limit keeps what it measured."""
    out = tmp_path / "validate.json"
    real = validate.validate_scenario
    calls = []

    def second_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(validate, "validate_scenario", second_fails)
    assert main(["validate", "--backend", "cpu", "--profile", str(profile), str(tiny), str(tiny), "--json", str(out), "--quiet"]) == 130
    doc = json.loads(out.read_text())
    assert doc["complete"] is False and len(doc["scenarios"]) == 1


def test_validate_warns_for_a_profile_calibrated_elsewhere(tiny, tmp_path, capsys):
    path = tmp_path / "elsewhere.yaml"
    path.write_text(yaml.safe_dump({**PROFILE, "provenance": {**PROFILE["provenance"], "host": "Some Other CPU x64 @ far"}}))
    assert main(["validate", "--backend", "cpu", "--profile", str(path), str(tiny), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "Some Other CPU" in err


def _fails(capsys, args: list[str], expect: str) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and expect in err, err


@pytest.mark.parametrize("content, expect", [
    ("gpu: [1, 2\n", "invalid YAML"),
    ("name: x\n", "missing required key"),
    (yaml.safe_dump({**PROFILE, "gpu": {**PROFILE["gpu"], "hbm_gbps": -1}}), "gpu.hbm_gbps"),
])
def test_corrupt_profile_is_one_line(tiny, tmp_path, capsys, content, expect):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    out = tmp_path / "v.json"
    _fails(capsys, ["validate", "--backend", "cpu", "--profile", str(path), str(tiny), "--json", str(out)], expect)
    assert not out.exists()


@pytest.mark.parametrize("repeats", ["0", "-2"])
def test_repeats_below_one_are_refused_in_one_line(tiny, profile, tmp_path, capsys, no_run, repeats):
    out = tmp_path / "v.json"
    _fails(capsys, ["validate", "--backend", "cpu", "--profile", str(profile), str(tiny), "--repeats", repeats, "--json", str(out)],
           f"--repeats: expected an integer >= 1, got {repeats}")
    assert not out.exists()


def test_a_timeline_that_cannot_be_written_is_refused_before_any_run(tiny, profile, tmp_path, capsys, no_run):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = tmp_path / "v.json"
    _fails(capsys, ["validate", "--backend", "cpu", "--profile", str(profile), str(tiny), "--json", str(out),
                    "--timeline", str(blocker / "trace.json")], "is not a folder")
    _fails(capsys, ["validate", "--backend", "cpu", "--profile", str(profile), str(tiny), "--json", str(out),
                    "--timeline", str(tmp_path / "." / "v.json")], "is also the --json file")
    _fails(capsys, ["validate", "--backend", "cpu", "--profile", str(profile), str(tiny), "--timeline", str(tiny)], "is also an input")
    assert not out.exists() and tiny.read_text() == TINY


def test_missing_profile_is_one_line(tiny, tmp_path, capsys):
    _fails(capsys, ["validate", "--backend", "cpu", "--profile", str(tmp_path / "nope.yaml"), str(tiny)], "no such hardware profile file")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_validate_on_cuda_without_a_gpu_is_one_line(tiny, profile, tmp_path, capsys):
    out = tmp_path / "v.json"
    _fails(capsys, ["validate", "--backend", "cuda", "--profile", str(profile), str(tiny), "--json", str(out)], "cuda")
    assert not out.exists()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_validate_on_cuda_writes_the_documented_json(tiny, profile, tmp_path):
    out = tmp_path / "validate.json"
    assert main(["validate", "--backend", "cuda", "--profile", str(profile), str(tiny), "--set", "model.backbone.dtype=bf16",
                 "--json", str(out), "--quiet"]) == 0
    doc = json.loads(out.read_text())
    assert doc["backend"] == "cuda" and len(doc["scenarios"]) == 1 and doc["max_abs_error_pct"] is not None

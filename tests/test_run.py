"""`engramsim run` end to end on the simulator: the CLI contract, determinism, invariants, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from engramsim.cli import main

SMALL = """
name: small
model:
  backbone: {layers: 8, hidden: 1024, intermediate: 2816, attention: {heads: 8, kv_heads: 2, head_dim: 128}, vocab: 32000}
  engram: {layers: [1, 5], rows_per_head: 500000, head_dim: 64, hc_mult: 1}
hardware: h100-pcie
workload:
  trace: english-prose
  requests: 12
  prompt_len: {dist: uniform, low: 16, high: 96}
  output_len: {dist: uniform, low: 4, high: 24}
  batching: {max_num_seqs: 8, max_num_batched_tokens: 512}
strategies: {prefetch: layer-ahead, transport: staged}
run: {seed: 3}
"""

REQUIRED = ("throughput_tok_s", "baseline_throughput_tok_s", "overhead_pct", "step_latency_ms_p50", "step_latency_ms_p99",
            "engram_stall_ms_total", "pcie_bytes", "rows_fetched", "seed")


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    return path


def run(scenario: Path, out: Path, *sets: str) -> dict:
    args = ["run", str(scenario), "--out", str(out), "--quiet"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    return json.loads((out / "results.json").read_text())


def test_writes_the_four_files_and_the_summary_contract(scenario, tmp_path):
    doc = run(scenario, tmp_path / "out")
    for name in ("results.json", "steps.csv", "timeline.json", "plot.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert all(key in doc["summary"] for key in REQUIRED)
    assert doc["summary"]["seed"] == 3 and doc["scenario"]["name"] == "small"
    assert doc["scenario"]["workload"]["requests"] == 12, "the resolved scenario is echoed"
    assert [layer["layer"] for layer in doc["per_layer"]] == [1, 5]
    trace = json.loads((tmp_path / "out" / "timeline.json").read_text())
    lanes = {e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {"compute", "gather", "copy"} <= lanes
    assert any(e["ph"] == "X" and e["name"].startswith("h2d") for e in trace["traceEvents"])
    assert (tmp_path / "out" / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_gives_byte_identical_results(scenario, tmp_path):
    run(scenario, tmp_path / "a")
    run(scenario, tmp_path / "b")
    assert (tmp_path / "a" / "results.json").read_bytes() == (tmp_path / "b" / "results.json").read_bytes()
    assert (tmp_path / "a" / "steps.csv").read_bytes() == (tmp_path / "b" / "steps.csv").read_bytes()
    other = run(scenario, tmp_path / "c", "run.seed=4")
    assert other["summary"]["seed"] == 4


def test_steps_csv_conserves_rows_and_matches_the_summary(scenario, tmp_path):
    doc = run(scenario, tmp_path / "out")
    rows = list(csv.DictReader((tmp_path / "out" / "steps.csv").open()))
    assert len(rows) == doc["summary"]["steps"]
    for r in rows:
        assert int(r["rows_hbm"]) + int(r["rows_fetched"]) == int(r["rows_unique"])
        assert int(r["rows_unique"]) <= int(r["references"])
        assert float(r["end_ms"]) >= float(r["start_ms"])
    assert sum(int(r["rows_fetched"]) for r in rows) == doc["summary"]["rows_fetched"]
    assert sum(int(r["bytes_fetched"]) for r in rows) == doc["summary"]["pcie_bytes"]
    starts = [float(r["start_ms"]) for r in rows]
    assert starts == sorted(starts), "the clock never goes back"


def test_all_hbm_placement_has_no_stall_and_no_pcie(scenario, tmp_path):
    doc = run(scenario, tmp_path / "out", "strategies.placement=all-hbm")
    s = doc["summary"]
    assert s["engram_stall_ms_total"] == 0 and s["pcie_bytes"] == 0 and s["rows_fetched"] == 0
    assert s["overhead_pct"] == pytest.approx(0.0, abs=1e-9)


def test_on_demand_stalls_more_than_layer_ahead(scenario, tmp_path):
    ahead = run(scenario, tmp_path / "a", "hardware.link=pcie-gen3-x16")
    demand = run(scenario, tmp_path / "b", "hardware.link=pcie-gen3-x16", "strategies.prefetch=on-demand")
    assert demand["summary"]["engram_stall_ms_total"] > ahead["summary"]["engram_stall_ms_total"]
    assert demand["summary"]["throughput_tok_s"] < ahead["summary"]["throughput_tok_s"]
    assert demand["summary"]["pcie_bytes"] == ahead["summary"]["pcie_bytes"]


def test_default_run_is_the_shipped_quickstart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--quiet", "--set", "workload.requests=4"]) == 0
    (folder,) = (tmp_path / "runs").iterdir()
    assert folder.name.startswith("quickstart-s0-") and (folder / "results.json").is_file()

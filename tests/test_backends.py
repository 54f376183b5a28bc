"""The real CPU backend end to end: same files and schema as the simulator, parity of steps and
plans, the invariants on a measured timeline, prefetch overlap, and fast refusals."""

from __future__ import annotations

import csv
import json
import resource
import time
from pathlib import Path

import pytest
import torch

from engramsim.backends.device import make_device
from engramsim.backends.memory import host_memory
from engramsim.cli import main
from engramsim.records import SpanKind
from engramsim.runner import run_real, simulate_run
from engramsim.scenario_io import load_scenario
from engramsim.session import prepare

TINY = """
name: tiny
model:
  backbone: {layers: 4, hidden: 256, intermediate: 688, attention: {heads: 4, kv_heads: 2, head_dim: 64}, vocab: 4096, dtype: fp32}
  engram: {layers: [1], rows_per_head: 200000, head_dim: 64, hc_mult: 2}
hardware: h100-pcie
workload:
  trace: english-prose
  requests: 6
  prompt_len: {dist: uniform, low: 32, high: 96}
  output_len: {dist: uniform, low: 4, high: 12}
  batching: {max_num_seqs: 4, max_num_batched_tokens: 512}
strategies: {prefetch: layer-ahead, transport: staged}
run: {seed: 1}
"""

FILES = ("results.json", "steps.csv", "timeline.json", "plot.png")
SAME_PER_STEP = ("step", "kind", "seqs", "tokens", "rows_unique", "references", "rows_hbm", "rows_fetched", "bytes_fetched")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scenario") / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory) -> dict[str, Path]:
    """The tiny scenario through the CLI, simulated and on the CPU backend (all three passes each)."""
    root = tmp_path_factory.mktemp("runs")
    for backend in ("sim", "cpu"):
        assert main(["run", str(tiny), "--backend", backend, "--out", str(root / backend), "--quiet"]) == 0
    return {"sim": root / "sim", "cpu": root / "cpu"}


def _rows(folder: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((folder / "steps.csv").open()))


def _spans(folder: Path) -> list[dict]:
    return [e for e in json.loads((folder / "timeline.json").read_text())["traceEvents"] if e["ph"] == "X"]


def _keys(value, prefix=""):
    """Every key path of a JSON document (list items merged)."""
    if isinstance(value, dict):
        return {k for key, v in value.items() for k in {prefix + key} | _keys(v, prefix + key + ".")}
    if isinstance(value, list):
        return set().union(*(_keys(v, prefix) for v in value)) if value else set()
    return set()


def test_cpu_run_writes_the_same_files_with_the_same_keys(runs, capsys):
    sim, cpu = (json.loads((runs[b] / "results.json").read_text()) for b in ("sim", "cpu"))
    for name in FILES:
        assert (runs["cpu"] / name).stat().st_size > 0
    assert cpu["backend"] == "cpu" and sim["backend"] == "sim"
    assert _keys(cpu) == _keys(sim)
    assert cpu["simulation"]["events"] == 0 and cpu["summary"]["makespan_s"] > 0
    assert cpu["summary"]["baseline_throughput_tok_s"] > 0 and cpu["summary"]["no_engram_throughput_tok_s"] > 0
    lanes = {e["args"]["name"] for e in json.loads((runs["cpu"] / "timeline.json").read_text())["traceEvents"]
             if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {"compute", "gather", "copy"} <= lanes
    assert (runs["cpu"] / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(["diff", str(runs["sim"] / "results.json"), str(runs["cpu"] / "results.json")]) == 0
    assert "sim vs cpu" in capsys.readouterr().out


def test_cpu_sees_the_simulators_steps_and_plans(runs):
    sim, cpu = _rows(runs["sim"]), _rows(runs["cpu"])
    assert len(cpu) == len(sim) > 0
    for s, c in zip(sim, cpu):
        assert {k: s[k] for k in SAME_PER_STEP} == {k: c[k] for k in SAME_PER_STEP}


def test_measured_timeline_conserves_rows_and_is_causal(runs):
    rows = _rows(runs["cpu"])
    for r in rows:
        assert int(r["rows_hbm"]) + int(r["rows_fetched"]) == int(r["rows_unique"])
        assert float(r["end_ms"]) > float(r["start_ms"])
    starts = [float(r["start_ms"]) for r in rows]
    ends = [float(r["end_ms"]) for r in rows]
    assert all(e <= s for e, s in zip(ends, starts[1:])), "steps run back to back, the clock never goes back"
    spans = _spans(runs["cpu"])
    fetch_end: dict[tuple[int, int], float] = {}
    for e in spans:
        if e["name"].split()[0] in ("gather", "h2d", "zero-copy"):
            key = (e["args"]["step"], e["args"]["layer"])
            fetch_end[key] = max(fetch_end.get(key, 0.0), e["ts"] + e["dur"])
    engram = [e for e in spans if e["name"].startswith("engram")]
    assert len(engram) == len(rows) and fetch_end
    for e in engram:
        key = (e["args"]["step"], e["args"]["layer"])
        assert e["ts"] >= fetch_end[key], f"engram L{key[1]} of step {key[0]} started before its rows arrived"


def _real(path: Path, *sets: str, **kwargs):
    scenario = load_scenario(path, ["run.baseline=false", *sets])
    return run_real(prepare(scenario, str(path)), "cpu", **kwargs)


# Gathers big enough to time: 1 KiB rows (fp32, head dim 256) out of a 470 MiB table, mostly prefill
# steps (~6k rows, ~1 ms each), and two blocks before the Engram layer to hide them behind.
GATHER_HEAVY = ("model.engram.layers=[2]", "model.engram.head_dim=256", "model.engram.dtype=fp32",
                "model.engram.rows_per_head=30000", "workload.requests=12", "workload.output_len={dist: fixed, value: 2}")


def test_layer_ahead_hides_the_gather_that_on_demand_exposes(tiny):
    demand = _real(tiny, *GATHER_HEAVY, "strategies.prefetch=on-demand")
    ahead = _real(tiny, *GATHER_HEAVY, "strategies.prefetch=layer-ahead")
    stall = {name: sum(r.stall_s for s in o.steps for r in s.layers) for name, o in (("demand", demand), ("ahead", ahead))}
    assert stall["demand"] > 0 and any(s.kind is SpanKind.STALL for s in demand.spans)
    waited = [r.stall_s > 0 for s in demand.steps for r in s.layers]
    assert sum(waited) >= 0.5 * len(waited), "on demand, fetches are waited for"
    assert stall["ahead"] <= stall["demand"]


def test_zero_copy_fp8_moe_and_rows_placed_in_hbm(tiny):
    """The other code paths: zero-copy transport, fp8 rows with scales, MoE blocks, rows read from HBM."""
    moe = ("model.backbone.moe={experts: 4, top_k: 2, shared_experts: 1, expert_intermediate: 128, dense_layers: 1}")
    outcome = _real(tiny, "strategies.transport=zero-copy", "model.engram.dtype=fp8", moe, "run.max_steps=4")
    assert len(outcome.steps) == 4
    assert {s.kind.lane for s in outcome.spans} >= {"compute", "zero-copy"}
    assert all(r.bytes_fetched == r.rows_fetched * 66 for s in outcome.steps for r in s.layers), "fp8: 64 values + 2 scales"
    hbm = _real(tiny, "strategies.placement=all-hbm", "run.max_steps=3")
    assert all(r.rows_fetched == 0 and r.rows_hbm == r.rows_unique for s in hbm.steps for r in s.layers)
    assert not any(s.kind.lane in ("gather", "copy", "zero-copy") for s in hbm.spans)


def test_real_and_simulated_passes_count_the_same_tokens(tiny):
    scenario = load_scenario(tiny, ["run.baseline=false", "run.max_steps=5"])
    prepared = prepare(scenario, str(tiny))
    real, sim = run_real(prepared, "cpu", engram=False), simulate_run(prepared, engram=False)
    assert [s.tokens for s in real.steps] == [s.tokens for s in sim.steps]
    assert real.output_tokens == sim.output_tokens and not any(s.layers for s in real.steps)
    assert torch.get_num_threads() >= 1  # the CPU backend restored torch's thread count


def _fails(capsys, args: list[str], *expect: str) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for text in expect:
        assert text in err, err
    return err


def test_tables_bigger_than_host_memory_are_refused_fast_without_allocating(tiny, tmp_path, capsys):
    _, available = host_memory()
    row_bytes, heads = 128, 16  # bf16 x 64, 2 orders x 8 heads
    rows_per_head = 2 * available // (heads * row_bytes)
    if rows_per_head * heads * row_bytes > 1000 * (1 << 30):
        pytest.skip("more host memory than the profile's DRAM: the profile's capacity check would refuse first")
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    _fails(capsys, ["run", str(tiny), "--backend", "cpu", "--out", str(tmp_path / "o"), "--set",
                    f"model.engram.rows_per_head={rows_per_head}"], "model.engram.rows_per_head", "needs", "GiB available")
    assert time.perf_counter() - start < 30
    assert not (tmp_path / "o").exists()
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert grown_kib < 1 << 20, f"the refusal allocated {grown_kib / 1024:.0f} MiB"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_one_line(tiny, tmp_path, capsys):
    _fails(capsys, ["run", str(tiny), "--backend", "cuda", "--out", str(tmp_path / "o")],
           "run.backend", "no CUDA GPU available (torch.cuda.is_available() is False)")
    assert not (tmp_path / "o").exists()


def test_real_run_on_a_profile_calibrated_elsewhere_warns_in_one_line(tiny, tmp_path, capsys):
    from engramsim.backends.calibration.profile import profile_yaml
    from engramsim.hardware.presets import load_profile

    preset = load_profile("h100-pcie")
    provenance = preset.provenance.model_copy(update={"kind": "calibrated", "source": "test",
                                                      "host": "AMD EPYC 9654 96-Core Processor x192 @ elsewhere"})
    profile = tmp_path / "elsewhere.yaml"
    profile.write_text(profile_yaml(preset.model_copy(update={"name": "elsewhere", "provenance": provenance})))
    sets = ["--set", f"hardware.profile={profile}", "--set", "run.max_steps=3", "--set", "run.baseline=false", "--quiet"]
    assert main(["run", str(tiny), "--backend", "cpu", "--out", str(tmp_path / "cpu"), *sets]) == 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("engramsim: warning: profile 'elsewhere'"), err
    assert "AMD EPYC 9654" in err and "engramsim calibrate" in err
    assert main(["run", str(tiny), "--backend", "sim", "--out", str(tmp_path / "sim"), *sets]) == 0
    assert capsys.readouterr().err == "", "the simulator prices with the profile on purpose: no warning"


def test_hw_reports_this_machine(capsys):
    assert main(["hw"]) == 0
    out = capsys.readouterr().out
    assert "CPU:" in out and "host memory:" in out and f"torch: {torch.__version__}" in out
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in out
    assert main(["hw", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"cpu", "host_memory", "torch", "gpus", "nvml"} <= info.keys()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 3, 40])
def test_cpu_linear_layout_computes_x_times_w(dtype, rows):
    """The CPU stand-in's GEMM (weights prepacked once in the backend's layout) is x @ w."""
    linear = make_device("cpu", "test").linear()
    gen = torch.Generator().manual_seed(rows)
    w = torch.randn(64, 96, generator=gen).to(dtype)
    x = torch.randn(rows, 64, generator=gen).to(dtype)
    got = linear.apply(x, linear.pack(w))
    assert got.shape == (rows, 96) and got.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 0.1
    torch.testing.assert_close(got.float(), (x.float() @ w.float()), atol=tol, rtol=tol)

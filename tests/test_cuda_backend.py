"""The CUDA backend on a real GPU: the simulator's files and plans, the invariants on the
event-timed timeline, zero-copy really reading host memory, NVML counters. Skipped without a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_backends import SAME_PER_STEP, TINY, _keys, _rows

from engramsim.cli import main
from engramsim.runner import run_real
from engramsim.scenario_io import load_scenario
from engramsim.session import prepare

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scenario") / "tiny.yaml"
    path.write_text(TINY.replace("dtype: fp32", "dtype: bf16"))
    return path


def _run(tiny: Path, out: Path, backend: str, *sets: str) -> dict:
    args = ["run", str(tiny), "--backend", backend, "--out", str(out), "--quiet"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("transport", ["staged", "zero-copy"])
def test_cuda_run_matches_the_simulators_files_and_plans(tiny, tmp_path, transport):
    sim = _run(tiny, tmp_path / "sim", "sim", f"strategies.transport={transport}")
    cuda = _run(tiny, tmp_path / "cuda", "cuda", f"strategies.transport={transport}")
    assert cuda["backend"] == "cuda"
    assert _keys(cuda) - _keys(sim) == _keys(cuda["nvml"], "nvml.") | {"nvml"}, "same schema plus the nvml object"
    for s, c in zip(_rows(tmp_path / "sim"), _rows(tmp_path / "cuda"), strict=True):
        assert {k: s[k] for k in SAME_PER_STEP} == {k: c[k] for k in SAME_PER_STEP}
        assert int(c["rows_hbm"]) + int(c["rows_fetched"]) == int(c["rows_unique"])
    events = json.loads((tmp_path / "cuda" / "timeline.json").read_text())["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    fetch_end: dict[tuple[int, int], float] = {}
    for e in spans:
        if e["name"].split()[0] in ("h2d", "zero-copy"):  # the GPU-side stage that lands the rows
            key = (e["args"]["step"], e["args"]["layer"])
            fetch_end[key] = max(fetch_end.get(key, 0.0), e["ts"] + e["dur"])
    for e in spans:
        if e["name"].startswith("engram"):
            assert e["ts"] >= fetch_end[(e["args"]["step"], e["args"]["layer"])] - 1.0  # event resolution ~0.5 us
    if cuda["nvml"]["samples"]:
        assert any(e["ph"] == "C" for e in events)
    assert main(["diff", str(tmp_path / "sim" / "results.json"), str(tmp_path / "cuda" / "results.json")]) == 0


def test_zero_copy_view_reads_the_host_table(tiny):
    from engramsim.backends.executor import RealSession

    scenario = load_scenario(tiny, ["run.baseline=false", "strategies.transport=zero-copy"])
    with RealSession(prepare(scenario, str(tiny)), "cuda") as session:
        mem = next(iter(session.layers.values()))
        assert mem.zero_copy.is_cuda and mem.zero_copy.data_ptr() == mem.table.data_ptr() and mem.table.is_pinned()
        rows = torch.randint(0, mem.table.shape[0], (4096,))
        assert torch.equal(mem.zero_copy.index_select(0, rows.cuda()).cpu(), mem.table.index_select(0, rows))


def test_layer_ahead_hides_what_on_demand_exposes_on_the_gpu(tiny):
    def stall(prefetch: str) -> float:
        scenario = load_scenario(tiny, ["run.baseline=false", f"strategies.prefetch={prefetch}"])
        outcome = run_real(prepare(scenario, str(tiny)), "cuda")
        return sum(r.stall_s for s in outcome.steps for r in s.layers)

    demand, ahead = stall("on-demand"), stall("layer-ahead")
    assert demand > 0 and ahead <= demand

"""The CUDA backend on a real GPU: the simulator's files and plans, the invariants on the
event-timed timeline, zero-copy really reading host memory, NVML counters. Skipped without a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_backends import (
    BACKBONES,
    GQA,
    MLA_MHC_MOE_CHUNKED,
    SAME_PER_STEP,
    STEPS,
    TINY,
    _keys,
    _rows,
    make_standin,
    reference_attention,
    standin_step,
)

from engramsim.cli import main
from engramsim.runner import run_real, simulate_run
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
        assert mem.zero_copy.dtype == torch.int64, "8-byte words, not 2-byte bf16 elements"
        rows = torch.randint(0, mem.table.shape[0], (4096,))
        got = mem.zero_copy.index_select(0, rows.cuda()).cpu()
        assert torch.equal(got.view(mem.table.dtype), mem.table.index_select(0, rows))


def test_index_uploads_do_not_block_the_host():
    """While the stream is busy, `to_index` returns at once: the copy waits its turn on the GPU."""
    from engramsim.backends.device import to_index

    values = torch.arange(100_000).numpy()
    torch.cuda.synchronize()
    torch.cuda._sleep(500_000_000)  # ~0.25 s of GPU time on the current stream
    index = to_index(values, torch.device("cuda"))
    assert not torch.cuda.current_stream().query(), "the host waited for the GPU"
    assert torch.equal(index.cpu(), torch.arange(100_000))


def test_layer_ahead_hides_what_on_demand_exposes_on_the_gpu(tiny):
    def stall(prefetch: str) -> float:
        scenario = load_scenario(tiny, ["run.baseline=false", f"strategies.prefetch={prefetch}"])
        outcome = run_real(prepare(scenario, str(tiny)), "cuda")
        return sum(r.stall_s for s in outcome.steps for r in s.layers)

    demand, ahead = stall("on-demand"), stall("layer-ahead")
    assert demand > 0 and ahead <= demand


@pytest.mark.parametrize("step_name", list(STEPS))
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_standin_attention_on_the_gpu_equals_textbook_attention(backbone, step_name):
    """The CUDA groups (up to 8 SDPA calls per kind) and kernels compute what the CPU's do."""
    si = make_standin(BACKBONES[backbone], device="cuda")
    step = standin_step(*STEPS[step_name])
    layout = si.layout(step, max_groups=8)
    x = torch.randn(step.compute_tokens, 128, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    got = si._attention(x, si.blocks[0], layout)
    want = reference_attention(si, x, si.blocks[0], step, layout.cache_rows.cpu().numpy())
    torch.testing.assert_close(got[: step.num_tokens], want[: step.num_tokens], atol=1e-3, rtol=1e-3)  # TF32 matmuls


def test_experts_on_the_gpu_grouped_or_one_by_one_compute_the_same():
    si = make_standin({**GQA, "moe": {"experts": 8, "top_k": 2, "shared_experts": 1, "expert_intermediate": 64, "dense_layers": 0}},
                      device="cuda", dtype=torch.bfloat16)
    w = si.blocks[0]
    x = torch.randn(37, 128, device="cuda", dtype=torch.bfloat16)
    counts = torch.tensor([5, 0, 9, 3, 0, 12, 4, 4], device="cuda")
    looped = si._experts_looped(x, counts, w)
    if si.grouped:
        torch.testing.assert_close(si._experts_grouped(x, counts, w), looped, atol=0.05, rtol=0.05)
    assert torch.isfinite(si._moe(x, w)).all()


def test_an_mla_mhc_moe_scenario_runs_on_the_gpu_as_simulated(tiny):
    prepared = prepare(load_scenario(tiny, MLA_MHC_MOE_CHUNKED), str(tiny))
    real, sim = run_real(prepared, "cuda"), simulate_run(prepared)
    assert [(s.kind, s.tokens, s.seqs) for s in real.steps] == [(s.kind, s.tokens, s.seqs) for s in sim.steps]
    assert {"mixed", "decode"} <= {s.kind for s in real.steps}

"""The real CPU backend end to end: same files and schema as the simulator, parity of steps and
plans, the invariants on a measured timeline, prefetch overlap, and fast refusals."""

from __future__ import annotations

import csv
import json
import math
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

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
    assert {"cpu", "host_memory", "torch", "gpus", "nvml", "numa_nodes"} <= info.keys()


def test_hw_reads_numa_nodes_and_their_cpus_from_sysfs(tmp_path):
    from engramsim.commands.hw import cpu_count, numa_nodes

    assert (cpu_count("0-3,8-11\n"), cpu_count("5"), cpu_count("")) == (8, 1, 0)
    for node, cpus in ((0, "0-55,112-167"), (1, "56-111,168-223"), (10, "")):
        (tmp_path / f"node{node}").mkdir()
        (tmp_path / f"node{node}" / "cpulist").write_text(cpus + "\n")
    (tmp_path / "node2").mkdir()  # no cpulist: skipped
    assert numa_nodes(tmp_path) == [{"node": 0, "cpus": 112}, {"node": 1, "cpus": 112}, {"node": 10, "cpus": 0}]
    assert numa_nodes(tmp_path / "absent") == []


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


# ---- the stand-in blocks: the kernel inventory of engramsim/kernels.py, run for real -----------------------
GQA: dict[str, Any] = {"layers": 2, "hidden": 128, "intermediate": 256, "vocab": 512, "dtype": "fp32",
       "attention": {"heads": 4, "kv_heads": 2, "head_dim": 32}}
MLA = {**GQA, "attention": {"kind": "mla", "heads": 4, "head_dim": 32, "kv_lora_rank": 64, "rope_head_dim": 16}}
MLA_MHC = {**GQA, "hc_mult": 4, "attention": {**MLA["attention"], "q_lora_rank": 48}}
BACKBONES = {"gqa": GQA, "mla": MLA, "mla-q-latent-mhc": MLA_MHC}
STEPS = {  # (new tokens, context after the step, graph padding, kind)
    "mixed": ([1, 1, 5, 3, 1], [7, 12, 5, 20, 3], 3, "mixed"),  # decodes, a whole prompt, a chunk with 17 cached positions
    "prefill": ([4, 6], [4, 6], 0, "prefill"),
    "decode-padded": ([1, 1, 1], [9, 4, 30], 5, "decode"),
}


def standin_step(new: list[int], ctx: list[int], pad: int = 0, kind: str = "mixed"):
    from engramsim.steps import Step

    n = np.array(new, dtype=np.int64)
    return Step(0, kind, np.arange(n.size, dtype=np.int64), n, np.array(ctx, dtype=np.int64),  # type: ignore[arg-type]
                np.zeros(int(n.sum()), dtype=np.int64), pad=pad)


def make_standin(cfg: dict, linear=None, device: str = "cpu", dtype=torch.float32):
    from engramsim.backends.device import PLAIN
    from engramsim.backends.standin import Limits, StandIn
    from engramsim.scenario import Backbone

    return StandIn(Backbone.model_validate(cfg), Limits(tokens=64, seqs=8, context=40), torch.device(device), dtype,
                   torch.Generator(device).manual_seed(0), linear or PLAIN)


def reference_attention(si, x: torch.Tensor, w: dict, step, cache_rows: np.ndarray) -> torch.Tensor:
    """Attention sequence by sequence, the textbook way, over the KV buffer the stand-in wrote: each
    of a sequence's n new queries sees its c - n cached keys and the new ones up to itself; MLA
    always up-projects the latent (what the absorbed form must equal)."""
    att = si.cfg.attention
    heads, hd = att.heads, att.head_dim
    out = x.new_zeros(step.compute_tokens, heads * hd)
    first = np.cumsum(step.new_tokens) - step.new_tokens
    for s, (n, c) in enumerate(zip(step.new_tokens.tolist(), step.context_lens.tolist())):
        rows = slice(first[s], first[s] + n)
        slot = cache_rows[first[s]] // si.capacity
        if att.kind == "gqa":
            q = si.mm(x[rows], w["qkv"])[:, : heads * hd].view(n, heads, hd)
            kv = si.kv[slot, :c].view(c, 2, att.kv_heads, hd).repeat_interleave(heads // att.kv_heads, dim=2)
            k, v = kv[:, 0], kv[:, 1]
        else:
            rank, rope = att.kv_lora_rank, att.rope_head_dim
            q = (si.mm(x[rows], w["q"]) if "q" in w else si.mm(F.rms_norm(si.mm(x[rows], w["q_a"]), (att.q_lora_rank,)), w["q_b"]))
            q = q.view(n, heads, hd + rope)
            latent = si.kv[slot, :c]
            up = (latent[:, :rank] @ w["kv_b"].reshape(rank, -1)).view(c, heads, 2, hd)
            k, v = torch.cat([up[:, :, 0], latent[:, None, rank:].expand(-1, heads, -1)], dim=-1), up[:, :, 1]
        scores = torch.einsum("nhd,chd->hnc", q, k) / math.sqrt(q.shape[-1])
        seen = torch.arange(c, device=x.device)[None, :] <= c - n + torch.arange(n, device=x.device)[:, None]
        out[rows] = torch.einsum("hnc,chd->nhd", scores.masked_fill(~seen, -math.inf).softmax(-1), v).reshape(n, -1)
    return si.mm(out, w["o"])


@pytest.mark.parametrize("step_name", list(STEPS))
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_standin_attention_equals_textbook_attention_over_its_kv_cache(backbone, step_name):
    """Guards: a decode reading the wrong slot or positions, a chunk not seeing its cached context, a
    causal mask off by the cached length, MLA's absorbed form not equal to the up-projected one."""
    si = make_standin(BACKBONES[backbone])
    step = standin_step(*STEPS[step_name])
    layout = si.layout(step, max_groups=2)
    x = torch.randn(step.compute_tokens, 128, generator=torch.Generator().manual_seed(1))
    before = si.kv.clone()
    got = si._attention(x, si.blocks[0], layout)
    written = np.flatnonzero((si.kv != before).flatten(0, 1).any(dim=-1).numpy())
    assert sorted(written) == sorted(layout.cache_rows.tolist()), "each fed token's entry written, nothing else (no pad rows)"
    want = reference_attention(si, x, si.blocks[0], step, layout.cache_rows.numpy())
    torch.testing.assert_close(got[: step.num_tokens], want[: step.num_tokens], atol=2e-5, rtol=1e-4)
    assert got.shape == (step.compute_tokens, 128)


def recording_linear(calls: list):
    from engramsim.backends.device import Linear

    def apply(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        calls.append((x.shape[0], *w.shape))
        return x @ w

    return Linear(lambda w: w, apply)


def test_mla_mhc_block_runs_the_inventorys_gemms_over_every_padded_row():
    """Guards: a GEMM of the shared inventory skipped or mis-shaped, graph padding rows not computed."""
    from engramsim.backends.standin import block_shapes
    from engramsim.hbm import attention_params, mhc_params
    from engramsim.scenario import Backbone

    calls: list = []
    si = make_standin(MLA_MHC, recording_linear(calls))
    step = standin_step(*STEPS["mixed"])
    layout = si.layout(step, max_groups=1)
    h = si.input(layout)
    assert h.shape == (14, 4, 128) and torch.equal(h[11:], torch.zeros(3, 4, 128)), "11 tokens + 3 pad rows, 4 streams"
    assert layout.absorbed.tolist() == [10, 0, 1, 11, 12, 13], "MLA's absorbed products: decodes by context, then the pad rows"
    h = si.block(0, h, layout)
    assert h.shape == (14, 4, 128) and torch.isfinite(h).all()
    m, c, n = 14, 128, 4  # every GEMM over the 14 computed rows
    assert calls == [(m, n * c, n * n + 2 * n),  # mHC: mixing coefficients before attention
                     (m, c, 48), (m, 48, 4 * (32 + 16)), (m, c, 64 + 16),  # q latent, q, KV latent + rotary key
                     (m, 4 * 32, c),  # o
                     (m, n * c, n * n + 2 * n), (m, c, 2 * 256), (m, 256, c)]  # mHC before the MLP, SwiGLU
    assert si.head(h, layout).shape == (5,), "one token sampled per sequence"
    shapes = block_shapes(Backbone.model_validate(MLA_MHC), 0)
    counted = sum(math.prod(s) for name, s in shapes.items() if name not in ("gate_up", "down"))
    assert counted == attention_params(Backbone.model_validate(MLA_MHC)) + mhc_params(Backbone.model_validate(MLA_MHC))


def test_mixed_padded_step_runs_through_blocks_engram_layer_and_head():
    """A mixed step (decodes, a whole prompt, a prompt chunk) padded to a graph size, with mHC streams
    entering the Engram layer as its branches."""
    from engramsim.backends.engram_layer import LayerRows, engram_forward
    from engramsim.backends.engram_module import EngramModule
    from engramsim.scenario import Engram

    si = make_standin({**MLA_MHC, "moe": {"experts": 4, "top_k": 2, "shared_experts": 1, "expert_intermediate": 64,
                                          "dense_layers": 1}})
    step = standin_step(*STEPS["mixed"])
    layout = si.layout(step, max_groups=1)
    h = si.block(1, si.block(0, si.input(layout), layout), layout)
    engram = Engram.model_validate({"head_dim": 16, "dtype": "fp32", "hc_mult": 4, "heads": 2, "max_ngram": 3})
    module = EngramModule(128, engram.d_mem, hc_mult=4, max_ngram=3, kernel_size=4, generator=0)
    unique = np.arange(30, dtype=np.int64)
    rows = LayerRows(unique, np.arange(11 * 4).reshape(11, 4) % 30, torch.randn(30, 16), unique, None, np.empty(0, np.int64))
    out = engram_forward(module, rows, engram, h)
    assert out.shape == (14, 4, 128) and torch.isfinite(out).all()
    assert si.head(out, layout).shape == (5,)


def test_grouped_and_one_by_one_experts_compute_the_same():
    """The routed experts as two grouped GEMMs (the path where torch has them) equal the experts run
    one after another (the fallback), on the same routing."""
    si = make_standin({**GQA, "moe": {"experts": 8, "top_k": 2, "shared_experts": 1, "expert_intermediate": 64, "dense_layers": 0}})
    w = si.blocks[0]
    x = torch.randn(37, 128, generator=torch.Generator().manual_seed(2))
    counts = torch.tensor([5, 0, 9, 3, 0, 12, 4, 4])  # rows sorted by expert, two experts untouched
    looped = si._experts_looped(x, counts, w)
    assert looped.shape == x.shape
    if si.grouped:
        torch.testing.assert_close(si._experts_grouped(x, counts, w), looped, atol=1e-5, rtol=1e-5)
    moe = si._moe(F.rms_norm(x, (128,)), w)
    assert moe.shape == x.shape and torch.isfinite(moe).all()


def test_a_gather_span_starts_when_the_worker_could_take_the_fetch():
    """Guards: the executor's gather span leaving out the hand-over the simulator prices inside it
    (its stage totals then differ from the simulated ones whatever the profile)."""
    from engramsim.backends.fetch import Buffers, Fetch, FetchWorker
    from engramsim.plan import FetchPlan
    from engramsim.plugins.transport.staged import Staged
    from engramsim.records import SpanKind

    device = make_device("cpu", "test")
    table = torch.randn(10_000, 64)
    buffers = Buffers(table, torch.empty(4000, 64), torch.empty(4000, 64), None)
    fetches = []
    with FetchWorker(device, Staged(Staged.Params(), None), 256) as worker:  # the staged transport reads no setup
        for i in range(3):
            rows = np.sort(np.random.default_rng(i).choice(10_000, 4000, replace=False))
            plan = FetchPlan(step=i, layer=0, rows=rows, references=4000, placed_hbm=0, cache_hits=0, fetch=rows, misses=4000,
                             issue_step=i, issue_block=0)
            fetches.append(Fetch(plan, buffers, device.mark()))
            worker.submit(fetches[-1])
        for f in fetches:
            f.land(device)
        spans = [p.resolve(device) for p in worker.take_spans(2)]
    gathers = sorted((s for s in spans if s.kind is SpanKind.GATHER), key=lambda s: s.step)
    copies = sorted((s for s in spans if s.kind is SpanKind.H2D), key=lambda s: s.step)
    assert gathers[0].start_s == fetches[0].handed_s, "an idle worker's gather starts at the hand-over"
    for before, after, fetch in zip(copies, gathers[1:], fetches[1:]):
        assert after.start_s >= before.end_s and after.start_s >= fetch.handed_s, "a busy worker's next gather starts when it is free"
    assert all(c.start_s >= g.end_s for g, c in zip(gathers, copies))
    assert torch.equal(buffers.landing, table[torch.from_numpy(fetches[-1].plan.fetch)])


MLA_MHC_MOE_CHUNKED = [
    "run.baseline=false", "run.max_steps=14", "model.engram.rows_per_head=20000", "model.backbone.hc_mult=4",
    "model.backbone.attention={kind: mla, heads: 4, head_dim: 32, kv_lora_rank: 64, rope_head_dim: 16, q_lora_rank: 48}",
    "model.backbone.moe={experts: 4, top_k: 2, shared_experts: 1, expert_intermediate: 128, dense_layers: 1}",
    "strategies.scheduler=vllm", "workload.batching.max_num_batched_tokens=96",
]


def test_an_mla_mhc_moe_scenario_runs_mixed_padded_steps_and_allocates_its_footprint(tiny):
    """Through the executor: vLLM's chunked prefill (mixed steps) and graph-padded decodes on an MLA,
    mHC (4 streams around an Engram layer of 2 branches) and MoE backbone; the stand-in holds
    exactly the weights and KV buffer its footprint counts."""
    from engramsim.backends.executor import RealSession

    prepared = prepare(load_scenario(tiny, MLA_MHC_MOE_CHUNKED), str(tiny))
    with RealSession(prepared, "cpu") as session:
        held, standin = session.footprint(resident=False).device, session.standin
        assert held["stand-in weights"] == sum(w.nbytes for b in standin.blocks for w in b.values()) + standin.lm_head.nbytes
        assert held["KV buffer"] == standin.kv.nbytes
        real = session.run()
    sim = simulate_run(prepared)
    assert [(s.kind, s.tokens, s.seqs) for s in real.steps] == [(s.kind, s.tokens, s.seqs) for s in sim.steps]
    assert {"mixed", "decode"} <= {s.kind for s in real.steps}


def test_mhc_mixes_the_streams_around_a_sublayer():
    """x_in = sum_i pre_i x_i, y = f(x_in), x_i' = sum_j res_ij x_j + post_i y, with pre = sigmoid,
    post = 2 sigmoid and res the column-normalised row softmax of the mixing coefficients."""
    si = make_standin(MLA_MHC)
    mix = si.blocks[0]["mix_attention"]
    h = torch.randn(5, 4, 128, generator=torch.Generator().manual_seed(3))
    got = si._sublayer(h, mix, lambda x: 3 * x)
    coeff = F.rms_norm(h.reshape(5, 512), (512,)) @ mix
    pre, post = torch.sigmoid(coeff[:, :4]), 2 * torch.sigmoid(coeff[:, 4:8])
    res = coeff[:, 8:].reshape(5, 4, 4).softmax(-1)
    res = res / res.sum(-2, keepdim=True)
    y = 3 * torch.einsum("ti,tic->tc", pre, h)
    torch.testing.assert_close(got, torch.einsum("tij,tjc->tic", res, h) + post[:, :, None] * y[:, None], atol=1e-5, rtol=1e-5)
    assert torch.equal(si._sublayer(h[:, 0], None, lambda x: 3 * x), 4 * h[:, 0]), "one stream: the plain residual add"

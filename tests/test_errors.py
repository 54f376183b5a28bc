"""Every failure a user can cause ends as one stderr line naming the file and the field, exit 2,
with nothing left behind; Ctrl-C and SIGTERM end with 130 and 143 and leave nothing either."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import yaml

from engramsim.cli import main
from engramsim.traces.format import Trace, save_trace

TINY = {
    "name": "tiny",
    "model": {
        "backbone": {"layers": 4, "hidden": 256, "intermediate": 512, "attention": {"heads": 4, "kv_heads": 2, "head_dim": 64},
                     "vocab": 1000},
        "engram": {"layers": [1], "heads": 2, "head_dim": 16, "rows_per_head": 1009, "hc_mult": 1},
    },
    "hardware": "h100-sxm",
    "workload": {"trace": "cpython-docs", "requests": 4, "prompt_len": {"dist": "uniform", "low": 8, "high": 16},
                 "output_len": {"dist": "uniform", "low": 2, "high": 4}},
    "run": {"seed": 0},
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _scenario(d: Path, **sections) -> str:
    """tiny.yaml with `sections` replacing (not merging) its top-level sections."""
    return str(_write(d / "tiny.yaml", yaml.safe_dump(TINY | sections)))


def _run(d: Path, *sets: str, extra: tuple[str, ...] = ()) -> list[str]:
    args = ["run", _scenario(d), "--out", str(d / "out"), "--quiet", *extra]
    for item in sets:
        args += ["--set", item]
    return args


def _trace(d: Path, tokens: list[int], **meta) -> str:
    path = d / "trace.npz"
    save_trace(Trace.from_documents([np.array(tokens)], name="t", **meta), path)
    return str(path)


def _profile_with(d: Path, section: str, key: str, value) -> str:
    data = yaml.safe_load((Path(__file__).parents[1] / "hardware" / "profiles" / "h100-sxm.yaml").read_text())
    data[section][key] = value
    return str(_write(d / "gpu.yaml", yaml.safe_dump(data)))


def _spread(d: Path, key: str | None, dist: str = "uniform", **numbers) -> str:
    """h100-sxm.yaml with its uncertainty section replaced by one spread on `key` (none: no section)."""
    data = yaml.safe_load((Path(__file__).parents[1] / "hardware" / "profiles" / "h100-sxm.yaml").read_text())
    data.pop("uncertainty")
    if key is not None:
        data["uncertainty"] = {key: {"dist": dist, **numbers, "source": "a test"}}
    return str(_write(d / "gpu.yaml", yaml.safe_dump(data)))


class Case(NamedTuple):
    args: Callable[[Path], list[str]]
    expect: tuple[str, ...]  # substrings of the one error line: the file, the field, the problem


def scenario_text(text: str) -> Callable[[Path], list[str]]:
    return lambda d: ["run", str(_write(d / "s.yaml", text)), "--out", str(d / "out")]


CASES: dict[str, Case] = {
    # the scenario file
    "missing scenario file": Case(lambda d: ["run", str(d / "nope.yaml")], ("nope.yaml", "no such scenario file")),
    "scenario is a folder": Case(lambda d: ["run", str(d)], ("cannot read the scenario",)),
    "invalid YAML": Case(scenario_text("name: [x\n"), ("s.yaml", "invalid YAML", "line")),
    "empty scenario": Case(scenario_text(""), ("s.yaml", "empty")),
    "top level is a list": Case(scenario_text("- a\n- b\n"), ("s.yaml", "mapping")),
    "unknown key with a suggestion": Case(lambda d: _run(d, "workload.requets=4"), ("workload.requets", "did you mean 'requests'")),
    "wrong type": Case(lambda d: _run(d, "workload.requests=many"), ("workload.requests", "integer", "'many'")),
    "negative run seed": Case(lambda d: _run(d, "run.seed=-1"), ("run.seed", "greater than or equal to 0")),
    "negative hashing seed": Case(lambda d: _run(d, "model.engram.seed=-3"), ("model.engram.seed", "greater than or equal to 0")),
    "infinite Poisson rate": Case(lambda d: _run(d, "workload.arrival={kind: poisson, rate_per_s: .inf}"),
                                  ("workload.arrival.rate_per_s", "finite")),
    "NaN Poisson rate": Case(lambda d: _run(d, "workload.arrival={kind: poisson, rate_per_s: .nan}"),
                             ("workload.arrival.rate_per_s", "finite")),
    "name climbing out of runs/": Case(lambda d: _run(d, "name=../escape"), ("name", "one path component", "'../escape'")),
    "name with a path separator": Case(lambda d: _run(d, "name=a/b"), ("name", "one path component")),
    "Engram layer beyond the backbone": Case(lambda d: _run(d, "model.engram.layers=[9]"), ("model.engram.layers", "beyond")),
    "prompt longer than a batch": Case(lambda d: _run(d, "workload.batching.max_num_batched_tokens=8"),
                                       ("workload.prompt_len.high", "max_num_batched_tokens")),
    "a size past any machine": Case(lambda d: _run(d, "model.engram.rows_per_head=4611686018427387904"),
                                    ("model.engram.rows_per_head[0]", "less than or equal to")),
    "a profile rate too small to be real": Case(lambda d: _run(d, f"hardware.profile={_profile_with(d, 'gpu', 'bf16_tflops', 1e-300)}"),
                                                ("gpu.yaml", "gpu.bf16_tflops", "greater than or equal to 0.000000001")),
    "max_steps zero": Case(lambda d: _run(d, "run.max_steps=0"), ("run.max_steps", "greater than 0")),
    "unknown plugin": Case(lambda d: _run(d, "strategies.cache=lru2"), ("strategies.cache.name", "unknown cache plugin")),
    "bad plugin params": Case(lambda d: _run(d, "strategies.prefetch.params.lead_blocks=-1"),
                              ("strategies.prefetch.params.lead_blocks", "layer-ahead")),
    "infinite plugin param": Case(lambda d: _run(d, "strategies.prefetch.params.lead_blocks=.inf"),
                                  ("strategies.prefetch.params.lead_blocks",)),
    "unknown scheduler": Case(lambda d: _run(d, "strategies.scheduler=sglang"), ("strategies.scheduler.name", "unknown scheduler plugin")),
    "gpu_memory_utilization above 1": Case(lambda d: _run(d, "strategies.scheduler.params.gpu_memory_utilization=1.5"),
                                           ("strategies.scheduler.params.gpu_memory_utilization", "less than or equal to 1")),
    "gpu_memory_utilization zero": Case(lambda d: _run(d, "strategies.scheduler.params.gpu_memory_utilization=0"),
                                        ("strategies.scheduler.params.gpu_memory_utilization", "greater than 0")),
    "--set without a value": Case(lambda d: _run(d, "workload"), ("expected KEY.PATH=VALUE",)),
    "--set of an unknown key": Case(lambda d: _run(d, "workload.nope=1"), ("workload.nope", "unknown key")),
    # files the scenario names
    "unknown hardware profile": Case(lambda d: _run(d, "hardware.profile=h900"), ("tiny.yaml", "hardware", "h900")),
    "unknown link": Case(lambda d: _run(d, "hardware.link=pcie-gen9"), ("tiny.yaml", "hardware", "pcie-gen9")),
    "profile YAML with an unknown field": Case(lambda d: _run(d, f"hardware.profile={_profile_with(d, 'gpu', 'warp', 1)}"),
                                               ("gpu.yaml", "warp")),
    "profile YAML with an infinite bandwidth": Case(lambda d: _run(d, f"hardware.profile={_profile_with(d, 'gpu', 'hbm_gbps', float('inf'))}"),
                                                    ("gpu.yaml", "gpu.hbm_gbps", "finite")),
    "uncertainty on an integer field": Case(lambda d: _run(d, f"hardware.profile={_spread(d, 'gpu.sms', low=100, high=140)}"),
                                            ("gpu.yaml", "uncertainty.gpu.sms", "not a number a sample may vary")),
    "uncertainty on a capacity": Case(lambda d: _run(d, f"hardware.profile={_spread(d, 'gpu.hbm_gib', low=70, high=90)}"),
                                      ("gpu.yaml", "uncertainty.gpu.hbm_gib", "capacity")),
    "uncertainty on no section": Case(lambda d: _run(d, f"hardware.profile={_spread(d, 'gpux.sms', low=1, high=2)}"),
                                      ("gpu.yaml", "uncertainty.gpux.sms", "names no section")),
    "uncertainty low above high": Case(lambda d: _run(d, f"hardware.profile={_spread(d, 'gpu.compute_efficiency', low=0.9, high=0.7)}"),
                                       ("gpu.yaml", "uncertainty.gpu.compute_efficiency", "low 0.9 is above high 0.7")),
    "uncertainty range without the value": Case(
        lambda d: _run(d, f"hardware.profile={_spread(d, 'gpu.compute_efficiency', low=0.85, high=0.9)}"),
        ("gpu.yaml", "uncertainty.gpu.compute_efficiency", "does not hold the profile's value 0.8")),
    "uncertainty range past the field": Case(
        lambda d: _run(d, f"hardware.profile={_spread(d, 'gpu.compute_efficiency', low=0.5, high=1.5)}"),
        ("gpu.yaml", "uncertainty.gpu.compute_efficiency", "reaches past what the field accepts")),
    "uncertainty lognormal with a range": Case(
        lambda d: _run(d, f"hardware.profile={_spread(d, 'step_overhead_us', dist='lognormal', sigma=0.1, low=1.0)}"),
        ("gpu.yaml", "uncertainty.step_overhead_us", "takes sigma (no low or high)")),
    "CXL tier without its loads in flight": Case(lambda d: _run(d, "hardware.cxl={preset: cxl-cz120-x8, dram_latency_ns: null}"),
                                                 ("hardware.cxl", "give dram_latency_ns")),
    "node without a GPU": Case(lambda d: _run(d, "hardware.node={gpus: 0}"), ("hardware.node.gpus", "greater than or equal to 1")),
    "node on a profile without sockets": Case(lambda d: _run(d, "hardware.profile=gh200", "hardware.node={gpus: 2}"),
                                              ("hardware.node", "no socket section")),
    "node on a real backend": Case(lambda d: _run(d, "hardware.node={gpus: 2}", extra=("--backend", "cpu")),
                                   ("hardware.node", "real backends run one device")),
    "node with a copy per socket one socket cannot hold": Case(
        lambda d: _run(d, f"hardware.profile={_profile_with(d, 'host', 'dram_gib', 0.0001)}",
                       "hardware.node={gpus: 2, numa_nodes: 2, table_copies: per-numa}"),
        ("hardware.node.table_copies", "each socket holding its copy")),
    "run --samples below 0": Case(lambda d: _run(d, extra=("--samples", "-1")), ("--samples", "0 or more")),
    "run --samples on a real backend": Case(lambda d: _run(d, extra=("--samples", "2", "--backend", "cpu")),
                                            ("--samples", "bands are simulated")),
    "run --samples on a profile without spreads": Case(
        lambda d: _run(d, f"hardware.profile={_spread(d, None)}", extra=("--samples", "2")), ("--samples", "no uncertainty section")),
    "missing trace": Case(lambda d: _run(d, f"workload.trace={d / 'none.npz'}"), ("tiny.yaml", "workload.trace", "none.npz")),
    "corrupt trace": Case(lambda d: _run(d, f"workload.trace={_write(d / 'bad.npz', 'not a zip')}"), ("workload.trace", "bad.npz")),
    "trace outside the tokenizer's vocabulary": Case(lambda d: _run(d, f"workload.trace={_trace(d, [5, 7, 10_000_000] * 20)}"),
                                                      ("workload.trace", "token id 10000000", "outside")),
    "compressed trace outside the compressed vocabulary": Case(
        lambda d: _run(d, f"workload.trace={_trace(d, [5, 7, 120_000] * 20, tokenizer=None)}"), ("workload.trace", "token id 120000")),
    "trace shorter than a request": Case(lambda d: _run(d, f"workload.trace={_trace(d, [5, 7, 9, 11])}"),
                                         ("workload.trace", "4 tokens", "wrap_trace")),
    "missing tokenizer": Case(lambda d: _run(d, f"model.engram.tokenizer={d / 'tok.json'}"),
                              ("tiny.yaml", "model.engram.tokenizer", "tok.json")),
    # capacities
    "tables larger than host DRAM": Case(lambda d: _run(d, "model.engram.rows_per_head=20000000000"),
                                         ("tiny.yaml", "strategies.placement", "host DRAM")),
    "KV cache too small for one sequence": Case(lambda d: _run(d, "strategies.scheduler.params.gpu_memory_utilization=0.006"),
                                                ("tiny.yaml", "strategies.scheduler.params.gpu_memory_utilization", "0 KV blocks",
                                                 "longest sequence", "prompt + output - 1", "needs 1")),
    "more KV blocks than fit": Case(lambda d: _run(d, "strategies.scheduler.params.kv_blocks=1000000000000"),
                                    ("tiny.yaml", "strategies.scheduler.params.kv_blocks", "asked for", "holds")),
    "fewer KV blocks than one sequence needs": Case(lambda d: _run(d, "strategies.scheduler.params={kv_blocks: 1, block_size: 4}"),
                                                    ("tiny.yaml", "strategies.scheduler.params.kv_blocks", "1 KV blocks of 4 tokens",
                                                     "needs")),
    "tables larger than HBM": Case(lambda d: _run(d, "model.engram.rows_per_head=1000000000", "strategies.placement=all-hbm"),
                                   ("tiny.yaml", "HBM")),
    # the output folder
    "--out is a file": Case(lambda d: ["run", _scenario(d), "--out", str(_write(d / "f", ""))], ("f", "not a folder")),
    "--out under a file": Case(lambda d: ["run", _scenario(d), "--out", str(_write(d / "f", "") / "sub")], ("f/sub", "is not a folder")),
    "--out that cannot be created": Case(lambda d: ["run", _scenario(d), "--out", "/proc/engramsim-run"], ("/proc/engramsim-run",)),
    "--out exists": Case(lambda d: ["run", _scenario(d), "--out", str(d)], ("run folder exists", "--force")),
    "check: --out exists": Case(lambda d: ["check", _scenario(d), "--out", str(d)], ("run folder exists",)),
    "check: table too large": Case(lambda d: ["check", _scenario(d), "--set", "model.engram.rows_per_head=20000000000"],
                                   ("strategies.placement",)),
    "check: missing trace": Case(lambda d: ["check", _scenario(d), "--set", "workload.trace=nope"], ("workload.trace", "nope")),
    # other commands
    "hash --out is a folder": Case(lambda d: ["hash", "--text", _scenario(d), "--out", str(d)], ("is a folder",)),
    "hash --out under a file": Case(lambda d: ["hash", "--text", _scenario(d), "--out", str(_write(d / "f", "") / "x.npz")],
                                    ("f/x.npz", "not a folder")),
    "hash --out is its own input": Case(lambda d: ["hash", "--text", _scenario(d), "--out", str(d / "tiny.yaml")],
                                        ("tiny.yaml", "also an input")),
    "hash with a negative seed": Case(lambda d: ["hash", "--text", _scenario(d), "--seed", "-1", "--out", str(d / "x.npz")],
                                      ("--seed", "non-negative")),
    "YAML nested too deeply": Case(scenario_text("[" * 5000), ("s.yaml", "nested too deeply")),
    "hash --text missing": Case(lambda d: ["hash", "--text", str(d / "none.txt"), "--out", str(d / "x.npz")], ("none.txt",)),
    "schema --out is a folder": Case(lambda d: ["schema", "--out", str(d)], ("is a folder",)),
    "trace stats of an unknown trace": Case(lambda d: ["trace", "stats", "nope"], ("nope", "no shipped trace")),
    "validate with a missing profile": Case(lambda d: ["validate", "--backend", "cpu", "--profile", str(d / "p.yaml")], ("p.yaml",)),
    "calibrate --out is not YAML": Case(lambda d: ["calibrate", "--backend", "cpu", "--out", str(d)], ("--out", ".yaml")),
    "calibrate --out under a file": Case(lambda d: ["calibrate", "--backend", "cpu", "--out", str(_write(d / "f", "") / "p.yaml")],
                                         ("f/p.yaml", "not a folder")),
    "validate --json is a folder": Case(lambda d: ["validate", "--backend", "cpu", "--profile", str(d / "p.yaml"), "--json", str(d)],
                                        ("is a folder",)),
    "trace build --out under a file": Case(lambda d: ["trace", "build", "--text", _scenario(d), "--out", str(_write(d / "f", "") / "t.npz")],
                                           ("f/t.npz", "not a folder")),
    "diff of a missing file": Case(lambda d: ["diff", str(d / "a.json"), str(d / "b.json")], ("a.json", "cannot read")),
    "diff of a non-JSON file": Case(lambda d: ["diff", _scenario(d), _scenario(d)], ("tiny.yaml", "JSON")),
    "unknown flag": Case(lambda d: ["run", "--bogus"], ("unrecognized arguments: --bogus",)),
    # sweep and plot
    "sweep: a grid key that is not a field": Case(lambda d: _sweep(d, "--grid", "workload.requets=4,8"),
                                                  ("--grid", "workload.requets", "did you mean 'requests'")),
    "sweep: a zip key that is not a field": Case(lambda d: _sweep(d, "--zip", "run.sed=0,1"), ("--zip", "run.sed", "unknown key")),
    "sweep: nothing to sweep": Case(lambda d: _sweep(d), ("--grid", "nothing to sweep")),
    "sweep: zips of different lengths": Case(lambda d: _sweep(d, "--zip", "run.seed=0,1", "--zip", "workload.requests=4,5,6"),
                                             ("--zip", "workload.requests", "3 values", "same number")),
    "sweep: a key on the grid and in --set": Case(lambda d: _sweep(d, "--grid", "run.seed=0,1", "--set", "run.seed=2"),
                                                  ("--grid", "run.seed", "also set by --set")),
    "sweep: the backend cannot vary": Case(lambda d: _sweep(d, "--grid", "run.backend=sim,cpu"), ("--grid", "run.backend", "cannot vary")),
    "sweep: a bad scenario": Case(lambda d: _sweep(d, "--grid", "run.seed=0,1", "--set", "workload.requests=many"),
                                  ("tiny.yaml", "workload.requests", "'many'")),
    "sweep: --samples below 0": Case(lambda d: _sweep(d, "--grid", "run.seed=0,1", "--samples", "-1"), ("--samples", "0 or more")),
    "sweep: --workers 0": Case(lambda d: _sweep(d, "--grid", "run.seed=0,1", "--workers", "0"), ("--workers", "positive")),
    "sweep: --out is a file": Case(lambda d: _sweep(d, "--grid", "run.seed=0,1", out=_write(d / "f", "")), ("f", "not a folder")),
    "sweep: --out holds other files": Case(lambda d: _sweep(d, "--grid", "run.seed=0,1", out=d), ("holds no sweep.json",)),
    "sweep: --out holds another sweep": Case(lambda d: _sweep(d, "--grid", "run.seed=0,1", out=_other_sweep(d)),
                                             ("sw", "holds another sweep", "--grid")),
    "sweep: an unreachable Ray address": Case(lambda d: _sweep(d, "--grid", "run.seed=0,1", "--ray", f"127.0.0.1:{_free_port()}"),
                                              ("--ray",)),
    "plot: not a sweep or compare folder": Case(lambda d: ["plot", str(d), "--x", "run.seed", "--y", "tpot_ms_p50"],
                                                ("holds no sweep.json",)),
    "plot: an unfinished sweep": Case(lambda d: ["plot", str(_other_sweep(d)), "--x", "run.seed", "--y", "tpot_ms_p50"],
                                      ("no sweep.csv yet",)),
    "plot: --x not a key": Case(lambda d: ["plot", str(_fake_sweep(d)), "--x", "run.sed", "--y", "tpot_ms_p50"],
                                ("--x", "'run.sed'", "its keys: run.seed")),
    "plot: --y not a metric": Case(lambda d: ["plot", str(_fake_sweep(d)), "--x", "run.seed", "--y", "tpot"],
                                   ("--y", "'tpot'", "its metrics: tpot_ms_p50")),
}


def _sweep(d: Path, *flags: str, out: Path | None = None) -> list[str]:
    return ["sweep", _scenario(d), "--out", str(out or d / "sw"), "--workers", "1", *flags]


def _other_sweep(d: Path) -> Path:
    """A sweep folder of another definition, one point done."""
    (d / "sw" / "points").mkdir(parents=True)
    _write(d / "sw" / "sweep.json", json.dumps({"scenario": "tiny.yaml", "scenario_sha256": "0" * 64, "set": [], "zip": [],
                                                "grid": [{"key": "workload.requests", "values": ["4", "8"]}]}))
    _write(d / "sw" / "points" / "0123456789abcdef.json", "{}")
    return d / "sw"


def _fake_sweep(d: Path) -> Path:
    """A finished sweep's folder: sweep.json and sweep.csv of two points."""
    (d / "sw").mkdir()
    _write(d / "sw" / "sweep.json", json.dumps({"grid": [{"key": "run.seed", "values": ["0", "1"]}], "zip": []}))
    _write(d / "sw" / "sweep.csv", "point,id,run.seed,status,error,tpot_ms_p50\n1,a,0,ok,,1.5\n2,b,1,ok,,1.7\n")
    return d / "sw"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _snapshot(d: Path) -> set[Path]:
    return set(d.rglob("*"))


def assert_refused(case, tmp_path: Path, monkeypatch, capsys) -> None:
    """`case.args(tmp_path)` run from tmp_path: exit 2, one stderr line holding `case.expect`, nothing written."""
    monkeypatch.chdir(tmp_path)
    args = case.args(tmp_path)
    before = _snapshot(tmp_path)
    rc = main(args)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("engramsim"), err
    assert "Traceback" not in err
    for part in case.expect:
        assert part in err, f"{part!r} not in {err!r}"
    assert _snapshot(tmp_path) == before, "output left behind"


@pytest.mark.parametrize("name", list(CASES))
def test_one_line_exit_2_and_nothing_left_behind(name, tmp_path, monkeypatch, capsys):
    assert_refused(CASES[name], tmp_path, monkeypatch, capsys)


def test_the_table_covers_at_least_forty_cases():
    assert len(CASES) >= 40


def test_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["run", _scenario(tmp_path), "--backend", "cuda", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run.backend" in err and "no CUDA GPU" in err
    assert not (tmp_path / "o").exists()


def test_force_replaces_run_folders_only(tmp_path, monkeypatch, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    scenario = _write(inputs / "tiny.yaml", yaml.safe_dump(TINY))
    assert main(["run", str(scenario), "--out", str(inputs), "--force"]) == 2
    assert "holds no results.json" in capsys.readouterr().err
    monkeypatch.chdir(inputs)
    for here in (".", ".."):
        assert main(["run", str(scenario), "--out", here, "--force"]) == 2
        assert "current folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["inputs", "tiny.yaml"], "nothing replaced, nothing left"


def test_force_replaces_a_run_folder_whole(tmp_path):
    out = tmp_path / "out"
    assert main(_run(tmp_path)) == 0
    (out / "stale.txt").write_text("from an earlier configuration")
    assert main(_run(tmp_path, extra=("--force",))) == 0
    assert sorted(p.name for p in out.iterdir()) == ["plot.png", "results.json", "steps.csv", "timeline.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny.yaml"], "no staging folder left beside it"


def test_outputs_follow_the_umask(tmp_path):
    args = [sys.executable, "-m", "engramsim", *_run(tmp_path)]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, preexec_fn=lambda: os.umask(0o027))
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    assert out.stat().st_mode & 0o777 == 0o750
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o640}


def test_check_passes_what_run_accepts_and_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    assert main(["check", _scenario(tmp_path)]) == 0
    assert "OK" in capsys.readouterr().out
    assert _snapshot(tmp_path) - before == {tmp_path / "tiny.yaml"}


def test_version(capsys):
    from engramsim import __version__

    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


SLOW = """name: slow
model:
  engram: {layers: [1], heads: 8, head_dim: 80, rows_per_head: 646400, hc_mult: 1}
hardware: h100-sxm
workload: {requests: 2000, prompt_len: {dist: fixed, value: 32}, output_len: {dist: fixed, value: 64}, batching: {max_num_seqs: 4}}
"""


@pytest.mark.parametrize(("sig", "rc", "word"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated"),
                                                   (signal.SIGHUP, 129, "hung up")])
def test_a_signal_mid_run_leaves_nothing(sig, rc, word, tmp_path):
    scenario = _write(tmp_path / "slow.yaml", SLOW)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "engramsim", "run", str(scenario), "--out", str(out), "--quiet"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(p.name.endswith(".partial") for p in tmp_path.iterdir()):  # the run has claimed its folder
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(1.0)  # into preparing or simulating
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == rc, err
    assert err.strip().splitlines() == [f"engramsim: {word}"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slow.yaml"]


def test_a_signal_a_library_wrapped_still_ends_the_command_as_that_signal(monkeypatch, capsys):
    """A signal landing inside a library's callback (pydantic's serializer) comes back as the
    library's own error; the command still ends as the signal, in one line."""
    import engramsim.commands.hw as hw
    from engramsim.errors import Terminated, signalled

    def landed_in_a_callback(args):
        try:
            raise signalled(Terminated(signal.SIGHUP))
        except Terminated as exc:
            raise ValueError("Error calling function `_omit_unset`: Terminated: 1") from exc

    monkeypatch.setattr(hw, "run", landed_in_a_callback)
    assert main(["hw"]) == 129
    assert capsys.readouterr().err.strip().splitlines() == ["engramsim: hung up"]


def test_a_short_trace_runs_when_the_scenario_asks_to_wrap_it(tmp_path):
    trace = _trace(tmp_path, [5, 7, 9, 11])
    assert main(_run(tmp_path, f"workload.trace={trace}", "workload.wrap_trace=true")) == 0

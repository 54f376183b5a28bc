"""`engramsim sweep` and `engramsim plot`: the points are the grid's product (zips as one axis),
each point's file is what `engramsim run` writes as results.json, and the same sweep gives the same
bytes whatever the worker count, the executor (process pool or Ray) or the interruptions it had;
a failing point is listed and the rest run; a folder holding another sweep is refused untouched;
the tables hold the points' summaries; the plot draws medians and bands and picks its x scale."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import yaml

from engramsim.cli import main
from engramsim.pool import run_point
from engramsim.results import results_json
from engramsim.runner import results_of, run_passes, simulate_run
from engramsim.session import Workloads, prepare
from engramsim.sweep import parse_definition, point_id, resolve, run_sweep
from engramsim.sweep_plot import lines, use_log
from tests.test_errors import TINY

LINKS = "hardware.link=pcie-gen4-x16,pcie-gen5-x16"
ROWS = "model.engram.rows_per_head=1009,2003"


@pytest.fixture
def tiny(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def _sweep(scenario: Path, out: Path, *grids: str, zips: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> int:
    args = ["sweep", str(scenario), "--out", str(out), "--quiet", *extra]
    for g in grids:
        args += ["--grid", g]
    for z in zips:
        args += ["--zip", z]
    return main(args)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "sweep.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# ---- the points ------------------------------------------------------------------------------------
def test_points_are_the_grid_product_with_the_zips_as_one_axis(tiny):
    definition, points = resolve(parse_definition(tiny, [LINKS, ROWS], ["workload.requests=4,6,8", "run.seed=0,1,2"], []))
    assert len(points) == 2 * 2 * 3
    assert points[0].label == "hardware.link=pcie-gen4-x16, model.engram.rows_per_head=1009, workload.requests=4, run.seed=0"
    assert points[1].label == "hardware.link=pcie-gen4-x16, model.engram.rows_per_head=1009, workload.requests=6, run.seed=1"
    assert points[-1].label == "hardware.link=pcie-gen5-x16, model.engram.rows_per_head=2003, workload.requests=8, run.seed=2"
    assert [(p.scenario.workload.requests, p.scenario.run.seed) for p in points[:3]] == [(4, 0), (6, 1), (8, 2)]
    assert len({p.id for p in points}) == 12 and all(p.id == point_id(p.scenario) and len(p.id) == 16 for p in points)
    assert definition.scenario_sha256 and definition.keys == ["hardware.link", "model.engram.rows_per_head", "workload.requests", "run.seed"]
    values = parse_definition(tiny, ["strategies.cache=none,{name: lru, params: {rows: 64}}"], [], []).grid[0].values
    assert values == ("none", {"name": "lru", "params": {"rows": 64}})  # parsed as compare --vary parses them


def test_a_point_file_is_what_engramsim_run_writes(tiny, tmp_path):
    assert _sweep(tiny, tmp_path / "sw", LINKS, extra=("--workers", "1")) == 0
    (row,) = [r for r in _rows(tmp_path / "sw") if r["hardware.link"] == "pcie-gen5-x16"]
    assert main(["run", str(tiny), "--set", "hardware.link=pcie-gen5-x16", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert (tmp_path / "sw" / "points" / f"{row['id']}.json").read_bytes() == (tmp_path / "run" / "results.json").read_bytes()
    assert sorted(_files(tmp_path / "sw")) == sorted(["sweep.json", "sweep.csv", "sweep.parquet",
                                                      *(f"points/{r['id']}.json" for r in _rows(tmp_path / "sw"))])


def test_worker_counts_give_identical_bytes(tiny, tmp_path):
    outs = [tmp_path / f"w{n}" for n in (1, 3)]
    for n, out in zip((1, 3), outs, strict=True):
        assert _sweep(tiny, out, LINKS, ROWS, extra=("--workers", str(n))) == 0
    assert _files(outs[0]) == _files(outs[1])
    assert len([f for f in _files(outs[0]) if f.startswith("points/")]) == 4


def test_a_sweep_resumes_where_it_stopped_and_ends_byte_identical(tiny, tmp_path, capsys):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert _sweep(tiny, whole, LINKS, ROWS, extra=("--workers", "2")) == 0
    assert _sweep(tiny, cut, LINKS, ROWS, extra=("--workers", "2")) == 0
    for name in sorted((cut / "points").iterdir())[:2]:  # as if killed with two points left
        name.unlink()
    (cut / "sweep.csv").unlink()
    (cut / "sweep.parquet").unlink()
    capsys.readouterr()
    assert main(["sweep", str(tiny), "--out", str(cut), "--grid", LINKS, "--grid", ROWS, "--workers", "1"]) == 0
    assert "2 ran now, 2 done before, 0 failed" in capsys.readouterr().out
    assert _files(cut) == _files(whole)


SLOW = {**TINY, "workload": {**TINY["workload"], "requests": 400}}


def test_an_interrupted_sweep_keeps_its_finished_points_and_resumes_to_identical_bytes(tmp_path):
    scenario = tmp_path / "slow.yaml"
    scenario.write_text(yaml.safe_dump(SLOW))
    seeds = "run.seed=" + ",".join(str(s) for s in range(12))
    args = [sys.executable, "-m", "engramsim", "sweep", str(scenario), "--grid", seeds, "--workers", "2", "--quiet", "--out"]
    proc = subprocess.Popen([*args, str(tmp_path / "cut")], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len([p for p in (tmp_path / "cut" / "points").glob("*.json") if not p.name.startswith(".")]) < 2:  # not a temporary
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["engramsim: interrupted"], err
    kept = sorted(p.name for p in (tmp_path / "cut" / "points").iterdir())
    assert 2 <= len(kept) < 12 and all(name.endswith(".json") for name in kept), kept  # no temporary left behind
    assert not (tmp_path / "cut" / "sweep.csv").exists()
    for path in (tmp_path / "cut" / "points").iterdir():
        assert json.loads(path.read_text())["summary"]  # every file kept is complete
    for out in ("cut", "whole"):
        done = subprocess.run([*args, str(tmp_path / out)], cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert _files(tmp_path / "cut") == _files(tmp_path / "whole")


# ---- failures and refusals -------------------------------------------------------------------------
def test_a_failing_point_is_listed_and_the_others_run(tiny, tmp_path, capsys):
    out = tmp_path / "sw"
    fits = "strategies.scheduler.params.gpu_memory_utilization=0.9,0.006"  # 0.006 x 80 GiB leaves no KV block
    assert main(["sweep", str(tiny), "--out", str(out), "--grid", "model.engram.rows_per_head=1009,-5", "--grid", fits,
                 "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["ok", "error", "error", "error"]
    assert rows[1]["error"].startswith("strategies.scheduler.params.gpu_memory_utilization: ")
    assert "(at model.engram.rows_per_head=1009, strategies.scheduler.params.gpu_memory_utilization=0.006)" in rows[1]["error"]
    assert rows[2]["error"].startswith("model.engram.rows_per_head[0]: expected a value greater than 0, got -5 (at model.engram.rows_per_head=-5")
    assert rows[2]["id"] == "" and rows[2]["throughput_tok_s"] == ""
    assert "4 points: 2 ran now, 0 done before, 3 failed" in printed and "point 2: strategies.scheduler" in printed
    assert len(list((out / "points").iterdir())) == 1
    assert main(["sweep", str(tiny), "--out", str(out), "--grid", "model.engram.rows_per_head=1009,-5", "--grid", fits]) == 0
    assert "1 ran now, 1 done before, 3 failed" in capsys.readouterr().out  # the point that did not fit is tried again


def test_a_folder_holding_another_sweep_is_refused_and_left_alone(tiny, tmp_path, capsys):
    out = tmp_path / "sw"
    assert _sweep(tiny, out, LINKS, extra=("--workers", "1")) == 0
    before = _files(out)
    for grids, sets, differs in (([ROWS], [], "--grid"), ([LINKS], ["workload.requests=5"], "--set")):
        args = ["sweep", str(tiny), "--out", str(out), *(a for g in grids for a in ("--grid", g)), *(a for s in sets for a in ("--set", s))]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "holds another sweep" in err and differs in err, err
    tiny.write_text(yaml.safe_dump({**TINY, "name": "renamed"}))
    assert _sweep(tiny, out, LINKS) == 2
    assert "the scenario's text" in capsys.readouterr().err
    assert _files(out) == before


def test_the_tables_hold_every_points_summary(tiny, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "sw"
    assert _sweep(tiny, out, ROWS, "workload.requests=4,5", extra=("--workers", "2")) == 0
    rows = _rows(out)
    table = pq.read_table(out / "sweep.parquet").to_pylist()
    assert len(rows) == len(table) == 4
    assert str(pq.read_schema(out / "sweep.parquet").field("model.engram.rows_per_head").type) == "int64"
    for row, typed in zip(rows, table, strict=True):
        summary = json.loads((out / "points" / f"{row['id']}.json").read_text())["summary"]
        assert typed["id"] == row["id"] and typed["status"] == row["status"] == "ok"
        assert typed["model.engram.rows_per_head"] == int(row["model.engram.rows_per_head"])
        for name, value in summary.items():
            assert typed[name] == value, name
            assert row[name] == ("" if value is None else str(value)), name


def test_the_ray_executor_writes_the_pools_bytes(tiny, tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'engramsim[ray]'")
    pool, ray = tmp_path / "pool", tmp_path / "ray"
    assert _sweep(tiny, pool, LINKS, ROWS, extra=("--workers", "2")) == 0
    assert _sweep(tiny, ray, LINKS, ROWS, extra=("--ray", "--workers", "2")) == 0
    assert _files(ray) == _files(pool)


def test_without_ray_installed_ray_is_one_line(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    assert _sweep(tiny, tmp_path / "sw", LINKS, extra=("--ray",)) == 2
    err = capsys.readouterr().err.strip()
    assert err == "engramsim: error: --ray: Ray is not installed; pip install 'engramsim[ray]'"
    assert not (tmp_path / "sw").exists()


def test_help_loads_neither_the_sweep_nor_pyarrow_nor_ray():
    code = ("import sys; from engramsim.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('engramsim.sweep', 'engramsim.pool', 'engramsim.sweep_plot', 'pyarrow', 'ray', 'matplotlib') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# ---- points sharing a workload ------------------------------------------------------------------------
def test_points_sharing_a_workload_run_back_to_back_and_hash_it_once(tiny, tmp_path):
    definition, points = resolve(parse_definition(tiny, [LINKS, ROWS], [], []))
    order: list[str] = []

    def executor(tasks, done):
        for task in tasks:
            order.append(str(task.scenario.model.engram.rows_per_head))
            done(run_point(task))
    run_sweep(tmp_path / "sw", definition, points, executor)
    assert order in (["[1009]", "[1009]", "[2003]", "[2003]"], ["[2003]", "[2003]", "[1009]", "[1009]"])  # links vary slowest
    by = {(str(p.scenario.hardware.link), p.scenario.model.engram.rows_per_head[0]): p.scenario for p in points}
    reuse = Workloads(size=1)
    a, b = (prepare(by[(link, 1009)], str(tiny), reuse) for link in ("pcie-gen4-x16", "pcie-gen5-x16"))
    assert a.workload is b.workload and a.hashing is b.hashing and a.profile != b.profile  # another link, one workload
    c = prepare(by[("pcie-gen4-x16", 2003)], str(tiny), reuse)
    assert c.workload is not a.workload  # another Engram section: another workload
    assert prepare(by[("pcie-gen4-x16", 1009)], str(tiny), reuse).workload is not a.workload  # a cache of one forgot it


def test_a_reused_workload_gives_the_same_bytes(tiny):
    definition, points = resolve(parse_definition(tiny, [LINKS], [], []))
    reuse = Workloads()
    texts = []
    for point in points:
        for cache in (reuse, None):
            prepared = prepare(point.scenario, str(tiny), cache)
            texts.append(results_json(results_of(prepared, run_passes(prepared, partial(simulate_run, prepared), None), "sim"),
                                      Path("p.json")))
    assert texts[0] == texts[1] and texts[2] == texts[3] and texts[0] != texts[2]


# ---- the plot --------------------------------------------------------------------------------------
def test_points_sharing_an_x_and_a_hue_become_a_median_and_a_band():
    drawn, ticks = lines([(1, "a", 1.0), (1, "a", 3.0), (1, "a", 2.0), (10, "a", 5.0), (1, "b", 7.0)])
    assert ticks is None
    a, b = drawn
    assert (a.label, a.xs, a.median, a.counts) == ("a", [1.0, 10.0], [2.0, 5.0], [3, 1])
    assert a.low[0] == pytest.approx(1.1) and a.high[0] == pytest.approx(2.9) and a.low[1] == a.high[1] == 5.0
    assert (b.label, b.xs, b.median) == ("b", [1.0], [7.0])
    drawn, ticks = lines([("gen5", None, 1.0), ("gen4", None, 2.0), ("gen5", None, 3.0)])
    assert ticks == ["gen5", "gen4"] and drawn[0].xs == [0.0, 1.0] and drawn[0].median == [2.0, 2.0]


def test_the_x_axis_is_logarithmic_past_two_decades_of_positive_numbers():
    assert use_log([1, 1000]) and use_log([0.5, 100])
    assert not use_log([1, 100]) and not use_log([0, 1000]) and not use_log([-1, 1000]) and not use_log(["a", "b"])


def test_plot_draws_a_sweep_and_a_compare_folder(tiny, tmp_path, capsys):
    out = tmp_path / "sw"
    assert _sweep(tiny, out, LINKS, "workload.requests=1,4,400", extra=("--workers", "2")) == 0
    assert main(["plot", str(out), "--x", "workload.requests", "--y", "tpot_ms_p50", "--hue", "hardware.link"]) == 0
    assert "(log x axis)" in capsys.readouterr().out
    png = out / "plot-tpot_ms_p50-vs-workload.requests-by-hardware.link.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", str(out), "--x", "hardware.link", "--y", "throughput_tok_s", "--out", str(tmp_path / "t.png")]) == 0
    assert "log" not in capsys.readouterr().out and (tmp_path / "t.png").is_file()  # text x values: never log
    cmp = tmp_path / "cmp"
    assert main(["compare", str(tiny), "--out", str(cmp), "--vary", LINKS, "--quiet"]) == 0
    assert main(["plot", str(cmp), "--x", "hardware.link", "--y", "pcie_bytes", "--quiet"]) == 0
    assert (cmp / "plot-pcie_bytes-vs-hardware.link.png").is_file()


def test_plot_hues_by_several_keys_one_line_per_combination(tiny, tmp_path, capsys):
    out = tmp_path / "sw"
    assert _sweep(tiny, out, LINKS, ROWS, "workload.requests=1,4", extra=("--workers", "1")) == 0
    assert main(["plot", str(out), "--x", "workload.requests", "--y", "tpot_ms_p50", "--hue", "hardware.link,model.engram.rows_per_head",
                 "--out", str(tmp_path / "h.png")]) == 0
    drawn, _ = lines([(1, "pcie-gen4-x16, 1009", 1.0), (1, "pcie-gen4-x16, 2003", 2.0)])
    assert [line.label for line in drawn] == ["pcie-gen4-x16, 1009", "pcie-gen4-x16, 2003"]
    assert main(["plot", str(out), "--x", "workload.requests", "--y", "tpot_ms_p50", "--hue", "hardware.link,workload.requests"]) == 2
    assert "holds --x" in capsys.readouterr().err


def test_plot_bad_keys_are_one_line_naming_what_there_is(tiny, tmp_path, capsys):
    out = tmp_path / "sw"
    assert _sweep(tiny, out, LINKS, extra=("--workers", "1")) == 0
    before = _files(out)
    for flags, expect in ((["--x", "hardware.lnk", "--y", "tpot_ms_p50"], "its keys: hardware.link"),
                          (["--x", "hardware.link", "--y", "tpot"], "its metrics: throughput_tok_s"),
                          (["--x", "hardware.link", "--y", "tpot_ms_p50", "--hue", "nope"], "--hue: 'nope'")):
        assert main(["plot", str(out), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expect in err, err
    assert _files(out) == before
    assert os.listdir(tmp_path) == [out.name] or sorted(os.listdir(tmp_path)) == ["sw", "tiny.yaml"]

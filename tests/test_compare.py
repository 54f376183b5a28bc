"""`engramsim compare`: variants are the product of the --vary values parsed as --set parses them,
run on the same requests through the run machinery, a variant that does not fit is reported and
the rest run, the files are deterministic and written as one complete folder, bad input is one
line with exit 2 and nothing written."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from engramsim import compare, metrics
from engramsim.cli import main
from engramsim.compare import FILES
from engramsim.compare_plot import pareto_front
from engramsim.errors import InputError
from engramsim.variants import load_variants, parse_varies, parse_vary, split_values, variants
from tests.test_errors import TINY as ERRORS_TINY

TINY = {**ERRORS_TINY, "workload": {**ERRORS_TINY["workload"], "requests": 6, "output_len": {"dist": "uniform", "low": 2, "high": 6}}}
TRANSPORTS = "strategies.transport=staged,zero-copy"
PREFETCHES = "strategies.prefetch=on-demand,layer-ahead"
NO_FIT = "strategies.scheduler.params.gpu_memory_utilization=0.9,0.006"  # 0.006 x 80 GiB leaves no KV block


@pytest.fixture
def tiny(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def _compare(scenario: Path, out: Path, *varies: str, extra: tuple[str, ...] = ()) -> int:
    args = ["compare", str(scenario), "--out", str(out), *extra]
    for v in varies:
        args += ["--vary", v]
    return main(args)


def _doc(out: Path) -> dict:
    return json.loads((out / "compare.json").read_text())


# ---- parsing and the product ----------------------------------------------------------------------
def test_values_split_on_commas_outside_braces_brackets_and_quotes():
    assert split_values("staged,zero-copy") == ["staged", "zero-copy"]
    assert split_values("none,{name: lru, params: {rows: 100000}},[1,15]") == ["none", "{name: lru, params: {rows: 100000}}", "[1,15]"]
    assert split_values("'a,b', \"c,\\\"d\",it's,x") == ["'a,b'", ' "c,\\"d"', "it's", "x"]
    for bad, why in (("{a: 1", "unclosed {"), ("[1,2", "unclosed ["), ("a}", "unbalanced"), ("{a: [1}]", "unbalanced"), ("'a,b", "quote")):
        with pytest.raises(ValueError, match=re.escape(why)):
            split_values(bad)


def test_vary_values_are_parsed_as_set_parses_them():
    vary = parse_vary("strategies.cache=none, {name: lru, params: {rows: 100000}} ,{name: lfu, params: {rows: 10, decay: 0.5}}")
    assert vary.key == "strategies.cache"
    assert vary.texts == ("none", "{name: lru, params: {rows: 100000}}", "{name: lfu, params: {rows: 10, decay: 0.5}}")
    assert vary.values == ("none", {"name": "lru", "params": {"rows": 100000}}, {"name": "lfu", "params": {"rows": 10, "decay": 0.5}})
    assert parse_vary("model.engram.layers=[1],[1,2]").values == ([1], [1, 2])
    assert parse_vary("workload.requests=4,8").values == (4, 8)


def test_variants_are_the_product_first_vary_slowest():
    found = variants(parse_varies([TRANSPORTS, PREFETCHES, "workload.requests=4,8,16"]))
    assert len(found) == 12 and [v.index for v in found] == list(range(1, 13))
    assert found[0].name == "transport=staged, prefetch=on-demand, requests=4"
    assert found[1].sets() == ["strategies.transport=staged", "strategies.prefetch=on-demand", "workload.requests=8"]
    assert found[-1].name == "transport=zero-copy, prefetch=layer-ahead, requests=16"
    assert len({tuple(v.sets()) for v in found}) == 12
    same_last = variants(parse_varies(["strategies.cache.params.rows=1,2", "strategies.placement.params.rows=3,4"]))
    assert same_last[0].name == "strategies.cache.params.rows=1, strategies.placement.params.rows=3"  # 'rows' would be ambiguous


def test_each_variant_is_validated_with_its_overrides(tiny):
    loaded = load_variants(tiny, ["workload.requests=5"], parse_varies([TRANSPORTS, "strategies.cache={name: lru, params: {rows: 64}},none"]))
    assert [(s.strategies.transport.name, s.strategies.cache.name, s.workload.requests) for _, s in loaded] == [
        ("staged", "lru", 5), ("staged", "none", 5), ("zero-copy", "lru", 5), ("zero-copy", "none", 5)]
    assert loaded[0][1].strategies.cache.params == {"rows": 64}
    assert all(s.run.backend == "sim" for _, s in loaded)


def test_pareto_front_by_hand():
    xs, ys = [1.0, 2.0, 3.0, 2.0, 1.0, 4.0], [5.0, 3.0, 1.0, 4.0, 6.0, 1.0]
    # (2,4) is dominated by (2,3); (1,6) by (1,5); (4,1) by (3,1)
    assert pareto_front(xs, ys) == [0, 1, 2]
    assert pareto_front([1.0, 1.0, 2.0], [2.0, 2.0, 3.0]) == [0, 1]  # equal points are both on the front
    assert pareto_front(xs, ys, higher_x_better=True) == [5]  # (4,1) has the most x and the least y
    assert pareto_front([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == [0]
    assert pareto_front([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], higher_x_better=True) == [0, 1, 2]  # more x costs more y
    assert pareto_front([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], higher_x_better=True, higher_y_better=True) == [2]
    assert pareto_front([], []) == []
    assert pareto_front([0.5], [9.0]) == [0]


# ---- running ------------------------------------------------------------------------------------------
def test_variants_that_change_transport_run_identical_steps(tiny, tmp_path, capsys):
    assert _compare(tiny, tmp_path / "out", TRANSPORTS, PREFETCHES) == 0
    printed = capsys.readouterr().out
    doc = _doc(tmp_path / "out")
    runs = doc["variants"]
    assert [v["status"] for v in runs] == ["ok"] * 4
    assert len({v["workload_sha256"] for v in runs}) == 1 and len({v["schedule_sha256"] for v in runs}) == 1
    for key in ("steps", "output_tokens", "prompt_tokens", "rows_missed", "pcie_bytes"):
        assert len({v["summary"][key] for v in runs}) == 1, key
    stalls = {v["name"]: v["summary"]["engram_stall_ms_total"] for v in runs}
    assert stalls["transport=staged, prefetch=on-demand"] > stalls["transport=staged, prefetch=layer-ahead"]
    assert "the same requests in the same steps" in printed
    assert doc["vary"] == [{"key": "strategies.transport", "values": ["staged", "zero-copy"]},
                           {"key": "strategies.prefetch", "values": ["on-demand", "layer-ahead"]}]


@pytest.mark.parametrize("columns", [None, "320"])
def test_off_a_terminal_the_table_is_200_columns_unless_columns_says_otherwise(columns, tiny, tmp_path, monkeypatch, capsys):
    """Piped output keeps a fixed width (no wrapping surprises in logs); COLUMNS widens it, as for a
    README's full table. Guards: a table cut to 80 columns off a terminal, or COLUMNS ignored."""
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    caches = "strategies.cache=none,{name: lru, params: {rows: 1000}},{name: lfu, params: {rows: 1000, decay: 0.5}}"
    assert _compare(tiny, tmp_path / "out", TRANSPORTS, PREFETCHES, caches) == 0
    widest = max(len(line) for line in capsys.readouterr().out.splitlines())
    assert widest <= 200 if columns is None else 200 < widest <= 320


def test_a_variant_summary_is_what_engramsim_run_writes(tiny, tmp_path):
    assert _compare(tiny, tmp_path / "cmp", TRANSPORTS, extra=("--set", "strategies.prefetch=on-demand", "--keep-runs")) == 0
    assert main(["run", str(tiny), "--out", str(tmp_path / "run"), "--quiet", "--set", "strategies.prefetch=on-demand",
                 "--set", "strategies.transport=zero-copy"]) == 0
    result = json.loads((tmp_path / "run" / "results.json").read_text())
    variant = _doc(tmp_path / "cmp")["variants"][1]
    assert variant["summary"] == result["summary"] and variant["hbm"] == result["hbm"]
    kept = json.loads((tmp_path / "cmp" / variant["run_dir"] / "results.json").read_text())
    assert kept == result
    # without --keep-runs the summary comes from the same passes
    assert _compare(tiny, tmp_path / "cmp2", TRANSPORTS, extra=("--set", "strategies.prefetch=on-demand")) == 0
    assert _doc(tmp_path / "cmp2")["variants"][1]["summary"] == result["summary"]


def test_a_variant_that_does_not_fit_is_reported_and_the_rest_run(tiny, tmp_path, capsys):
    assert _compare(tiny, tmp_path / "out", NO_FIT, TRANSPORTS) == 0
    printed = capsys.readouterr().out
    runs = _doc(tmp_path / "out")["variants"]
    assert [v["status"] for v in runs] == ["ok", "ok", "does not fit", "does not fit"]
    for v in runs[2:]:
        assert v["reason"].startswith("strategies.scheduler.params.gpu_memory_utilization: ") and "KV blocks" in v["reason"]
        assert v["summary"] is None and v["hbm"] is None
    assert runs[0]["summary"]["throughput_tok_s"] > 0
    assert printed.count("does not fit") >= 4  # two rows, two reasons
    assert "3 (gpu_memory_utilization=0.006, transport=staged): does not fit: strategies.scheduler" in " ".join(printed.split())
    rows = list(csv.DictReader((tmp_path / "out" / "compare.csv").open()))
    assert [r["status"] for r in rows] == ["ok", "ok", "does not fit", "does not fit"]
    assert rows[2]["reason"] == runs[2]["reason"] and rows[2]["throughput_tok_s"] == ""
    assert rows[0]["strategies.transport"] == "staged" and float(rows[0]["throughput_tok_s"]) == runs[0]["summary"]["throughput_tok_s"]


def test_a_real_backend_runs_every_variant_and_records_measured_values(tiny, tmp_path, capsys):
    """--backend cpu: each variant runs the passes `engramsim run --backend cpu` makes (its own session),
    the same table and files; compare.json says the values are measured."""
    assert _compare(tiny, tmp_path / "out", TRANSPORTS, extra=("--backend", "cpu", "--keep-runs")) == 0
    printed = " ".join(capsys.readouterr().out.split())
    doc = _doc(tmp_path / "out")
    assert doc["backend"] == "cpu" and doc["measured"] is True
    runs = doc["variants"]
    assert [v["status"] for v in runs] == ["ok", "ok"] and all(v["summary"]["throughput_tok_s"] > 0 for v in runs)
    assert len({v["workload_sha256"] for v in runs}) == 1 and len({v["schedule_sha256"] for v in runs}) == 1
    for v in runs:  # each variant's own run folder, as `engramsim run --backend cpu` writes it
        kept = json.loads((tmp_path / "out" / v["run_dir"] / "results.json").read_text())
        assert kept["backend"] == "cpu" and kept["summary"] == v["summary"] and v["scenario"]["run"]["backend"] == "cpu"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([*FILES, "runs"])
    assert "2 variants (measured on cpu)" in printed
    rows = list(csv.DictReader((tmp_path / "out" / "compare.csv").open()))
    assert [r["strategies.transport"] for r in rows] == ["staged", "zero-copy"]


def test_a_variant_the_real_backend_refuses_is_reported_and_the_rest_run(tiny, tmp_path, capsys):
    assert _compare(tiny, tmp_path / "out", "strategies.prefetch=on-demand,deadline", extra=("--backend", "cpu")) == 0
    printed = " ".join(capsys.readouterr().out.split())
    runs = _doc(tmp_path / "out")["variants"]
    assert [v["status"] for v in runs] == ["ok", "refused by the real backend"]
    assert runs[1]["reason"].startswith("strategies.prefetch: ") and "deadline mode" in runs[1]["reason"]
    assert runs[1]["summary"] is None and runs[0]["summary"]["throughput_tok_s"] > 0
    assert "2 (prefetch=deadline): refused by the real backend: strategies.prefetch" in printed
    rows = list(csv.DictReader((tmp_path / "out" / "compare.csv").open()))
    assert rows[1]["status"] == "refused by the real backend" and rows[1]["reason"] == runs[1]["reason"]


def test_cuda_without_a_gpu_is_one_line_exit_2_and_nothing_written(tiny, tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    before = set(tmp_path.rglob("*"))
    assert _compare(tiny, tmp_path / "out", TRANSPORTS, extra=("--backend", "cuda")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA GPU available" in err and "run.backend" in err, err
    assert set(tmp_path.rglob("*")) == before


def test_same_inputs_give_byte_identical_json_and_csv(tiny, tmp_path):
    for out in ("a", "b"):
        assert _compare(tiny, tmp_path / out, NO_FIT, "strategies.cache=none,{name: lru, params: {rows: 64}}") == 0
    for name in ("compare.json", "compare.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert "wall" not in (tmp_path / "a" / "compare.json").read_text()


def test_the_folder_is_complete_or_absent_and_force_replaces_it_whole(tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert _compare(tiny, out, TRANSPORTS) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert (out / "compare.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny.yaml"], "no staging folder left beside it"
    (out / "stale.txt").write_text("from an earlier comparison")
    assert _compare(tiny, out, TRANSPORTS, extra=("--force",)) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)

    calls = []

    def failing(*args, **kwargs):  # every second variant is interrupted, after the first ran
        calls.append(1)
        if len(calls) % 2 == 0:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    real = compare.run_variant
    monkeypatch.setattr("engramsim.commands.compare.run_variant", failing)
    assert _compare(tiny, tmp_path / "new", TRANSPORTS) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny.yaml"], "an interrupted comparison leaves nothing"
    assert _compare(tiny, out, TRANSPORTS, extra=("--force",)) == 130
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES), "the earlier folder is kept whole"
    capsys.readouterr()


def test_a_metric_registered_later_shows_up_as_a_quality_column_and_the_plots_axis(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(metrics, "GROUPS", (*metrics.GROUPS, "quality"))
    quality = metrics.Metric(name="lookups_missed_frac", unit="fraction", label="lookups missed", group="quality", digits=3,
                             meaning="needed rows fetched for their step / references (a stand-in quality cost)",
                             compute=lambda c: c.total("rows_missed") / max(1, c.total("references")))
    monkeypatch.setitem(metrics.METRICS, quality.name, quality)
    assert _compare(tiny, tmp_path / "out", "strategies.cache=none,{name: lru, params: {rows: 64}}") == 0
    printed = capsys.readouterr().out
    assert "lookups missed" in printed
    doc = _doc(tmp_path / "out")
    assert doc["tradeoff"]["x"] == "lookups_missed_frac" and doc["tradeoff"]["y"] == "tpot_ms_p50"
    assert "no quality metric" not in doc["tradeoff"]["title"]
    values = [v["summary"]["lookups_missed_frac"] for v in doc["variants"]]
    assert values[1] < values[0]
    assert "lookups_missed_frac" in (tmp_path / "out" / "compare.csv").read_text().splitlines()[0]


def test_without_a_quality_metric_the_plot_says_what_it_draws_instead(tiny, tmp_path, capsys):
    assert _compare(tiny, tmp_path / "out", "strategies.cache=none,{name: lru, params: {rows: 64}}") == 0
    capsys.readouterr()
    trade = _doc(tmp_path / "out")["tradeoff"]
    assert trade["x"] == "hbm_used_bytes" and "no quality metric" in trade["title"]  # the cache's HBM is what varies
    assert trade["pareto_front"]


# ---- bad input: one line, exit 2, nothing written ---------------------------------------------------
class Case(NamedTuple):
    varies: tuple[str, ...]
    extra: tuple[str, ...]
    expect: tuple[str, ...]


CASES: dict[str, Case] = {
    "no --vary": Case((), (), ("--vary", "at least one")),
    "no '='": Case(("strategies.transport",), (), ("--vary", "KEY.PATH=V1,V2")),
    "no key": Case(("=a,b",), (), ("--vary", "KEY.PATH=V1,V2")),
    "no values": Case(("strategies.transport=",), (), ("--vary: strategies.transport", "no values")),
    "an empty value": Case(("strategies.transport=staged,,zero-copy",), (), ("strategies.transport", "empty value")),
    "unbalanced braces": Case(("strategies.cache={name: lru, params: {rows: 1}",), (), ("strategies.cache", "unclosed {")),
    "invalid YAML value": Case(("strategies.transport=staged,{a: b: c}",), (), ("strategies.transport", "not valid YAML")),
    "a value twice": Case(("strategies.transport=staged,staged",), (), ("strategies.transport", "'staged' is given twice")),
    "a key twice": Case((TRANSPORTS, "strategies.transport=zero-copy,staged"), (), ("strategies.transport", "given twice")),
    "a key inside another": Case(("strategies.cache=none,lru", "strategies.cache.params.rows=1,2"), (),
                                 ("strategies.cache.params.rows", "overlaps --vary strategies.cache")),
    "a key --set also sets": Case((TRANSPORTS,), ("--set", "strategies.transport=staged"), ("strategies.transport", "also set by --set")),
    "the backend": Case(("run.backend=sim,cpu",), (), ("run.backend", "the backend cannot vary")),
    "--set of the backend": Case((TRANSPORTS,), ("--set", "run.backend=cpu"), ("--set", "run.backend", "every variant on --backend sim")),
    "--backend other than sim, cpu, cuda": Case((TRANSPORTS,), ("--backend", "tpu"), ("--backend", "invalid choice")),
    "unknown key": Case(("strategies.transprt=staged,zero-copy",), (), ("--vary", "strategies.transprt", "did you mean 'transport'")),
    "unknown plugin": Case(("strategies.transport=staged,warp",), (), ("--vary", "strategies.transport.name", "unknown transport plugin",
                                                                       "variant 2: transport=warp")),
    "a value of the wrong type": Case(("workload.requests=4,many",), (), ("--vary", "workload.requests", "integer", "'many'")),
    "bad plugin params": Case(("strategies.cache={name: lru, params: {rows: -1}},none",), (),
                              ("--vary", "strategies.cache.params.rows", "variant 1")),
    "a value another field refuses": Case(("model.backbone.layers=4,1",), (), ("--vary", "model.engram.layers", "variant 2: layers=1")),
    "unknown --set key": Case((TRANSPORTS,), ("--set", "workload.nope=1"), ("workload.nope", "unknown key")),
    "too many variants": Case(tuple(f"workload.{k}=1,2,3,4,5,6,7,8,9,10,11,12" for k in ("requests", "seed", "wrap_trace")), (),
                              ("--vary", "variants; at most 1,000")),
    "missing scenario": Case((TRANSPORTS,), ("--scenario-missing",), ("nope.yaml", "no such scenario file")),
    "--out exists": Case((TRANSPORTS,), ("--out-exists",), ("run folder exists", "--force")),
    "--force on a folder that is not a comparison": Case((TRANSPORTS,), ("--out-exists", "--force"), ("holds no compare.json",)),
    "--out under a file": Case((TRANSPORTS,), ("--out-under-file",), ("is not a folder",)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_and_nothing_written(name, tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    case = CASES[name]
    scenario, out, extra = tiny, tmp_path / "out", list(case.extra)
    if "--scenario-missing" in extra:
        extra.remove("--scenario-missing")
        scenario = tmp_path / "nope.yaml"
    if "--out-exists" in extra:
        extra.remove("--out-exists")
        out = tmp_path / "existing"
        out.mkdir()
    if "--out-under-file" in extra:
        extra.remove("--out-under-file")
        (tmp_path / "f").write_text("")
        out = tmp_path / "f" / "sub"
    before = set(tmp_path.rglob("*"))
    rc = _compare(scenario, out, *case.varies, extra=tuple(extra))
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("engramsim"), err
    for part in case.expect:
        assert part in err, f"{part!r} not in {err!r}"
    assert set(tmp_path.rglob("*")) == before, "output left behind"


def test_parse_errors_name_the_flag():
    with pytest.raises(InputError, match="^--vary: strategies.transport: no values"):
        parse_vary("strategies.transport=  ")

"""`engramsim diff`: only what differs, readable numbers, changes guarded against near-zero
references, any number of files, the scenario fields behind the numbers, one-line errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from engramsim.cli import main
from engramsim.commands.diff import metric_rows
from engramsim.results import SCHEMA_VERSION

SUMMARY = {"throughput_tok_s": 1000.0, "overhead_pct": 1e-12, "engram_stall_ms_total": 1e-12, "pcie_bytes": 7_184_160,
           "rows_speculative": 0, "makespan_s": 0.965, "seed": 0}


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> dict:
    """A real results document: a short simulated run of the quickstart."""
    out = tmp_path_factory.mktemp("diff") / "run"
    assert main(["run", "--out", str(out), "--quiet", "--set", "workload.requests=4", "--set", "run.outputs.plot=false",
                 "--set", "run.outputs.timeline=false", "--set", "run.outputs.steps_csv=false"]) == 0
    return json.loads((out / "results.json").read_text())


@pytest.fixture
def columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")


def write(tmp_path: Path, name: str, doc: dict) -> str:
    path = tmp_path / name
    path.write_text(json.dumps({"schema_version": SCHEMA_VERSION} | doc))
    return str(path)


def variant(doc: dict, backend: str | None = None, **summary) -> dict:
    out = copy.deepcopy(doc)
    out["summary"].update(summary)
    if backend:
        out["backend"] = backend
    return out


def test_identical_files_show_no_difference(real, tmp_path, capsys, columns):
    a, b = write(tmp_path, "a.json", real), write(tmp_path, "b.json", real)
    assert main(["diff", a, b]) == 0
    out = capsys.readouterr().out
    assert "same scenario and hardware" in out and "no metric differs" in out
    assert "metrics that differ" not in out
    assert main(["diff", a, b, "--all"]) == 0
    assert "throughput_tok_s" in capsys.readouterr().out, "--all shows every metric"


def test_real_files_print_fixed_point_numbers_with_units_within_80_columns(real, tmp_path, capsys, columns):
    faster = variant(real, "cpu", throughput_tok_s=real["summary"]["throughput_tok_s"] * 1.1, pcie_bytes=12_345_678_901)
    assert main(["diff", write(tmp_path, "a.json", real), write(tmp_path, "b.json", faster)]) == 0
    out = capsys.readouterr().out
    assert "backends: sim vs cpu" in out
    assert "+10.0%" in out and "12,345,678,901" in out and "bytes" in out and "tok/s" in out
    assert "e+" not in out and "e-" not in out and "…" not in out
    assert max(map(len, out.splitlines())) <= 80
    assert "seed" not in out, "only the metrics that differ"


def test_a_near_zero_reference_gives_the_difference_not_a_giant_percentage(tmp_path, capsys, columns):
    other = SUMMARY | {"overhead_pct": 0.51, "engram_stall_ms_total": 4.944, "rows_speculative": 5, "throughput_tok_s": 995.0}
    rows = {row.key.removeprefix("summary."): row for row in metric_rows({"summary": SUMMARY}, {"summary": other})}
    assert rows["throughput_tok_s"].pct == pytest.approx(-0.5)
    assert rows["engram_stall_ms_total"].pct is None and rows["engram_stall_ms_total"].change() == "+4.944"
    assert rows["overhead_pct"].change() == "+0.510 pp", "a percentage changes by percentage points"
    assert rows["rows_speculative"].pct is None and rows["rows_speculative"].change() == "+5", "from zero"
    assert "summary.seed" not in rows, "the seed is a scenario field, not a metric"
    noise = SUMMARY | {"overhead_pct": -2.5e-13}
    assert not {row.key: row for row in metric_rows({"summary": SUMMARY}, {"summary": noise})}["summary.overhead_pct"].differs
    assert main(["diff", write(tmp_path, "a.json", {"summary": SUMMARY}), write(tmp_path, "b.json", {"summary": other})]) == 0
    out = capsys.readouterr().out
    assert "+4.944" in out and "+0.510 pp" in out and "-0.5%" in out
    assert "e-" not in out and "e+" not in out and "%" not in out.split("engram_stall_ms_total")[1].splitlines()[0]


def test_three_files_compare_against_the_first(real, tmp_path, capsys, columns):
    b = variant(real, throughput_tok_s=real["summary"]["throughput_tok_s"] * 2)
    c = variant(real, "cuda", rows_speculative=123_456)
    paths = [write(tmp_path, f"{name}.json", doc) for name, doc in (("a", real), ("b", b), ("c", c))]
    assert main(["diff", *paths]) == 0
    out = capsys.readouterr().out
    assert "backends: sim vs sim vs cuda" in out
    assert "B vs A" in out and "C vs A" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    assert lines["throughput_tok_s"][-3:-1] == ["+100.0%", f"{real['summary']['throughput_tok_s']:,.2f}"]
    assert lines["throughput_tok_s"][-1] == "=", "C's throughput is A's"
    assert lines["rows_speculative"][-2:] == ["123,456", "+123,456"]
    assert "…" not in out and max(map(len, out.splitlines())) <= 80


def test_the_scenario_and_hardware_fields_that_differ_are_listed(real, tmp_path, capsys, columns):
    other = copy.deepcopy(real)
    other["scenario"]["strategies"]["prefetch"]["name"] = "on-demand"
    other["scenario"]["model"]["engram"]["layers"] = [1, 15]
    other["hardware"]["link"]["h2d_gbps"] = 12.5
    other["hardware"]["description"] = "another prose description"
    assert main(["diff", write(tmp_path, "a.json", real), write(tmp_path, "b.json", other)]) == 0
    out = capsys.readouterr().out
    fields = {line.split()[0]: line.split()[1:] for line in out.split("fields that differ")[1].split("metric")[0].splitlines()
              if line.startswith(("scenario.", "hardware."))}
    assert fields == {"hardware.link.h2d_gbps": [str(real["hardware"]["link"]["h2d_gbps"]), "12.5"],
                      "scenario.model.engram.layers": ["[1]", "[1,", "15]"],
                      "scenario.strategies.prefetch.name": ["layer-ahead", "on-demand"]}, "prose fields are left out"


@pytest.mark.parametrize("text, expected", [
    (None, "cannot read results file"),
    ("{not json", "not a results JSON file"),
    ('{"summary": {"throughput_tok_s": NaN}}', "non-standard JSON value NaN"),
    ('{"summary": {"throughput_tok_s": Infinity}}', "non-standard JSON value Infinity"),
    ('{"per_layer": []}', "summary: expected an object"),
    ('{"summary": {}, "per_layer": [{"stall_ms_total": 1}]}', "per_layer: expected a list of objects"),
    ('{"summary": {}, "scenario": []}', "scenario: expected an object"),
])
def test_bad_input_is_one_line_naming_the_file(real, tmp_path, capsys, text, expected):
    bad = tmp_path / "bad.json"
    if text is not None:
        bad.write_text(text)
    assert main(["diff", write(tmp_path, "a.json", real), str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and str(bad) in captured.err and expected in captured.err


def test_one_file_is_a_usage_error(tmp_path, capsys):
    assert main(["diff", write(tmp_path, "a.json", {"summary": SUMMARY})]) == 2
    assert capsys.readouterr().err.count("\n") == 1

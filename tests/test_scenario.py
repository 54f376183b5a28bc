"""Scenario loading: every malformed input is one located line and exit 2; good input validates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engramsim.cli import main
from engramsim.errors import InputError
from engramsim.scenario import Scenario
from engramsim.scenario_io import dump_scenario, load_scenario, scenario_from_dict

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"

# (id, YAML text, --set overrides, field path expected in the line, another fragment expected)
MALFORMED = [
    ("wrong-type-int", "name: x\nworkload: {requests: many}", [], "workload.requests", "got 'many'"),
    ("wrong-type-section", "name: x\nmodel: 5", [], "model", "expected a mapping"),
    ("wrong-literal", "name: x\nrun: {backend: gpu}", [], "run.backend", "'sim', 'cpu' or 'cuda'"),
    ("wrong-dtype", "name: x\nmodel: {engram: {dtype: int4}}", [], "model.engram.dtype", "got 'int4'"),
    ("missing-name", "description: no name", [], "name", "missing required key 'name'"),
    ("unknown-key-top", "name: x\nworklaod: {requests: 3}", [], "worklaod", "did you mean 'workload'?"),
    ("unknown-key-depth2", "name: x\nworkload: {reqests: 3}", [], "workload.reqests", "did you mean 'requests'?"),
    ("unknown-key-depth3", "name: x\nworkload: {batching: {max_num_seq: 8}}", [],
     "workload.batching.max_num_seq", "did you mean 'max_num_seqs'?"),
    ("unknown-key-depth4", "name: x\nmodel: {backbone: {attention: {heds: 8}}}", [],
     "model.backbone.attention.heds", "did you mean 'heads'?"),
    ("unknown-key-no-match", "name: x\nrun: {zzz: 1}", [], "run.zzz", "valid keys: backend, seed"),
    ("unknown-plugin", "name: x\nstrategies: {placement: all-hots}", [], "strategies.placement.name", "did you mean 'all-host'?"),
    ("unknown-plugin-far", "name: x\nstrategies: {cache: {name: qwertyuiop}}", [], "strategies.cache.name", "cache plugin 'qwertyuiop'; known: "),
    ("bad-plugin-param-value", "name: x\nstrategies: {prefetch: {name: layer-ahead, params: {lead_blocks: 0}}}", [],
     "strategies.prefetch.params.lead_blocks", "got 0"),
    ("bad-plugin-param-key", "name: x\nstrategies: {transport: {name: staged, params: {threads: 4}}}", [],
     "strategies.transport.params.threads", "unknown key 'threads'"),
    ("negative-head-dim", "name: x\nmodel: {engram: {head_dim: -3}}", [], "model.engram.head_dim", "got -3"),
    ("negative-rows", "name: x\nmodel: {engram: {rows_per_head: -5}}", [], "model.engram.rows_per_head[0]", "got -5"),
    ("zero-requests", "name: x\nworkload: {requests: 0}", [], "workload.requests", "greater than 0, got 0"),
    ("max-ngram-1", "name: x\nmodel: {engram: {max_ngram: 1}}", [], "model.engram.max_ngram", "got 1"),
    ("rows-per-head-count", "name: x\nmodel: {engram: {max_ngram: 3, rows_per_head: [10, 20, 30]}}", [],
     "model.engram.rows_per_head", "needs 1 or 2 values"),
    ("engram-beyond-depth", "name: x\nmodel: {backbone: {layers: 12}, engram: {layers: [1, 12]}}", [],
     "model.engram.layers", "Engram layer 12 is beyond"),
    ("duplicate-engram-layers", "name: x\nmodel: {engram: {layers: [1, 1]}}", [], "model.engram.layers", "distinct"),
    ("top-k-over-experts", "name: x\nmodel: {backbone: {moe: {experts: 4, top_k: 6, expert_intermediate: 1024}}}", [],
     "model.backbone.moe.top_k", "top_k (6) must be <= experts (4)"),
    ("uniform-low-over-high", "name: x\nworkload: {prompt_len: {dist: uniform, low: 900, high: 100}}", [],
     "workload.prompt_len.low", "low (900) must be <= high (100)"),
    ("prompt-over-batch", "name: x\nworkload: {prompt_len: {dist: fixed, value: 9000}, batching: {max_num_batched_tokens: 8192}}", [],
     "workload.prompt_len.value", "cannot fit max_num_batched_tokens 8192"),
    ("poisson-without-rate", "name: x\nworkload: {arrival: {kind: poisson}}", [], "workload.arrival.rate_per_s", "needs 'rate_per_s'"),
    ("bad-yaml", "name: x\nmodel: {engram: [1", [], None, "invalid YAML"),
    ("top-level-list", "- name: x", [], None, "got a list"),
    ("empty-file", "", [], None, "the scenario is empty"),
    ("set-bad-path", "name: x", ["workload.reqests=8"], "workload.reqests", "did you mean 'requests'?"),
    ("set-path-into-value", "name: x", ["workload.requests.low=8"], "workload.requests", "not a section"),
    ("set-bad-value-type", "name: x", ["workload.requests=lots"], "workload.requests", "(from --set)"),
    ("set-bad-value-yaml", "name: x", ["model.engram.layers=[1,15"], "model.engram.layers", "not valid YAML"),
    ("set-no-equals", "name: x", ["workload.requests"], None, "expected KEY.PATH=VALUE"),
]


def run_check(capsys: pytest.CaptureFixture[str], path: Path, sets: list[str] = ()) -> tuple[int, str, str]:
    argv = ["check", str(path)] + [arg for item in sets for arg in ("--set", item)]
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("text", "sets", "field", "fragment"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_scenario_is_one_located_line(tmp_path, capsys, text, sets, field, fragment):
    path = tmp_path / "scenario.yaml"
    path.write_text(text + "\n")
    code, out, err = run_check(capsys, path, sets)
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert str(path) in line
    if field is not None:
        assert f": {field}: " in line, line
    assert fragment in line, line
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scenario.yaml"]  # nothing written


def test_missing_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "absent.yaml"
    code, out, err = run_check(capsys, path)
    assert (code, out) == (2, "")
    assert err.splitlines() == [f"engramsim: error: {path}: no such scenario file"]
    assert list(tmp_path.iterdir()) == []


def test_defaults_only_scenario_validates(tmp_path, capsys):
    path = tmp_path / "x.yaml"
    path.write_text("name: x\n")
    code, out, err = run_check(capsys, path)
    assert (code, err) == (0, "")
    assert out.startswith(f"{path}: OK: scenario 'x'")
    assert "placement=all-host" in out and "prefetch=layer-ahead" in out and "transport=staged" in out


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_scenarios_validate(path, capsys):
    code, out, err = run_check(capsys, path)
    assert (code, err) == (0, ""), err


def test_set_overrides_parse_yaml_values(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: x\nhardware: h200\nstrategies: {prefetch: layer-ahead}\n")
    scenario = load_scenario(path, [
        "workload.requests=8",
        "model.engram.layers=[1,15]",
        "hardware.link=pcie-gen4",  # into a scalar shorthand: the profile survives
        "strategies.prefetch.params.lead_blocks=1",  # into a shorthand strategy
        "workload.batching.max_num_seqs=16",  # into a section the file leaves out
    ])
    assert scenario.workload.requests == 8
    assert scenario.model.engram.layers == [1, 15]
    assert (scenario.hardware.profile, scenario.hardware.link) == ("h200", "pcie-gen4")
    assert scenario.strategies.prefetch.name == "layer-ahead"
    assert scenario.strategies.prefetch.params == {"lead_blocks": 1}
    assert scenario.workload.batching.max_num_seqs == 16
    assert scenario.workload.batching.max_num_batched_tokens == 16384


def test_set_overrides_are_validated_through_the_cli(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("name: x\n")
    code, out, _ = run_check(capsys, path, ["workload.requests=8", "model.engram.layers=[1,15]"])
    assert code == 0 and "Engram layers [1, 15]" in out
    code, _, err = run_check(capsys, path, ["model.engram.layers=[1,40]"])
    assert code == 2 and "model.engram.layers: Engram layer 40 is beyond" in err and "(from --set)" in err


def test_scenario_from_dict_and_dump_round_trip():
    scenario = scenario_from_dict({"name": "x", "model": {"engram": {"rows_per_head": 1000}}})
    dumped = dump_scenario(scenario)
    assert json.loads(json.dumps(dumped)) == dumped
    assert dumped["model"]["engram"]["rows_per_head"] == [1000]
    assert scenario_from_dict(dumped) == scenario


def test_scenario_from_dict_errors_name_the_source():
    with pytest.raises(InputError) as info:
        scenario_from_dict({"name": "x", "workload": {"requests": -1}}, source="inline")
    assert (info.value.source, info.value.field) == ("inline", "workload.requests")


def test_schema_is_json_with_the_sections(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert {"name", "model", "hardware", "workload", "strategies", "run"} <= set(schema["properties"])
    assert schema["required"] == ["name"]
    assert schema["additionalProperties"] is False


def test_schema_out_writes_the_file(tmp_path, capsys):
    out = tmp_path / "sub" / "scenario.schema.json"
    assert main(["schema", "--out", str(out)]) == 0
    assert capsys.readouterr().out == ""
    assert json.loads(out.read_text()) == {"$schema": "https://json-schema.org/draft/2020-12/schema",
                                           **Scenario.model_json_schema()}
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary left behind

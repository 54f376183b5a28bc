"""Low-precision Engram rows (backends/quantize.py): the formats checked by hand, the tables the
real backends fill and carry, and `engramsim quality` (backends/quality.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from engramsim.backends.quantize import FP8_MAX, GROUP, bf16_scale_up, dequantize, quantize, row_bytes, ue8m0_exponent
from engramsim.backends.tables import FILL_BLOCK_ROWS, fill_table, row_values, seed_rows, stored_rows, table_format
from engramsim.cli import main
from engramsim.errors import InputError
from engramsim.runner import run_real
from engramsim.scenario import Engram
from engramsim.scenario_io import load_scenario, scenario_from_dict
from engramsim.session import prepare


def _magnitudes(rows: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Values spanning many binades per group: sign x 2^U(-12, 12) x U(1, 2)."""
    g = torch.Generator().manual_seed(seed)
    sign = torch.randint(0, 2, (rows, dim), generator=g).float() * 2 - 1
    return sign * torch.exp2(torch.rand(rows, dim, generator=g) * 24 - 12) * (1 + torch.rand(rows, dim, generator=g))


def _scales(rows: torch.Tensor, mode: str, head_dim: int) -> torch.Tensor:
    """Per group scale, as float32 [n, groups], read back from the stored bytes."""
    raw = rows[:, head_dim:]
    if mode == "fp8":
        return torch.tensor([[2.0 ** (int(b) - 127) for b in r] for r in raw.tolist()])
    return raw.contiguous().view(torch.bfloat16).float()


def _per_value(scales: torch.Tensor, head_dim: int) -> torch.Tensor:
    return scales.repeat_interleave(GROUP, dim=1)[:, :head_dim]


# ---- the formats, by hand -----------------------------------------------------------------------------------
def test_row_bytes_are_values_plus_one_scale_per_32():
    """264 B for DeepSeek V4's 256 fp8 values (8 ue8m0 bytes), 272 B for int8 (8 bf16 scales);
    the scenario's row_bytes (what the simulator and the HBM budget count) agrees for every head dim."""
    assert Engram(head_dim=256, dtype="fp8").row_bytes == 264 == row_bytes("fp8", 256)
    assert Engram(head_dim=256, dtype="int8").row_bytes == 272 == row_bytes("int8", 256)
    assert Engram(head_dim=80, dtype="fp8").row_bytes == 83 and Engram(head_dim=80, dtype="int8").row_bytes == 86
    assert Engram(head_dim=80, dtype="bf16").row_bytes == 160
    for head_dim in (1, 31, 32, 33, 64, 80, 255, 256, 257, 1024):
        for mode in ("fp8", "int8"):
            engram = Engram(head_dim=head_dim, dtype=mode)
            rows = quantize(torch.randn(3, head_dim), mode)
            assert rows.dtype == torch.uint8 and rows.shape == (3, engram.row_bytes) == (3, row_bytes(mode, head_dim))
            assert table_format(engram) == (torch.uint8, engram.row_bytes)


def test_fp8_byte_layout_by_hand():
    """Values first (E4M3 bytes), then one UE8M0 byte per group: 2^(b - 127)."""
    x = torch.zeros(1, 64)
    x[0, 0], x[0, 1], x[0, 2], x[0, 31] = 448.0, 1.0, -2.0, 0.5  # group 0: amax 448 -> scale 1 (byte 127)
    x[0, 32], x[0, 33] = 896.0, -3.0  # group 1: amax 896 -> scale 2 (byte 128); -3 / 2 = -1.5
    rows = quantize(x, "fp8")
    assert rows.shape == (1, 66)
    got = rows[0].tolist()
    # E4M3: sign | exponent (bias 7) | 3 mantissa bits. 448 = 1.75 x 2^8 -> 0 1111 110; 1 -> 0 0111 000;
    # -2 -> 1 1000 000; 0.5 -> 0 0110 000; -1.5 -> 1 0111 100.
    assert got[:3] == [0x7E, 0x38, 0xC0] and got[31] == 0x30 and got[32] == 0x7E and got[33] == 0xBC
    assert got[64:] == [127, 128]
    assert all(b == 0 for i, b in enumerate(got[:64]) if i not in (0, 1, 2, 31, 32, 33))
    assert torch.equal(dequantize(rows, "fp8", 64), x)  # all representable: exact


def test_int8_byte_layout_by_hand():
    """Values first (two's complement int8), then one bfloat16 per group, little-endian."""
    x = torch.zeros(1, 40)
    x[0, 0], x[0, 1], x[0, 2] = 127.0, -5.0, 2.4  # group 0: amax 127 -> scale 1.0 = bf16 0x3F80
    x[0, 32], x[0, 33] = -254.0, 100.0  # group 1 (8 values): amax 254 -> scale 2.0 = 0x4000; 100 / 2 = 50
    rows = quantize(x, "int8")
    assert rows.shape == (1, 40 + 4)
    got = rows[0].tolist()
    assert got[:3] == [127, 0xFB, 2] and got[32:34] == [0x81, 50]
    assert got[40:] == [0x80, 0x3F, 0x00, 0x40]
    back = dequantize(rows, "int8", 40)
    assert back[0, 2] == 2.0 and back[0, 32] == -254.0 and back[0, 33] == 100.0


def test_ue8m0_scale_is_the_smallest_power_of_two_at_or_above_amax_over_448():
    amax = torch.cat([_magnitudes(1, 4000).abs().flatten(), torch.tensor([448.0, 896.0, 224.0, 1.0, 448.0 * 2 ** -20])])
    e = ue8m0_exponent(amax)
    scale = torch.exp2(e.double())
    assert (scale >= amax.double() / FP8_MAX).all(), "every value fits E4M3 after scaling"
    assert (scale / 2 < amax.double() / FP8_MAX).all(), "and the scale is the smallest such power of two"
    assert e[-5:].tolist() == [0, 1, -1, -8, -20]


@pytest.mark.parametrize("head_dim", [256, 80])
def test_fp8_round_trip_error_is_at_most_one_part_in_16(head_dim):
    """E4M3 keeps 3 mantissa bits: round to nearest errs by at most 2^-4 of the value in its
    normal range (|x / s| >= 2^-6); below it, by at most half the subnormal step 2^-9 x s."""
    x = _magnitudes(256, head_dim)
    rows = quantize(x, "fp8")
    back = dequantize(rows, "fp8", head_dim)
    s = _per_value(_scales(rows, "fp8", head_dim), head_dim)
    err = (back - x).abs()
    normal = x.abs() / s >= 2.0**-6
    assert normal.float().mean() > 0.5
    assert (err[normal] <= 2.0**-4 * x.abs()[normal]).all()
    assert (err[~normal] <= 2.0**-10 * s[~normal]).all()
    assert (back.abs() <= 448 * s).all()


@pytest.mark.parametrize("head_dim", [256, 80])
def test_int8_round_trip_error_is_at_most_half_a_step(head_dim):
    """Symmetric int8 against a bfloat16 scale >= amax / 127 (rounded up, less than one bf16 step
    above): every value within s / 2, the group's largest value within s / 2 of its own magnitude."""
    x = _magnitudes(256, head_dim, seed=1)
    rows = quantize(x, "int8")
    scales = _scales(rows, "int8", head_dim)
    amax = torch.nn.functional.pad(x.abs(), (0, -head_dim % GROUP)).view(256, -1, GROUP).amax(dim=2)
    assert (scales >= amax / 127).all() and (scales <= amax / 127 * (1 + 2.0**-7)).all()
    assert torch.equal(scales.to(torch.bfloat16).float(), scales), "scales are bfloat16 values"
    q = rows[:, :head_dim].view(torch.int8)
    assert int(q.min()) >= -127 and int(q.max()) <= 127
    err = (dequantize(rows, "int8", head_dim) - x).abs()
    assert (err <= _per_value(scales, head_dim) / 2).all()


def test_bf16_scales_round_up():
    s = torch.tensor([1.0, 1.0 + 2.0**-10, 3.0e38, 1e-40, 0.0, 7.7])
    up = bf16_scale_up(s)
    assert up.dtype == torch.bfloat16 and (up.float() >= s).all()
    assert up.float().tolist()[:2] == [1.0, 1.0 + 2.0**-7] and up[4] == 0


def test_zeros_and_extreme_values():
    zeros = torch.zeros(2, 64)
    for mode in ("fp8", "int8"):
        rows = quantize(zeros, mode)
        assert torch.equal(dequantize(rows, mode, 64), zeros)
    assert quantize(zeros, "fp8")[:, 64:].tolist() == [[0, 0], [0, 0]], "2^-127, the smallest UE8M0 scale"
    assert not quantize(zeros, "int8")[:, 64:].any()
    big = 1e38  # within one rounding step (1/16) of float32's largest, a value rounds to 2^128: inf
    x = torch.tensor([[big, -big / 3, 1e-30, 0.0] + [1.0] * 28, [1e-38, -2e-38, 5e-39] + [0.0] * 29])
    top = x.abs().argmax(dim=1, keepdim=True)
    for mode in ("fp8", "int8"):
        rows = quantize(x, mode)
        back = dequantize(rows, mode, 32)
        assert torch.isfinite(back).all()
        err = (back - x).abs()
        if mode == "fp8":  # 1e-38 / 448 is below UE8M0's 2^-127: clamped there, the values still land in E4M3's normal range
            assert (err.gather(1, top) <= 2.0**-4 * x.abs().gather(1, top)).all(), "the group's largest value survives"
        else:  # a subnormal bfloat16 scale is coarse, but the values are quantised against it
            assert (err <= _scales(rows, mode, 32) / 2).all()
            assert (err.gather(1, top) <= 2.0**-6 * x.abs().gather(1, top)).all()
    for bad in (math.inf, -math.inf, math.nan):
        with pytest.raises(ValueError, match="non-finite"):
            quantize(torch.tensor([[1.0, bad]]), "fp8")
    with pytest.raises(ValueError, match="unknown quantisation mode"):
        quantize(zeros, "int4")
    with pytest.raises(ValueError, match="expected uint8 rows"):
        dequantize(torch.zeros(2, 65, dtype=torch.uint8), "fp8", 64)


def test_quantisation_is_deterministic_and_row_local():
    x = torch.randn(50, 256, generator=torch.Generator().manual_seed(3))
    for mode in ("fp8", "int8"):
        rows = quantize(x, mode)
        assert torch.equal(rows, quantize(x.clone(), mode))
        assert torch.equal(rows[7:9], quantize(x[7:9], mode)), "a row's bytes depend on that row only"
        assert torch.equal(dequantize(rows, mode, 256), dequantize(rows.clone(), mode, 256))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["fp8", "int8"])
def test_rows_quantise_and_dequantise_on_the_gpu_as_on_the_cpu(mode):
    """The CUDA backend dequantises landed rows on the device (`row_values`): the same values."""
    x = _magnitudes(64, 80, seed=2)
    rows = quantize(x, mode)
    assert torch.equal(quantize(x.cuda(), mode).cpu(), rows)
    engram = Engram(head_dim=80, dtype=mode)
    for dtype in (torch.float32, torch.bfloat16):
        assert torch.equal(row_values(rows.cuda(), engram, dtype).cpu(), row_values(rows, engram, dtype))


# ---- the tables the backends fill, and the rows they carry ---------------------------------------------------
def test_every_dtype_stores_the_same_draws():
    """An fp8 or int8 table holds the quantised form of exactly the values an fp32 table of the same
    scenario holds (so `quality` compares formats, not two random tables)."""
    ref = seed_rows(100, Engram(head_dim=80, dtype="fp32"), torch.Generator().manual_seed(5))
    for mode in ("fp8", "int8", "bf16"):
        engram = Engram(head_dim=80, dtype=mode)
        rows = seed_rows(100, engram, torch.Generator().manual_seed(5))
        if mode == "bf16":
            assert torch.equal(rows, ref.to(torch.bfloat16))
        else:
            assert torch.equal(rows, quantize(ref, mode))
            assert torch.equal(row_values(rows, engram, torch.float32), dequantize(rows, mode, 80))
            assert torch.equal(row_values(rows, engram, torch.bfloat16), dequantize(rows, mode, 80).to(torch.bfloat16))


@pytest.mark.parametrize("dtype", ["fp8", "int8", "bf16"])
def test_stored_rows_are_what_fill_table_writes(dtype):
    """Layers filled in order from one generator, each a block repeated down its table."""
    engram = Engram(head_dim=48, dtype=dtype, layers=[1, 3])
    sizes = {1: FILL_BLOCK_ROWS + 1000, 3: 700}
    storage, width = table_format(engram)
    generator = torch.Generator().manual_seed(engram.seed)
    tables = {}
    for layer, n in sizes.items():
        tables[layer] = torch.empty(n, width, dtype=storage)
        fill_table(tables[layer], engram, generator)
    ids = {1: torch.tensor([[0, 5], [FILL_BLOCK_ROWS + 3, sizes[1] - 1]]), 3: torch.tensor([[699, 0]])}
    got = stored_rows(engram, sizes, ids)
    for layer in sizes:
        assert torch.equal(got[layer], tables[layer][ids[layer].reshape(-1)].view(*ids[layer].shape, width))


TINY = """
name: tiny-q
model:
  backbone: {layers: 3, hidden: 128, intermediate: 256, attention: {heads: 4, kv_heads: 2, head_dim: 32}, vocab: 4096, dtype: fp32}
  engram: {layers: [1], heads: 2, head_dim: 64, rows_per_head: 20000, hc_mult: 2}
hardware: h100-pcie
workload:
  trace: english-prose
  requests: 4
  prompt_len: {dist: uniform, low: 16, high: 48}
  output_len: {dist: uniform, low: 2, high: 4}
  batching: {max_num_seqs: 4, max_num_batched_tokens: 512}
run: {seed: 1, baseline: false, max_steps: 3}
"""


@pytest.fixture
def tiny(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.mark.parametrize("transport", ["staged", "zero-copy"])
def test_the_cpu_backend_moves_int8_rows_as_their_bytes(tiny, transport):
    """An int8 table is stored as its bytes (64 values + 2 bf16 scales = 68 B a row), every fetch
    moves that, and the simulator counts the same bytes."""
    scenario = load_scenario(tiny, ["model.engram.dtype=int8", f"strategies.transport={transport}"])
    assert scenario.model.engram.row_bytes == 68
    prepared = prepare(scenario, str(tiny))
    assert all(t.row_bytes == 68 for t in prepared.tables.values())
    outcome = run_real(prepared, "cpu")
    layers = [r for s in outcome.steps for r in s.layers]
    assert layers and sum(r.rows_fetched for r in layers) > 0
    assert all(r.bytes_fetched == r.rows_fetched * 68 for r in layers)


def test_the_scenario_takes_int8_and_names_the_field_for_a_bad_dtype():
    base = yaml.safe_load(TINY)
    assert scenario_from_dict(base, overrides=["model.engram.dtype=int8"]).model.engram.dtype == "int8"
    with pytest.raises(InputError) as err:
        scenario_from_dict(base, source="tiny.yaml", overrides=["model.engram.dtype=fp8-e5m2"])
    assert str(err.value).startswith("tiny.yaml: model.engram.dtype") and "fp8-e5m2" in str(err.value)
    assert "\n" not in str(err.value)


# ---- engramsim quality ---------------------------------------------------------------------------------------
def test_quality_command_orders_the_formats_and_writes_json(tiny, tmp_path, capsys):
    out = tmp_path / "q.json"
    assert main(["quality", str(tiny), "--modes", "fp32,bf16,int8,fp8", "--tokens", "300", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fp8" in printed and "int8" in printed and "wrote" in printed
    doc = json.loads(out.read_text())
    assert doc["tokens"] == 300 and doc["reference"] == "fp32" and doc["trace"] == "english-prose"
    by_mode = {r["mode"]: r for r in doc["results"]}
    assert list(by_mode) == ["fp32", "bf16", "int8", "fp8"]
    assert by_mode["fp32"]["embedding"]["max"] == 0 and by_mode["fp32"]["output"]["max"] == 0
    e = {m: by_mode[m]["embedding"]["mean"] for m in by_mode}
    assert 0 < e["bf16"] < e["int8"] < e["fp8"] < 2.0**-4, "bf16 keeps 8 bits, int8 ~7 against its group, e4m3 4"
    assert 1e-3 < e["bf16"] < 3e-3 and 2e-3 < e["int8"] < 1e-2 and 1.5e-2 < e["fp8"] < 4e-2
    for r in doc["results"]:
        stats = r["output"]
        assert stats["p50"] <= stats["p99"] <= stats["max"]
    assert by_mode["int8"]["row_bytes"] == 68 and by_mode["fp8"]["row_bytes"] == 66
    assert by_mode["fp8"]["token_bytes"] == 66 * 4
    # the same inputs give the same numbers
    again = tmp_path / "again.json"
    assert main(["quality", str(tiny), "--modes", "fp32,bf16,int8,fp8", "--tokens", "300", "--json", str(again)]) == 0
    assert json.loads(again.read_text())["results"] == doc["results"]


def test_quality_measures_the_tables_the_backends_fill(tiny):
    """The embeddings `quality` compares are the rows the executor's tables hold at the trace's rows."""
    from engramsim.backends.quality import memory_vectors, token_rows

    scenario = load_scenario(tiny, ["model.engram.dtype=int8"])
    rows, starts, table_rows, _, n = token_rows(scenario, str(tiny), 200)
    assert n == 200 and starts[0] == 0 and rows[1].shape == (200, scenario.model.engram.heads_per_layer)
    engram = scenario.model.engram
    storage, width = table_format(engram)
    table = torch.empty(table_rows[1], width, dtype=storage)
    fill_table(table, engram, torch.Generator().manual_seed(engram.seed))
    e = memory_vectors(engram, table_rows, rows)[1]
    expected = row_values(table[torch.from_numpy(rows[1]).reshape(-1)], engram, torch.float32).view(200, engram.d_mem)
    assert torch.equal(e, expected)


def _fails(args: list[str], capsys, *needles: str) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(("engramsim: error:", "engramsim quality: error:")), err
    for needle in needles:
        assert needle in err, err


def test_quality_bad_input_is_one_line_and_writes_nothing(tiny, tmp_path, capsys):
    out = tmp_path / "q.json"
    base = ["quality", str(tiny), "--json", str(out)]
    _fails([*base, "--modes", "bf16,int4"], capsys, "--modes", "int4")
    _fails([*base, "--tokens", "0"], capsys, "--tokens")
    _fails([*base, "--tokens", "many"], capsys, "--tokens")
    _fails(["quality", str(tmp_path / "missing.yaml")], capsys, "missing.yaml")
    _fails([*base, "--set", "model.engram.dtype=int4"], capsys, str(tiny), "model.engram.dtype")
    _fails([*base, "--set", "workload.trace=no-such-trace"], capsys, str(tiny), "workload.trace")
    _fails(["quality", str(tiny), "--json", str(tmp_path)], capsys, str(tmp_path))
    _fails(["quality", str(tiny), "--json", str(tiny)], capsys, str(tiny))  # the scenario itself
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.replace("tiny-q", "bad").replace("hc_mult: 2}", "hc_mult: 2, tokenizer: /no/tokenizer.json}"))
    _fails(["quality", str(bad), "--json", str(out)], capsys, str(bad), "model.engram.tokenizer")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "tiny.yaml"]


def test_quality_on_a_synthetic_trace_of_compressed_ids(tmp_path):
    """A trace holding compressed ids (tokenizer: null) is hashed as is."""
    from engramsim.backends.quality import measure
    from engramsim.traces.format import Trace, save_trace

    trace = tmp_path / "t.npz"
    ids = np.random.default_rng(0).integers(0, 500, 400)
    save_trace(Trace.from_documents([ids[:150], ids[150:]], name="t", tokenizer=None, vocab_size=500), trace)
    scenario = load_scenario(_written(tmp_path, TINY), [f"workload.trace={trace}"])
    report = measure(scenario, "s.yaml", ["int8"], 1000)
    assert report.tokens == 400 and report.documents == 2 and 0 < report.results[0].embedding.mean < 1e-2


def _written(d: Path, text: str) -> Path:
    path = d / "s.yaml"
    path.write_text(text)
    return path

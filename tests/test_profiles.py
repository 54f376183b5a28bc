"""Hardware presets and profile loading: every preset loads, links swap, bad input is one located line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from engramsim.errors import InputError
from engramsim.hardware.presets import link_names, load_link, load_profile, profile_names
from engramsim.hardware.profile import HardwareProfile

PROFILES = ["a10", "a100", "b200", "gh200", "h100-pcie", "h100-sxm", "h20", "h200", "h800", "l4", "l40s", "mi300x", "rtx-3090",
            "rtx-4090"]
LINKS = ["cxl", "nvlink-c2c", "pcie-gen3-x16", "pcie-gen4-x16", "pcie-gen5-x16", "pcie-gen6-x16"]
PRESETS_DIR = Path(__file__).resolve().parents[1] / "hardware" / "profiles"


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_shipped_names():
    assert profile_names() == PROFILES
    assert link_names() == LINKS


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_loads_with_provenance(name):
    profile = load_profile(name)
    assert isinstance(profile, HardwareProfile)
    assert profile.name == name
    assert profile.provenance.kind == "preset"
    assert profile.provenance.source
    assert profile.link.h2d_gbps <= 450  # nothing beats C2C's theoretical rate
    assert profile.link.zero_copy_gbps <= profile.link.h2d_gbps


@pytest.mark.parametrize("name", LINKS)
def test_every_link_loads_with_provenance(name):
    link, provenance = load_link(name)
    assert provenance.kind == "preset" and provenance.source
    swapped = load_profile("h800", link=name)
    assert swapped.link == link
    assert swapped.name == f"h800+{name}"
    assert f"link replaced by {name}" in swapped.provenance.source
    assert swapped.gpu == load_profile("h800").gpu and swapped.host == load_profile("h800").host


def test_natural_links():
    gen4 = ["a10", "a100", "l4", "l40s", "rtx-3090", "rtx-4090"]
    gen5 = ["b200", "h100-pcie", "h100-sxm", "h20", "h200", "h800", "mi300x"]
    assert {n: load_profile(n).link.name for n in PROFILES} == {
        **dict.fromkeys(gen4, "PCIe Gen4 x16"), **dict.fromkeys(gen5, "PCIe Gen5 x16"), "gh200": "NVLink-C2C"}


@pytest.mark.parametrize("name", PROFILES)
def test_every_preset_states_the_new_fields(name):
    """Set in the file, not left to the schema's defaults, so each value carries its source."""
    data = preset_dict(name)
    assert {"attention_efficiency", "sms", "gemm_tile_m", "gemm_tile_n"} <= set(data["gpu"])
    assert "step_overhead_per_seq_us" in data


def test_hand_checked_values():
    """Figures checked against the datasheets and whitepapers named in the files."""
    gpus = {n: load_profile(n).gpu for n in PROFILES}
    assert {n: g.sms for n, g in gpus.items()} == {
        "a10": 72, "a100": 108, "b200": 148, "gh200": 132, "h100-pcie": 114, "h100-sxm": 132, "h20": 78, "h200": 132,
        "h800": 132, "l4": 58, "l40s": 142, "mi300x": 304, "rtx-3090": 82, "rtx-4090": 128}
    assert (gpus["h20"].bf16_tflops, gpus["h20"].hbm_gbps) == (148.0, 4000.0)
    assert (gpus["b200"].bf16_tflops, gpus["b200"].hbm_gbps) == (2250.0, 8000.0)
    assert gpus["rtx-4090"].bf16_tflops == 165.2  # bf16 with fp32 accumulate, not the fp16-accumulate 330.3
    assert gpus["rtx-3090"].bf16_tflops == 71.0
    assert (gpus["l4"].hbm_gbps, gpus["a10"].hbm_gbps, gpus["mi300x"].hbm_gbps) == (300.0, 600.0, 5300.0)
    assert (gpus["mi300x"].bf16_tflops, gpus["mi300x"].gemm_tile_m, gpus["mi300x"].gemm_tile_n) == (1307.4, 256, 256)
    assert all((g.gemm_tile_m, g.gemm_tile_n) == (128, 128) for n, g in gpus.items() if n != "mi300x")


def test_pcie_generations_double():
    rates = [load_link(f"pcie-gen{g}-x16")[0].h2d_gbps for g in (3, 4, 5, 6)]
    assert all(1.6 < b / a < 2.5 for a, b in zip(rates, rates[1:]))


def preset_dict(name: str) -> dict:
    return yaml.safe_load((PRESETS_DIR / f"{name}.yaml").read_text())


def write(tmp_path: Path, data, name: str = "mine.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_profile_file_with_inline_link(tmp_path):
    data = preset_dict("h800")
    data["link"] = load_link("pcie-gen4-x16")[0].model_dump()
    profile = load_profile(write(tmp_path, data))
    assert profile.link.name == "PCIe Gen4 x16" and profile.gpu == load_profile("h800").gpu
    assert load_profile(str(write(tmp_path, data))).link.h2d_gbps == 25.0  # a str path works too


def test_link_override_from_a_file(tmp_path):
    link = {"link": {**load_link("cxl")[0].model_dump(), "name": "my CXL 3", "h2d_gbps": 94.0},
            "provenance": {"kind": "preset", "source": "my guess"}}
    path = write(tmp_path, link, "cxl3.yaml")
    profile = load_profile("h200", link=str(path))
    assert profile.link.h2d_gbps == 94.0 and "my guess" in profile.provenance.source


def test_profile_link_relative_to_its_file(tmp_path):
    write(tmp_path, {"link": load_link("pcie-gen6-x16")[0].model_dump(), "provenance": {"kind": "preset", "source": "x"}},
          "gen6.yaml")
    data = preset_dict("h800")
    data["link"] = "gen6.yaml"
    assert load_profile(write(tmp_path, data)).link.name == "PCIe Gen6 x16"


# ---- errors ------------------------------------------------------------------------------------
def test_unknown_profile_lists_presets():
    with pytest.raises(InputError) as exc:
        load_profile("h900")
    text = one_line(exc)
    assert "h900" in text and "hardware.profile" in text and all(name in text for name in PROFILES)


def test_unknown_link_lists_links():
    with pytest.raises(InputError) as exc:
        load_profile("h800", link="pcie-gen7-x16")
    text = one_line(exc)
    assert "pcie-gen7-x16" in text and "hardware.link" in text and all(name in text for name in LINKS)


def test_missing_file(tmp_path):
    with pytest.raises(InputError) as exc:
        load_profile(tmp_path / "nope.yaml")
    assert "nope.yaml" in one_line(exc) and "no such" in str(exc.value)


def test_broken_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "name: x\ngpu: {name: [unclosed\n")
    with pytest.raises(InputError) as exc:
        load_profile(path)
    text = one_line(exc)
    assert str(path) in text and "invalid YAML" in text and "line" in text


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(InputError) as exc:
        load_profile(write(tmp_path, "- a\n- b\n"))
    assert "mapping" in one_line(exc)


@pytest.mark.parametrize(
    ("edit", "field", "words"),
    [
        (lambda d: d["gpu"].update(bf16_tflops=-1), "gpu.bf16_tflops", "greater than or equal to 0.000000001"),
        (lambda d: d["gpu"].update(compute_efficiency=1.5), "gpu.compute_efficiency", "less than or equal to 1"),
        (lambda d: d["host"].update(gather_threads="many"), "host.gather_threads", "'many'"),
        (lambda d: d["gpu"].update(tflops=1), "gpu.tflops", "unknown key"),
        (lambda d: d["host"].pop("dram_gbps"), "host.dram_gbps", "missing"),
        (lambda d: d.update(link="pcie-gen9-x16"), "link", "pcie-gen5-x16"),
    ],
)
def test_bad_field_names_file_and_field(tmp_path, edit, field, words):
    data = preset_dict("h800")
    edit(data)
    path = write(tmp_path, data)
    with pytest.raises(InputError) as exc:
        load_profile(path)
    text = one_line(exc)
    assert exc.value.source == str(path) and exc.value.field == field
    assert text.startswith(f"{path}: {field}: ") and words in text


def test_bad_link_file_names_file_and_field(tmp_path):
    path = write(tmp_path, {"link": {**load_link("cxl")[0].model_dump(), "h2d_gbps": 0},
                            "provenance": {"kind": "preset", "source": "x"}}, "bad-link.yaml")
    with pytest.raises(InputError) as exc:
        load_profile("h800", link=str(path))
    assert one_line(exc).startswith(f"{path}: link.h2d_gbps: ")
    path = write(tmp_path, {"link": load_link("cxl")[0].model_dump()}, "no-provenance.yaml")
    with pytest.raises(InputError) as exc:
        load_link(path)
    assert exc.value.field == "provenance"


# ---- the README's tables are the YAML's numbers ---------------------------------------------
def _g(value: float) -> str:
    return f"{value / 1e6:g} M" if value >= 1e6 else f"{value:g}"


def readme_rows(name: str) -> list[list[str]]:
    lines = (PRESETS_DIR / "README.md").read_text().splitlines()
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if line.startswith(f"| `{name}` |")]


@pytest.mark.parametrize("name", PROFILES)
def test_readme_lists_every_profile_number(name):
    p = load_profile(name)
    gpu, host = p.gpu, p.host
    assert gpu.attention_efficiency is not None and gpu.sms is not None
    gpu_numbers = [gpu.bf16_tflops, gpu.hbm_gbps, gpu.hbm_gib, gpu.compute_efficiency, gpu.memory_efficiency,
                   gpu.layer_overhead_us, gpu.attention_efficiency, gpu.sms]
    host_numbers = [host.dram_gbps, host.dram_gib, host.gather_rows_per_s, host.gather_threads, host.gather_overhead_us,
                    p.step_overhead_us, p.step_overhead_per_seq_us]
    rows = readme_rows(name)
    assert len(rows) == 2, f"{name} needs one GPU row and one host row in README.md"
    assert rows[0][2:10] == [_g(x) for x in gpu_numbers]
    assert rows[0][10] == f"{gpu.gemm_tile_m}x{gpu.gemm_tile_n}"
    assert rows[1][2:9] == [_g(x) for x in host_numbers]


@pytest.mark.parametrize("name", LINKS)
def test_readme_lists_every_link_number(name):
    link = load_link(name)[0]
    (row,) = readme_rows(name)
    numbers = [link.h2d_gbps, link.d2h_gbps, link.dma_latency_us, link.zero_copy_gbps, link.zero_copy_latency_us,
               link.transaction_bytes]
    assert row[1] == link.name and row[2:8] == [_g(x) for x in numbers]


# ---- every number in a preset file says where it comes from ------------------------------------
NUMBER_LINE = re.compile(r"^\s*(\w+):\s*([^\s#]+)\s*(?:#(.*))?$")
PRESET_FILES = sorted(PRESETS_DIR.glob("*.yaml")) + sorted((PRESETS_DIR / "links").glob("*.yaml"))


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def numeric_leaves(node: Any) -> int:
    if isinstance(node, dict):
        return sum(numeric_leaves(value) for value in node.values())
    return int(is_number(node))


def numbers_and_bare(path: Path) -> tuple[int, list[str]]:
    """How many numbers the file's lines hold, and those with no comment after them."""
    found, bare = 0, []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        match = NUMBER_LINE.match(line)
        if match is None or not is_number(yaml.safe_load(match[2])):
            continue
        found += 1
        if not (match[3] or "").strip():
            bare.append(f"{path.name}:{number} {match[1]}")
    return found, bare


@pytest.mark.parametrize("path", PRESET_FILES, ids=lambda path: path.name)
def test_every_number_carries_a_source_comment(path):
    found, bare = numbers_and_bare(path)
    assert found == numeric_leaves(yaml.safe_load(path.read_text())), "a number the line scan did not see"
    assert not bare, f"numbers without a source comment: {bare}"


def test_a_bare_number_is_caught(tmp_path):
    path = write(tmp_path, "gpu:\n  sms: 132  # whitepaper\n  gemm_tile_m: 128\n")
    assert numbers_and_bare(path) == (2, ["mine.yaml:3 gemm_tile_m"])

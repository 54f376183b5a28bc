"""The plugin registry: built-ins, `build` with params, and third-party plugins via entry points."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from engramsim import registry
from engramsim.cli import main
from engramsim.errors import InputError
from engramsim.scenario import Engram, Scenario, StrategyChoice
from engramsim.scheduler import Scheduler
from engramsim.strategies import Cache, HashingSetup, Params, SetupContext, Stage, StageKind, StepView, TableInfo, Tier
from tests.test_run import SMALL

PLUGIN_PKG = Path(__file__).parent / "plugin_pkg"
BUILTINS = {
    "scheduler": ["nano-vllm", "vllm"],
    "hashing": ["engram"],
    "placement": ["all-hbm", "all-host"],
    "cache": ["none"],
    "prefetch": ["layer-ahead", "on-demand"],
    "transport": ["staged", "zero-copy"],
}


@pytest.fixture
def setup() -> SetupContext:
    """Two small tables; the baselines never read the hardware profile, so none is built."""
    tables = {
        layer: TableInfo(layer, rows, 160, np.array([rows // 2, rows - rows // 2]), np.array([0, rows // 2]))
        for layer, rows in ((1, 1000), (15, 3000))
    }
    return SetupContext(Scenario(name="t"), tables, hardware=None, seed=0)  # type: ignore[arg-type]


def view() -> StepView:
    return StepView(step=None)  # type: ignore[arg-type]  (the baselines ignore the step)


def test_builtins_are_registered():
    for kind, expected in BUILTINS.items():
        assert set(expected) <= set(registry.names(kind))
    listed = {(kind, name) for kind, name, _ in registry.plugins()}
    assert {(k, n) for k, names in BUILTINS.items() for n in names} <= listed
    kinds = [kind for kind, _, _ in registry.plugins()]
    assert kinds == sorted(kinds, key=registry.KINDS.index)


def test_every_builtin_has_params_and_a_one_line_doc():
    for kind, name, cls in registry.plugins():
        assert issubclass(registry.params_model(cls), Params)
        assert registry.summary(cls) and "\n" not in registry.summary(cls), (kind, name)
        assert (cls.kind, cls.name) == (kind, name)


def test_get_unknown_lists_known_names():
    with pytest.raises(KeyError, match="known: all-hbm, all-host"):
        registry.get("placement", "nvme-only")


def test_register_rejects_unknown_kind_and_duplicates():
    with pytest.raises(ValueError, match="unknown plugin kind"):
        registry.register("sampler", "x")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("cache", "none")(type("Other", (Cache,), {}))


def test_a_scheduler_takes_the_engines_params():
    """Every scheduler's params carry what the session sizes the KV cache with; bad values are refused."""
    with pytest.raises(TypeError, match="must subclass engramsim.scheduler.Scheduler"):
        registry.register("scheduler", "not-a-scheduler")(type("NotAScheduler", (Cache,), {}))
    with pytest.raises(TypeError, match="Params must subclass engramsim.scheduler.SchedulerParams"):
        registry.register("scheduler", "odd-params")(type("OddParams", (Scheduler,), {"Params": Params}))
    assert registry.scheduler_params(StrategyChoice(name="nano-vllm")).block_size == 256
    assert registry.scheduler_params(StrategyChoice(name="vllm")).block_size == 16
    for bad in ({"gpu_memory_utilization": 0}, {"gpu_memory_utilization": 1.5}, {"kv_blocks": 0}, {"block_size": 0}, {"speed": 2}):
        with pytest.raises(ValidationError):
            registry.scheduler_params(StrategyChoice(name="vllm", params=bad))


def test_build_validates_params(setup):
    early = registry.build("prefetch", StrategyChoice(name="layer-ahead", params={"lead_blocks": 2}), setup)
    assert early.issue_layer(15, view()) == 13
    assert early.issue_layer(1, view()) == 0
    with pytest.raises(ValidationError):
        registry.build("prefetch", StrategyChoice(name="layer-ahead", params={"lead_blocks": 0}), setup)
    with pytest.raises(ValidationError):
        registry.build("transport", StrategyChoice(name="staged", params={"threads": 4}), setup)
    with pytest.raises(KeyError):
        registry.build("cache", StrategyChoice(name="no-such-cache"), setup)
    hashing = registry.build_hashing(StrategyChoice(name="engram"), HashingSetup(Engram(layers=[1], rows_per_head=1000), 500, 0))
    assert hashing.rows_per_layer[1] == int(hashing.head_sizes[1].sum()) and hashing.head_sizes[1].min() > 1000
    with pytest.raises(ValidationError):
        registry.build_hashing(StrategyChoice(name="engram", params={"seed": 1}), HashingSetup(Engram(), 500, 0))


def test_a_plugin_must_subclass_its_kinds_interface():
    with pytest.raises(TypeError, match="must subclass engramsim.strategies.Cache"):
        registry.register("cache", "not-a-cache")(type("NotACache", (), {}))


def test_hashing_plugin_takes_no_params():
    assert registry.params_model(registry.get("hashing", "engram")).model_fields == {}


def test_baselines_behave(setup):
    build = lambda kind, name: registry.build(kind, StrategyChoice(name=name), setup)  # noqa: E731
    rows = np.array([3, 7, 999])
    total = 4000 * 160
    assert build("placement", "all-hbm").bytes_per_tier() == {Tier.HBM: total}
    assert build("placement", "all-host").bytes_per_tier() == {Tier.HOST: total}
    assert build("placement", "all-host").tier_of(1, rows).tolist() == [Tier.HOST] * 3
    assert build("placement", "all-hbm").tier_of(1, rows).dtype == np.uint8
    cache = build("cache", "none")
    assert cache.capacity_rows(1) == 0 and not cache.lookup(1, rows, view()).any()
    assert build("prefetch", "on-demand").issue_layer(15, view()) == 15
    assert build("prefetch", "layer-ahead").issue_layer(15, view()) == 0
    assert build("transport", "staged").stages(10, 160) == [Stage(StageKind.GATHER, 10, 1600), Stage(StageKind.H2D, 10, 1600)]
    assert build("transport", "zero-copy").stages(10, 160) == [Stage(StageKind.ZERO_COPY, 10, 1600)]


def test_plugins_command_lists_builtins(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for names in BUILTINS.values():
        for name in names:
            assert name in out
    assert "lead_blocks: int > 0 | None = None" in out


def test_entry_point_naming_an_unregistered_class_is_one_clear_error():
    ep = importlib.metadata.EntryPoint(name="odd", value="collections:OrderedDict", group=registry.ENTRY_POINT_GROUP)
    with pytest.raises(InputError, match="entry point 'odd'.*OrderedDict is not registered"):
        registry._load_entry_point(ep)


# ---- third-party plugins, in a fresh interpreter ------------------------------------------------
def engramsim(args: list[str], site: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `python -m engramsim` with `site` on the import path, as if the package were installed."""
    env = dict(os.environ, COLUMNS="200")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "engramsim", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def demo_site(tmp_path_factory) -> Path:
    """tests/plugin_pkg installed with pip into a folder (copied first: building writes beside the source)."""
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode != 0:
        pytest.skip("pip is not available to install the demo plugin package")
    root = tmp_path_factory.mktemp("demo")
    source = shutil.copytree(PLUGIN_PKG, root / "src")
    site = root / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-build-isolation", "--no-deps",
         "--disable-pip-version-check", "--target", str(site), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stderr
    return site


def test_third_party_plugin_is_discovered(demo_site, tmp_path):
    listing = engramsim(["plugins"], demo_site, tmp_path)
    assert listing.returncode == 0, listing.stderr
    line = next(line for line in listing.stdout.splitlines() if "demo-ahead" in line)
    assert "prefetch" in line and "blocks: int > 0 = 1" in line and "fixed number of blocks" in line

    scenario = tmp_path / "demo.yaml"
    scenario.write_text("name: demo\nstrategies:\n  prefetch: {name: demo-ahead, params: {blocks: 2}}\n")
    ok = engramsim(["check", str(scenario)], demo_site, tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "prefetch=demo-ahead" in ok.stdout

    bad = engramsim(["check", str(scenario), "--set", "strategies.prefetch.params.blocks=0"], demo_site, tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "strategies.prefetch.params.blocks: " in bad.stderr


def test_broken_entry_point_is_one_line_naming_it(tmp_path):
    """A hand-written dist-info is enough for importlib.metadata to report an entry point."""
    site = tmp_path / "site"
    info = site / "broken_demo-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[engramsim.plugins]\nbroken = engramsim_no_such_module\n")
    result = engramsim(["plugins"], site, tmp_path)
    assert result.returncode == 2
    assert result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert "entry point 'broken' = 'engramsim_no_such_module'" in lines[0]
    assert "broken-demo" in lines[0] and "ModuleNotFoundError" in lines[0]


DEMO_STRATEGIES = [
    "strategies.hashing={name: demo-modulo, params: {rows_per_head: 4001}}",
    "strategies.cache={name: demo-lru, params: {rows: 2000}}",
    "strategies.prefetch={name: demo-next-step, params: {block: 3}}",
    "run.outputs.plot=false", "run.outputs.timeline=false",
]


def test_a_policy_and_a_metric_are_one_file_each(demo_site, tmp_path):
    """The recipes of docs/design.md: a cache with a capacity, a prefetch that leads by a step, a
    hashing and a metric, each one module of tests/plugin_pkg plus its entry point, run end to end."""
    listing = engramsim(["plugins"], demo_site, tmp_path)
    for name in ("demo-lru", "demo-next-step", "demo-guess", "demo-modulo"):
        assert name in listing.stdout
    scenario = tmp_path / "demo-run.yaml"
    scenario.write_text(SMALL)
    sets = [arg for item in DEMO_STRATEGIES for arg in ("--set", item)]
    done = engramsim(["run", str(scenario), "--out", str(tmp_path / "out"), *sets], demo_site, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "DMA time" in done.stdout
    summary = json.loads((tmp_path / "out" / "results.json").read_text())["summary"]
    assert summary["demo_h2d_ms_total"] > 0 and summary["cache_hits"] > 0
    steps = list(csv.DictReader((tmp_path / "out" / "steps.csv").open()))
    assert all(int(s["rows_unique"]) == int(s["rows_hbm"]) + int(s["rows_missed"]) for s in steps)
    assert max(int(s["rows_unique"]) for s in steps) <= 2 * 16 * 4001  # two layers of 16 heads x 4001 rows

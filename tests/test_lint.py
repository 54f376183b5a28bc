"""ruff, mypy and the import-layer contracts (pyproject.toml) over the package, as part of the tests.

mypy and import-linter read packages from the file system, and the design card's folders install
as `engramsim.*` subpackages through package-dir; both therefore run over a tree of symbolic
links laid out as the installed package is.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def package_tree(tmp_path_factory) -> Path:
    """tmp/engramsim laid out as installed: engramsim/* plus one link per package-dir folder."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dirs = config["tool"]["setuptools"]["package-dir"]
    root = tmp_path_factory.mktemp("tree")
    package = root / "engramsim"
    package.mkdir()
    for entry in (ROOT / "engramsim").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name, folder in dirs.items():
        if name != "engramsim":
            (package / name.split(".", 1)[1]).symlink_to(ROOT / folder)
    return root


def tool(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        pytest.fail(f"{name} is not installed (pip install -e '.[test]')")
    return str(path)


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]


def test_ruff():
    run([tool("ruff"), "check", "."], ROOT)


def test_import_layers(package_tree):
    run([tool("lint-imports"), str(ROOT / "pyproject.toml")], package_tree, dict(os.environ, PYTHONPATH=str(package_tree)))


def test_mypy(package_tree):
    run([tool("mypy"), "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(package_tree / ".mypy_cache"),
         "-p", "engramsim"], package_tree, dict(os.environ, MYPYPATH=str(package_tree)))


def test_every_module_has_a_layer():
    """A new module of engramsim/ joins the core contract or is named as a top-layer module, so
    import-linter checks it (docs/design.md, Layers)."""
    tomllib = pytest.importorskip("tomllib")
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    core, top = set(contracts[0]["source_modules"]), set(contracts[0]["forbidden_modules"])
    modules = {f"engramsim.{p.stem}" for p in (ROOT / "engramsim").glob("*.py") if p.stem not in ("__init__", "__main__")}
    modules |= {f"engramsim.{p.name}" for p in (ROOT / "engramsim").iterdir() if (p / "__init__.py").exists()}
    assert modules - core - top == set()

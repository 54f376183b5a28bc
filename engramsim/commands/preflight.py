"""Every check `run` makes before it works, shared with `check` so that an OK means the run starts.

Order: the scenario file and its fields, the output folder (so a bad `--out` fails in the first
second), the GPU for a CUDA run, then `session.prepare` (profile and link, trace and tokenizer
files, the trace's vocabulary and length, plugins, host and HBM capacities) and, for a real
run, what it will cost in time and memory (engramsim/estimate.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rich.console import Console

from engramsim.files import check_output
from engramsim.runner import fresh_run_dir
from engramsim.scenario import Scenario
from engramsim.scenario_io import load_scenario
from engramsim.session import Prepared, prepare


def default_scenario() -> Path:
    """The quickstart scenario shipped inside the package (the embedded default)."""
    return Path(str(resources.files("engramsim.scenarios").joinpath("quickstart.yaml")))


def add_preflight_args(p: argparse.ArgumentParser) -> None:
    """The flags `run` and `check` share, so `check` is asked exactly what `run` will be asked."""
    p.add_argument("--backend", choices=("sim", "cpu", "cuda"), default=None, help="overrides run.backend")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: a fresh folder under runs/)")
    p.add_argument("--force", action="store_true", help="replace an existing --out folder whole")
    p.add_argument("--yes", action="store_true", help="run a real backend even when it is estimated to take long")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a scenario field, validated like the file (repeatable)")


@dataclass
class Target:
    """A validated scenario and the run folder it will write: what the first second checks."""

    scenario: Scenario
    source: str
    out_dir: Path


@dataclass
class Ready:
    prepared: Prepared
    estimate: str | None  # a real run's predicted time and memory, one line


def target(args: argparse.Namespace) -> Target:
    """The scenario file, its fields and the output folder; raise `InputError` (one line) at the
    first problem. Fast and creates nothing, so a bad `--out` fails before any work."""
    path = args.scenario or default_scenario()
    overrides = list(args.overrides) + ([f"run.backend={args.backend}"] if args.backend else [])
    scenario = load_scenario(path, overrides)
    out_dir = args.out or fresh_run_dir(Path("runs"), scenario.name, scenario.run.seed)
    check_output(out_dir, folder=True, force=args.force)
    return Target(scenario, str(path), out_dir)


def ready(args: argparse.Namespace, where: Target, console: Console, ask: Callable[[str], bool] | None = None) -> Ready:
    """The checks that need the scenario's files and the machine: GPU, `prepare`, a real run's cost
    (`ask`: asked whether to go ahead with a long real run; without it, a long run needs --yes)."""
    scenario = where.scenario
    backend = scenario.run.backend
    if backend == "cuda":  # before the workload is built: no GPU, no work
        from engramsim.backends.cuda import require_gpu

        require_gpu(where.source)
    with console.status(f"preparing {scenario.name!r}: profile, trace, hashing {scenario.workload.requests:,} requests"):
        prepared = prepare(scenario, where.source)
    estimate = None
    if backend != "sim":
        from engramsim.estimate import preflight_real

        estimate = preflight_real(prepared, backend, args.yes, ask)
    return Ready(prepared, estimate)


def ask_on_terminal(console: Console) -> Callable[[str], bool] | None:
    """On a terminal, a long real run asks before it starts; elsewhere (scripts, CI) it needs --yes."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return None

    def ask(estimate: str) -> bool:
        try:
            answer = console.input(f"{estimate}\nthat is a long run; run it anyway? [y/N] ", markup=False)
        except EOFError:  # Ctrl-D: no
            return False
        return answer.strip().lower() in ("y", "yes")

    return ask

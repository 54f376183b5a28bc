"""`engramsim check`: every check `run` makes, without running, so mistakes surface in seconds.

It loads the scenario, checks the output folder, prepares the run (profile, link, trace and
tokenizer files, vocabulary, plugins, capacities) and, for a real backend, estimates its cost;
an OK means `run` with the same arguments starts. It creates no file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from engramsim.commands import HELP
from engramsim.commands.preflight import add_preflight_args, ready, target
from engramsim.registry import KINDS
from engramsim.scenario import Scenario


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help=HELP["check"])
    p.add_argument("scenario", nargs="?", type=Path, default=None, help="scenario YAML (default: quickstart)")
    add_preflight_args(p)
    p.set_defaults(handler=check)


def summary(scenario: Scenario) -> str:
    """One line: what model, which Engram layers, which hardware and strategies."""
    backbone, engram = scenario.model.backbone, scenario.model.engram
    mlp = f"MoE {backbone.moe.experts}x top-{backbone.moe.top_k}" if backbone.moe else "dense"
    strategies = " ".join(f"{kind}={getattr(scenario.strategies, kind).name}" for kind in KINDS)
    node = scenario.hardware.node
    shared = (f" (a node of {node.gpus} GPUs on {node.numa_nodes} socket(s), {node.gpus_per_switch} per switch, tables "
              f"{node.table_copies})") if node is not None and node.shared else ""
    return (
        f"scenario {scenario.name!r}: {backbone.layers} blocks x {backbone.hidden} ({mlp}); "
        f"Engram layers {engram.layers} ({engram.max_ngram - 1} orders x {engram.heads} heads, "
        f"{engram.head_dim}-dim {engram.dtype}); hardware {scenario.hardware.profile}{shared}; {strategies}"
    )


def check(args: argparse.Namespace) -> int:
    where = target(args)
    checked = ready(args, where, Console(stderr=True))
    scenario = checked.prepared.scenario
    print(f"{where.source}: OK: {summary(scenario)}; {scenario.run.backend} run into {where.out_dir}")
    if checked.estimate:
        print(checked.estimate)
    return 0

"""`engramsim check`: validate a scenario without running it, so YAML mistakes surface in a second."""

from __future__ import annotations

import argparse
from pathlib import Path

from engramsim.registry import KINDS
from engramsim.scenario import Scenario
from engramsim.scenario_io import load_scenario


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="validate a scenario file and print a one-line summary")
    p.add_argument("scenario", type=Path, help="scenario YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a scenario field, validated like the file (repeatable)")
    p.set_defaults(handler=check)


def summary(scenario: Scenario) -> str:
    """One line: what model, which Engram layers, which hardware and strategies."""
    backbone, engram = scenario.model.backbone, scenario.model.engram
    mlp = f"MoE {backbone.moe.experts}x top-{backbone.moe.top_k}" if backbone.moe else "dense"
    strategies = " ".join(f"{kind}={getattr(scenario.strategies, kind).name}" for kind in KINDS)
    return (
        f"scenario {scenario.name!r}: {backbone.layers} blocks x {backbone.hidden} ({mlp}); "
        f"Engram layers {engram.layers} ({engram.max_ngram - 1} orders x {engram.heads} heads, "
        f"{engram.head_dim}-dim {engram.dtype}); hardware {scenario.hardware.profile}; {strategies}"
    )


def check(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario, args.overrides)
    print(f"{args.scenario}: OK: {summary(scenario)}")
    return 0

"""`engramsim schema`: the scenario's JSON Schema, so editors complete and check YAML as it is typed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engramsim.commands import HELP
from engramsim.files import write_text_atomic
from engramsim.scenario import Scenario


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("schema", help=HELP["schema"])
    p.add_argument("--out", type=Path, default=None, help="write to this file instead of stdout")
    p.set_defaults(handler=schema)


def scenario_schema() -> dict:
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **Scenario.model_json_schema()}


def schema(args: argparse.Namespace) -> int:
    text = json.dumps(scenario_schema(), indent=2) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        write_text_atomic(args.out, text)
    return 0

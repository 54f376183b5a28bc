"""The `engramsim` command line: one subcommand per module in engramsim.commands."""

from __future__ import annotations

import argparse
import importlib
import sys

from engramsim.errors import InputError

COMMANDS = ("hash", "trace", "check", "schema", "plugins", "run", "diff", "hw", "calibrate", "validate")


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit 2 like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="engramsim", description=__import__("engramsim").__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"engramsim.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # usage errors and --help: return the code instead of raising
        return int(exc.code or 0)
    try:
        return int(args.handler(args) or 0)
    except InputError as exc:
        print(f"engramsim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("engramsim: interrupted", file=sys.stderr)
        return 130

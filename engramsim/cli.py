"""The `engramsim` command line: one subcommand per module in engramsim.commands."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
from collections.abc import Iterator

import engramsim
from engramsim.errors import InputError, Terminated

COMMANDS = ("hash", "trace", "check", "schema", "plugins", "run", "diff", "hw", "calibrate", "validate")


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit 2 like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="engramsim", description=engramsim.__doc__)
    parser.add_argument("--version", action="version", version=f"engramsim {engramsim.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"engramsim.commands.{name}").add_parser(sub)
    return parser


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so temporary files and staged run folders are removed."""

    def handler(signum: int, frame: object) -> None:
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (an embedding program): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Every failure a user can cause ends as one stderr line: 2 for bad input, 130 for Ctrl-C,
    143 for SIGTERM; nothing half-written is left behind (engramsim/files.py)."""
    with _sigterm_raises():
        try:
            args = build_parser().parse_args(argv)
            return int(args.handler(args) or 0)
        except SystemExit as exc:  # usage errors, --help and --version: return the code instead of raising
            return int(exc.code or 0)
        except InputError as exc:
            return _fail(str(exc), 2)
        except OSError as exc:  # a file the user named or a full disk, met after the checks
            where = f"{exc.filename}: " if exc.filename else ""
            return _fail(f"{where}{exc.strerror or exc}", 2)
        except MemoryError:
            return _fail("out of memory; make the scenario smaller (workload.requests, model.engram.rows_per_head)", 2)
        except KeyboardInterrupt:
            return _fail("interrupted", 130)
        except Terminated:
            return _fail("terminated", 143)


def _fail(message: str, code: int) -> int:
    print(f"engramsim: error: {message}" if code == 2 else f"engramsim: {message}", file=sys.stderr)
    return code

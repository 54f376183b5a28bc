"""The `engramsim` command line: one subcommand per module in engramsim.commands."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
from collections.abc import Iterator
from typing import Any

import engramsim
from engramsim.commands import HELP
from engramsim.errors import InputError, Terminated, forget_signals, raise_if_signalled, signalled

COMMANDS = tuple(HELP)  # hash, trace, collisions, quality, check, schema, plugins, run, compare, sweep, plot, diff, hw, calibrate, validate


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit 2 like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


class _Commands(argparse._SubParsersAction):
    """The subcommands, each listed by its line in `commands.HELP` and its module imported only
    when it is chosen: `engramsim --help` loads none of them (numpy, the plugins, rich), and a
    command loads only its own. A chosen command's placeholder gives way to the parser its
    module's `add_parser` builds."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loaded: set[str] = set()  # the commands whose modules built their parsers

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: str | None = None) -> None:
        name = values[0] if values else None
        if name in COMMANDS and name not in self.loaded:
            del self._name_parser_map[name]
            self._choices_actions = [action for action in self._choices_actions if action.dest != name]
            importlib.import_module(f"engramsim.commands.{name}").add_parser(self)
            self.loaded.add(name)
        super().__call__(parser, namespace, values, option_string)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="engramsim", description=engramsim.__doc__)
    parser.add_argument("--version", action="version", version=f"engramsim {engramsim.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, action=_Commands)
    for name in COMMANDS:
        sub.add_parser(name, help=HELP[name])
    return parser


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP (a closed terminal) unwind the run, so temporary files and
    staged run folders are removed; each is noted too (`errors.signalled`), so that one raised
    inside a finalizer, which Python swallows, still ends the run."""

    def handler(signum: int, frame: object) -> None:
        raise signalled(KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum))

    def unraisable(info: sys.UnraisableHookArgs) -> None:
        if not isinstance(info.exc_value, (KeyboardInterrupt, Terminated)):  # those are noted: no second line
            previous_hook(info)

    caught = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    try:
        previous = [signal.signal(sig, handler) for sig in caught]
    except ValueError:  # not the main thread (an embedding program): leave signals alone
        yield
        return
    previous_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    forget_signals()
    try:
        yield
    finally:
        forget_signals()  # the command has ended as the signal it noted, if any: code run after it starts clean
        sys.unraisablehook = previous_hook
        for sig, old in zip(caught, previous, strict=True):
            signal.signal(sig, old)


def main(argv: list[str] | None = None) -> int:
    """Every failure a user can cause ends as one stderr line: 2 for bad input, 130 for Ctrl-C,
    143 for SIGTERM, 129 for SIGHUP; nothing half-written is left behind (engramsim/files.py)."""
    with _signals_raise():
        try:
            try:
                args = build_parser().parse_args(argv)
                code = int(args.handler(args) or 0)
            except Exception:  # a signal that landed inside a library's callback comes back wrapped (pydantic's serializer)
                raise_if_signalled()
                raise
            raise_if_signalled()  # a signal a finalizer swallowed still ends the command as a signal
            return code
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
        except Terminated as exc:
            signum = exc.args[0]
            return _fail("terminated" if signum == signal.SIGTERM else "hung up", 128 + signum)


def _fail(message: str, code: int) -> int:
    print(f"engramsim: error: {message}" if code == 2 else f"engramsim: {message}", file=sys.stderr)
    return code

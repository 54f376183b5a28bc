"""One error type for bad input, so the CLI can print one located line and exit 2."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad user input: message names the input (file), the field and what was expected."""

    def __init__(self, source: str | Path, problem: str, field: str | None = None) -> None:
        self.source = str(source)
        self.field = field
        self.problem = problem
        where = f"{self.source}: {field}" if field else self.source
        super().__init__(f"{where}: {problem}")


class Terminated(BaseException):
    """SIGTERM or SIGHUP (its number is the argument), raised in the main thread so that every
    `finally` and cleanup runs, as for Ctrl-C."""


_signalled: list[BaseException] = []


def signalled(exc: BaseException) -> BaseException:
    """Note the exception a signal raises, and return it. Python drops an exception raised inside
    a finalizer (a generator or object being collected when the signal lands) after printing it,
    so the note is what makes the signal stick: see `raise_if_signalled`."""
    _signalled.append(exc)
    return exc


def raise_if_signalled() -> None:
    """Raise the exception of a signal received so far, even one a finalizer swallowed: called
    before a result is moved into place, so an interrupted run never publishes output."""
    if _signalled:
        raise _signalled[-1]


def forget_signals() -> None:
    """Start a command with no signal noted (a program may call the CLI more than once)."""
    _signalled.clear()

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
    """SIGTERM, raised in the main thread so that every `finally` and cleanup runs, as for Ctrl-C."""

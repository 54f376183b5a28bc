"""Reading user text files with located errors."""

from __future__ import annotations

from pathlib import Path

from engramsim.errors import InputError


def read_text(path: Path) -> str:
    """The file as UTF-8 text; missing, unreadable, non-UTF-8 or empty files are InputErrors."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(path, f"cannot read text file ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not UTF-8 text (invalid byte at offset {exc.start})") from None
    if not text.strip():
        raise InputError(path, "text file is empty")
    return text

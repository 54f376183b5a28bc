"""Atomic output: a result file or run folder is either complete or absent, never half-written.

Every output path is checked before any work (`check_output`), so a bad `--out` fails in the
first second with one line, not after a long run. Files and folders get the modes the user's
umask asks for, as `open()` and `mkdir` would give them (temporary files start at 0600).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from engramsim.errors import InputError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _missing_parents(path: Path) -> list[Path]:
    """The ancestors of `path` that do not exist yet, outermost first."""
    missing = []
    for parent in path.absolute().parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing[::-1]


def check_output(path: str | Path, *, folder: bool = False, force: bool = False) -> Path:
    """Refuse an output path that cannot be written, before any work is done.

    A file path must not be a folder; a run folder (`folder`) must not exist unless `force`
    replaces it whole. The nearest existing ancestor must be a writable folder.
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        if folder and not path.is_dir():
            raise InputError(path, "exists and is not a folder; expected a new run folder")
        if folder and not force:
            raise InputError(path, "run folder exists; choose another --out or pass --force to replace it whole")
        if not folder and path.is_dir():
            raise InputError(path, "is a folder; expected a file path")
    missing = _missing_parents(path)
    nearest = (missing[0] if missing else path.absolute()).parent
    if not nearest.is_dir():
        raise InputError(path, f"cannot create it: {nearest} is not a folder")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise InputError(path, f"cannot create it: {nearest} is not writable")
    return path


def _make_parents(path: Path) -> list[Path]:
    """Create the missing parents of `path`; return them (outermost first) for cleanup."""
    missing = _missing_parents(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(path, f"cannot create its folder: {exc.strerror or exc}") from None
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it into place only if the block succeeds."""
    path = check_output(path)
    created = _make_parents(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    except OSError as exc:
        _remove_empty(created)
        raise InputError(path, f"cannot write there: {exc.strerror or exc}") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _remove_empty(created)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def staged_folder(path: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield an empty hidden folder beside `path`; when the block succeeds, rename it to `path`
    (replacing an existing folder only with `force`). An error or interrupt removes it and any
    parent folders it created, so a run leaves a complete folder or nothing."""
    path = check_output(path, folder=True, force=force)
    created = _make_parents(path)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    except OSError as exc:
        _remove_empty(created)
        raise InputError(path, f"cannot write there: {exc.strerror or exc}") from None
    try:
        yield staging
        _set_modes(staging)
        _swap_into_place(staging, path, force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(created)
        raise


def _set_modes(folder: Path) -> None:
    mask = _umask()
    folder.chmod(0o777 & ~mask)
    for item in folder.rglob("*"):
        item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)


def _swap_into_place(staging: Path, path: Path, force: bool) -> None:
    if not (force and path.exists()):
        try:
            os.rename(staging, path)  # fails, rather than merging, if a folder appeared there meanwhile
        except OSError as exc:
            raise InputError(path, f"cannot move the finished run into place: {exc.strerror or exc}") from None
        return
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    os.rename(path, old / "run")
    os.rename(staging, path)
    shutil.rmtree(old, ignore_errors=True)

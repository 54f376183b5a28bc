"""Atomic output: a result file or run folder is either complete or absent, never half-written.

Every output path is checked before any work (`check_output`), so a bad `--out` fails in the
first second with one line, not after a long run. Files and folders get the modes the user's
umask asks for, as `open()` and `mkdir` would give them (temporary files start at 0600).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from engramsim.errors import InputError, raise_if_signalled


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()  # read once, at import: setting it back and forth later would race other threads


def _missing_parents(path: Path) -> list[Path]:
    """The ancestors of `path` that do not exist yet, outermost first."""
    missing = []
    for parent in path.absolute().parents:
        if os.path.lexists(parent):  # a dangling link exists too: it cannot be created over
            break
        missing.append(parent)
    return missing[::-1]


def check_output(path: str | Path, *, folder: bool = False, force: bool = False, inputs: Sequence[str | Path] = (),
                 marker: str = "results.json") -> Path:
    """Refuse an output path that cannot be written, before any work is done.

    A file path must not be a folder; a run folder (`folder`) must not exist unless `force`
    replaces it whole, and `force` replaces only a run folder (one holding `marker`: results.json,
    or compare.json for `engramsim compare`) that is
    neither the current folder nor above it. The nearest existing ancestor must be a writable folder,
    and the path must not be one of the command's `inputs`.
    """
    path = Path(os.path.abspath(path))
    if os.path.exists(path) and any(os.path.exists(source) and os.path.samefile(source, path) for source in inputs):
        raise InputError(path, "is also an input of this command; choose another output path")
    if os.path.lexists(path):
        if folder and (path.is_symlink() or not path.is_dir()):
            raise InputError(path, "exists and is not a folder; expected a new run folder")
        if folder and not force:
            raise InputError(path, "run folder exists; choose another --out or pass --force to replace it whole")
        if folder and (path == Path.cwd() or path in Path.cwd().parents or path.is_mount()):
            raise InputError(path, "--force will not replace the current folder, one above it, or a mount point")
        if folder and not (path / marker).is_file():
            raise InputError(path, f"--force replaces run folders only, and this one holds no {marker}")
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
def _beside(path: Path, make: Callable[[], str], publish: Callable[[Path], None], discard: Callable[[Path], None]) -> Iterator[Path]:
    """A temporary that `make` creates beside `path` (its missing parents created first); when the
    block succeeds and no signal came, `publish` moves it into place; otherwise `discard` removes
    it, with the parents created for it."""
    created = _make_parents(path)
    temp: Path | None = None
    try:
        with _signals_held():  # a signal between creating the temporary and holding its name would leave it behind
            try:
                temp = Path(make())
            except OSError as exc:
                raise InputError(path, f"cannot write there: {exc.strerror or exc}") from None
        yield temp
        raise_if_signalled()
        publish(temp)
    except BaseException:
        if temp is not None:
            discard(temp)
        _remove_empty(created)
        raise


def _new_file(path: Path) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    return tmp


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it into place only if the block succeeds."""
    path = check_output(path)

    def publish(tmp: Path) -> None:
        tmp.chmod(0o666 & ~UMASK)
        os.replace(tmp, path)

    with _beside(path, lambda: _new_file(path), publish, lambda tmp: tmp.unlink(missing_ok=True)) as tmp:
        yield tmp


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def staged_folder(path: str | Path, *, force: bool = False, marker: str = "results.json") -> Iterator[Path]:
    """Yield an empty hidden folder beside `path`; when the block succeeds, rename it to `path`
    (replacing an existing folder only with `force`). An error or interrupt removes it and any
    parent folders it created, so a run leaves a complete folder or nothing."""
    path = check_output(path, folder=True, force=force, marker=marker)

    def publish(staging: Path) -> None:
        _set_modes(staging)
        _swap_into_place(staging, path, force)

    def make() -> str:
        return tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)

    with _beside(path, make, publish, lambda staging: shutil.rmtree(staging, ignore_errors=True)) as staging:
        yield staging


def _set_modes(folder: Path) -> None:
    folder.chmod(0o777 & ~UMASK)
    for item in folder.rglob("*"):
        item.chmod((0o777 if item.is_dir() else 0o666) & ~UMASK)


def _swap_into_place(staging: Path, path: Path, force: bool) -> None:
    """Rename `staging` to `path`; with `force`, the old run folder is moved aside first and
    deleted only once the new one is in place (put back if that fails). Signals wait until the
    renames are done, so an interrupt never leaves the old run hidden and the new one gone."""
    with _signals_held():
        if not (force and path.exists()):
            try:
                os.rename(staging, path)  # fails, rather than merging, if a folder appeared there meanwhile
            except OSError as exc:
                raise InputError(path, f"cannot move the finished run into place: {exc.strerror or exc}") from None
            return
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
        try:
            os.rename(path, old / "run")
            try:
                os.rename(staging, path)
            except OSError:
                os.rename(old / "run", path)
                raise
        except OSError as exc:
            with contextlib.suppress(OSError):
                old.rmdir()  # empty unless the old run could not be put back: then it stays, not lost
            raise InputError(path, f"cannot replace the run folder: {exc.strerror or exc}") from None
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP for the duration (they arrive when it ends)."""
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)

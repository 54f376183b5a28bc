"""`engramsim hash`: Engram row ids of a text file, as an NPZ."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from engramsim.commands import HELP
from engramsim.commands.args import add_hash_spec_args
from engramsim.errors import InputError
from engramsim.files import atomic_path, check_output
from engramsim.plugins.hashing.engram import EngramHashing, EngramHashSpec
from engramsim.text import read_text
from engramsim.tokenizer import compressed_vocab, load_tokenizer


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("hash", help=HELP["hash"])
    p.add_argument("--text", required=True, type=Path, help="UTF-8 text, tokenized as one sequence")
    p.add_argument("--tokenizer", type=Path, default=None, help="tokenizer.json (default: DeepSeek V4)")
    add_hash_spec_args(p)
    p.add_argument("--out", required=True, type=Path, help="output .npz")
    p.set_defaults(handler=run)


def spec_from_args(args: argparse.Namespace) -> EngramHashSpec:
    rows = args.rows_per_head
    if args.max_ngram < 2:
        raise InputError("--max-ngram", f"expected an integer >= 2, got {args.max_ngram}")
    if len(rows) == 1:
        rows = rows * (args.max_ngram - 1)
    checks = [
        ("--layers", all(layer >= 0 for layer in args.layers), "non-negative layer ids", args.layers),
        ("--rows-per-head", all(r > 0 for r in rows), "positive sizes", rows),
        ("--rows-per-head", len(rows) == args.max_ngram - 1, f"1 or {args.max_ngram - 1} values", rows),
        ("--heads", args.heads > 0, "a positive integer", args.heads),
        ("--seed", args.seed >= 0, "a non-negative integer", args.seed),
    ]
    for flag, ok, expected, got in checks:
        if not ok:
            raise InputError(flag, f"expected {expected}, got {got}")
    try:
        return EngramHashSpec(tuple(args.layers), tuple(rows), args.max_ngram, args.heads, args.seed)
    except ValueError as exc:
        raise InputError("arguments", str(exc)) from None


def run(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    check_output(args.out, inputs=[args.text, *([args.tokenizer] if args.tokenizer else [])])
    text = read_text(args.text)
    tokenizer = load_tokenizer(args.tokenizer)
    vocab = compressed_vocab(args.tokenizer)
    raw = np.asarray(tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)
    if raw.size == 0:
        raise InputError(args.text, "text produced no tokens")
    hashing = EngramHashing(spec, vocab.size, int(vocab.table[spec.pad_id]))
    ids = vocab.compress(raw)
    rows = hashing.hash(ids)
    arrays = {"compressed_ids": ids}
    for layer in spec.layer_ids:
        arrays[f"layer_{layer}"] = rows[layer]
        arrays[f"primes_layer_{layer}"] = hashing.primes[layer]
    with atomic_path(args.out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]  # numpy's stubs match **arrays against allow_pickle: bool
    print(
        f"{args.text}: {raw.size} tokens, compressed vocabulary {vocab.size} ids"
        f"{' (from cache)' if vocab.from_cache else ' (built and cached)'}; "
        f"{len(spec.layer_ids)} layers x {spec.heads_per_layer} heads -> {args.out}"
    )
    return 0

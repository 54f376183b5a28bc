"""Parsers for the small comma-separated list arguments the CLI takes."""

from __future__ import annotations

import argparse


def int_list(text: str) -> list[int]:
    """'1,15' -> [1, 15]; argparse turns the ValueError into a one-line usage error."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one integer, got {text!r}")
    return values


def add_hash_spec_args(parser: argparse.ArgumentParser) -> None:
    """The Engram hashing configuration flags shared by `hash` and `trace stats` (demo defaults)."""
    parser.add_argument("--layers", type=int_list, default=[1, 15], help="Engram layer ids (primes depend on all of them), e.g. 1,15")
    parser.add_argument("--rows-per-head", type=int_list, default=[646400], help="per-head rows, one value or one per order")
    parser.add_argument("--max-ngram", type=int, default=3)
    parser.add_argument("--heads", type=int, default=8, help="heads per n-gram order")
    parser.add_argument("--seed", type=int, default=0)

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

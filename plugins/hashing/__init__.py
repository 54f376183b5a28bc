"""Hashing plugins: token ids -> row ids per Engram layer."""

from engramsim.plugins.hashing import engram  # noqa: F401

"""Hashing plugins: token ids -> row ids per Engram layer."""

from engramsim.plugins.hashing import engram, one_head, pow2_mask, shared_prime  # noqa: F401

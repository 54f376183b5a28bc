"""Built-in strategy plugins; importing this package registers them."""

from engramsim.plugins import cache, hashing, placement, prefetch, transport  # noqa: F401

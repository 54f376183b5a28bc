"""Built-in strategy plugins; importing this package registers them."""

from engramsim.plugins import cache, hashing, placement, prefetch, scheduler, transport  # noqa: F401

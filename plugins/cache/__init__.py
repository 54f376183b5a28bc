"""Cache plugins: an HBM cache in front of the rows placed outside HBM."""

from engramsim.plugins.cache import belady, lfu, lru, none, set_assoc_lru  # noqa: F401

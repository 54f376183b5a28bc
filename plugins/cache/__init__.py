"""Cache plugins: an HBM cache in front of the rows placed outside HBM."""

from engramsim.plugins.cache import belady, lfu, lru, none, set_assoc_lru, static_hot  # noqa: F401

"""Cache plugins: an HBM cache in front of the rows placed outside HBM."""

from engramsim.plugins.cache import none  # noqa: F401

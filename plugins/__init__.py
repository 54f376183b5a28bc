"""Built-in strategy plugins; importing this package registers them."""

from engramsim.plugins import hashing  # noqa: F401

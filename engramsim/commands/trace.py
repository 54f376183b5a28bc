"""`engramsim trace build|stats`: filled in by the traces module."""

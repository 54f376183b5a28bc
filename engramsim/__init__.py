"""engramsim: simulate and profile Engram-style conditional memory served from host memory."""

__version__ = "0.1.0"

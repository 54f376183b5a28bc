"""Token traces: the file format, builders, statistics, synthetic generators, shipped traces.

traces/README.md documents the format and the shipped traces; `engramsim trace --help` the CLI.
"""

from engramsim.traces.format import Trace, load_trace, save_trace, shipped_traces

__all__ = ["Trace", "load_trace", "save_trace", "shipped_traces"]

"""Scheduler plugins: the serving engine's batching policy (engramsim/scheduler.py runs the engine)."""

from engramsim.plugins.scheduler import nano_vllm, vllm  # noqa: F401

"""Staged fetch of every Engram layer issued at the same point as one pipeline.

When several fetches are issued at one block (two Engram layers prefetched from block 0, or a
layer of this step and one of a later step), the staged transport gathers and copies each on its
own, paying the gather call's and the DMA's fixed costs once per fetch. This one gathers all
their rows in one call and moves them in one DMA.
"""

from __future__ import annotations

from engramsim.plugins.transport.staged import StagedBase
from engramsim.registry import register


@register("transport", "staged-batched")
class StagedBatched(StagedBase):
    """Staged, with one gather and one DMA for every fetch issued at the same point (all Engram layers)."""

    batches_layers = True

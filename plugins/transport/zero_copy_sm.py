"""Zero-copy over UVA, with the SMs the gather kernel holds taken from the compute stream.

The gather kernel runs beside the model on a side stream; while it runs its thread blocks occupy
SMs the blocks would use, so compute that runs meanwhile takes `slowdown` times as long (vLLM
halves the gather's grid for this reason). Compute that does not overlap the gather is unaffected.
"""

from __future__ import annotations

from pydantic import Field

from engramsim import kernels
from engramsim.plugins.transport.zero_copy import ZeroCopyBase
from engramsim.registry import register
from engramsim.strategies import Params


class ZeroCopySMParams(Params):
    slowdown: float | None = Field(
        default=None, ge=1, le=10, description="how much longer compute takes while the gather kernel runs; null: the "
        "profile's gpu.zero_copy_slowdown, else sms / (sms - 16) (a gather grid on 16 SMs, an assumption)")


@register("transport", "zero-copy-sm")
class ZeroCopySM(ZeroCopyBase):
    """UVA zero-copy gather whose SMs slow the compute running beside it (SM interference)."""

    Params = ZeroCopySMParams

    def slowdown(self) -> float:
        params = self.params
        assert isinstance(params, ZeroCopySMParams)
        if params.slowdown is not None:
            return params.slowdown
        gpu = self.setup.hardware.gpu
        if gpu.zero_copy_slowdown is not None:
            return gpu.zero_copy_slowdown
        return kernels.sm_share_slowdown(gpu.sms, kernels.ZERO_COPY_GATHER_SMS)

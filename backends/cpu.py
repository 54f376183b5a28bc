"""The CPU backend: the whole pipeline in host memory, the CPU standing in for the GPU.

Tables, the gather's staging buffer and the "device" landing buffer are all ordinary host
tensors; the h2d stage is a memcpy from staging to the landing buffer and zero-copy is one
index_select straight into the landing buffer. What the CPU backend measures is the real gather
(random rows out of a table of the scenario's true size) and how well a worker thread hides it
behind the blocks before the Engram layer.

Threads: the compute thread and the one fetch worker each run torch with one intra-op thread
(`torch.set_num_threads(1)`), so on a 2-core machine compute and gather each get a core and
overlap the way a GPU's compute stream and the host's gather threads do. The previous thread
count is restored after the pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from engramsim.backends.device import PLAIN, TORCH_DTYPES, Device, Linear, Mark
from engramsim.backends.memory import Footprint, check_fits, host_memory

THREADS = 1  # torch intra-op threads of the compute thread and of the fetch worker


def _onednn_pack(w: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(w.t().contiguous(), None)


def _onednn_apply(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


ONEDNN = Linear(_onednn_pack, _onednn_apply)


class CpuDevice(Device):
    kind = "cpu"
    resident_copies = False
    attention_groups = 1

    def linear(self) -> Linear:
        """oneDNN with weights prepacked into its blocked layout, as CPU inference engines run
        linear layers: small-batch GEMMs then stream the weights once. Plain MKL sgemm over
        row-major weights repacks them on every call, which makes a 2-32 row GEMM with cold
        weights cost 1.5-4x a one-row product and follow no roofline."""
        if not torch.backends.mkldnn.is_available():
            return PLAIN
        return ONEDNN

    def check_memory(self, source: str, footprint: Footprint) -> None:
        """Everything lives in host memory here, the "device" side included."""
        _, available = host_memory()
        check_fits(source, "host memory", {**footprint.host, **footprint.device}, available)

    def compute_dtype(self, name: str) -> torch.dtype:
        """fp32, unless the scenario asks for bf16 (fp16 and fp8 matmuls are not CPU paths)."""
        return TORCH_DTYPES["bf16"] if name == "bf16" else TORCH_DTYPES["fp32"]

    def host_table(self, rows: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(rows, width, dtype=dtype)

    def staging(self, rows: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(rows, width, dtype=dtype)

    def resident(self, table: torch.Tensor) -> torch.Tensor:
        return table

    def zero_copy_source(self, table: torch.Tensor) -> torch.Tensor:
        return table

    def wait_reached(self, mark: Mark) -> float:
        """Nothing to wait for: the compute thread hands a fetch over when the issuing block starts,
        and that mark is already host seconds."""
        return float(mark)

    def h2d(self, dst: torch.Tensor, src: torch.Tensor) -> tuple[Mark, Mark]:
        start = self.now()
        dst.copy_(src)
        return start, self.now()

    def zero_copy(self, src: torch.Tensor, index: torch.Tensor, dst: torch.Tensor) -> tuple[Mark, Mark]:
        start = self.now()
        torch.index_select(src, 0, index, out=dst)
        return start, self.now()

    def landed(self, ready: Mark) -> bool:
        """CPU stages are synchronous: once the worker says done, the rows are there."""
        return True

    def wait_landed(self, ready: Mark) -> None:
        """Nothing to order: the worker's done event already happened after the last stage."""

    @contextlib.contextmanager
    def compute(self) -> Iterator[None]:
        previous = torch.get_num_threads()
        torch.set_num_threads(THREADS)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    @contextlib.contextmanager
    def worker(self) -> Iterator[None]:
        torch.set_num_threads(THREADS)
        yield

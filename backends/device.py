"""The small device abstraction: the few operations where a CPU run and a CUDA run differ.

The shared executor (executor.py) runs every step in terms of these operations, so the CPU
tests exercise all of its logic and the CUDA backend adds only stream, event and memory calls.

Marks are points on the compute timeline. On the CPU a mark is a float: seconds since the pass
started, from time.perf_counter. On CUDA it is a torch.cuda.Event recorded on the compute stream
and turned into seconds after the step's synchronize (`seconds`). Host-side work (the CPU gather
of the staged transport) is always timed with perf_counter, so its marks are floats too.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Union

import numpy as np
import torch

from engramsim.backends.memory import Footprint

Mark = Union[float, Any]  # float seconds, or a torch.cuda.Event on CUDA

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def to_index(values: np.ndarray, device: torch.device) -> torch.Tensor:
    """An int64 index tensor on `device` from host row ids or positions. A GPU gets it from
    pinned memory on the current stream without blocking the host (torch's pinned allocator keeps
    the buffer until the copy has run), so no bubble opens on the GPU while the host uploads. The
    copy is queued on the current stream: read the tensor on that stream (or after a synchronize)."""
    if device.type == "cpu":
        return host_index(values)
    return host_index(values, pin=True).to(device, non_blocking=True)


def host_index(values: np.ndarray, pin: bool = False) -> torch.Tensor:
    """Row ids or positions as an int64 host tensor, page-locked with `pin` (to upload without blocking)."""
    host = torch.from_numpy(np.ascontiguousarray(values, dtype=np.int64))
    return host.pin_memory() if pin else host


@dataclass(frozen=True)
class Linear:
    """How stand-in blocks store and apply a [in, out] weight: `pack` once at allocation, then
    `apply(x, packed)` per step. Plain `x @ w` by default; a backend may prepack into its fastest
    layout, as inference engines on that hardware do."""

    pack: Callable[[torch.Tensor], torch.Tensor]
    apply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


PLAIN = Linear(lambda w: w, torch.matmul)


class Device:
    """What the executor asks of a device; cpu.py and cuda.py implement it."""

    kind: ClassVar[str]
    resident_copies: ClassVar[bool]  # does `resident` copy a table (into GPU memory)?
    attention_groups: ClassVar[int]  # most padded SDPA calls per attention (backends/standin.py)
    warmup_steps: ClassVar[int | None] = 2  # steps of each untimed warm-up round before a pass (None: the whole pass)
    warmup_s: ClassVar[float] = 0.0  # least wall time of those rounds (clocks to ramp up)

    def __init__(self, source: str) -> None:
        self.source = source
        self.torch_device = torch.device("cpu")
        self._t0 = time.perf_counter()

    # ---- clock -------------------------------------------------------------------------------
    def start_clock(self) -> None:
        """Time zero of a pass: every mark of the pass is measured from here."""
        self._t0 = time.perf_counter()

    def now(self) -> float:
        """Host seconds since the pass started."""
        return time.perf_counter() - self._t0

    def mark(self) -> Mark:
        """The compute timeline's current point (CPU: now; CUDA: an event on the compute stream)."""
        return self.now()

    def seconds(self, mark: Mark) -> float:
        """Seconds since the pass started; call after `synchronize` for device marks."""
        return float(mark)

    def synchronize(self) -> None:
        """Wait until everything enqueued on the device has run (CPU work is already done)."""

    def synchronize_compute(self) -> None:
        """Wait until the compute timeline has run; fetches in flight for later steps go on."""

    def linear(self) -> Linear:
        """How the stand-in blocks run their GEMMs on this device."""
        return PLAIN

    # ---- memory ------------------------------------------------------------------------------
    def check_memory(self, source: str, footprint: Footprint) -> None:
        """Raise InputError, before anything is allocated, when `footprint` does not fit."""
        raise NotImplementedError

    def compute_dtype(self, name: str) -> torch.dtype:
        """The stand-in blocks' dtype for the scenario's backbone dtype."""
        raise NotImplementedError

    def generator(self, seed: int) -> torch.Generator:
        """A seeded generator on the device, so weights are drawn where they live."""
        return torch.Generator(device=self.torch_device).manual_seed(seed)

    def host_table(self, rows: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        """Uninitialised host memory for a table."""
        raise NotImplementedError

    def staging(self, rows: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        """The gather's destination in host memory."""
        raise NotImplementedError

    def landing(self, rows: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        """Where fetched rows land on the device."""
        return torch.empty(rows, width, dtype=dtype, device=self.torch_device)

    def resident(self, table: torch.Tensor) -> torch.Tensor:
        """The table as the Engram layer reads rows placed in HBM."""
        raise NotImplementedError

    def zero_copy_source(self, table: torch.Tensor) -> torch.Tensor:
        """What a zero-copy gather reads rows from."""
        raise NotImplementedError

    # ---- fetch stages: called on the worker thread ----------------------------------------------
    def wait_reached(self, mark: Mark) -> float:
        """Block until the compute timeline has reached `mark` (the issuing block started); the
        host seconds at which this thread saw it reached."""
        raise NotImplementedError

    def queue_after(self, mark: Mark) -> None:
        """Make the device stages enqueued next start no earlier than `mark` (the issuing block
        started) without blocking this thread; nothing to do where marks are already past."""

    def gather(self, table: torch.Tensor, index: torch.Tensor, out: torch.Tensor) -> tuple[Mark, Mark]:
        """CPU gather of table rows into `out`: both backends gather on the host, timed there."""
        start = self.now()
        torch.index_select(table, 0, index, out=out)
        return start, self.now()

    def h2d(self, dst: torch.Tensor, src: torch.Tensor) -> tuple[Mark, Mark]:
        """Staging → landing buffer over the link; (start, end) marks."""
        raise NotImplementedError

    def zero_copy(self, src: torch.Tensor, index: torch.Tensor, dst: torch.Tensor) -> tuple[Mark, Mark]:
        """Rows gathered from `src` straight into the landing buffer `dst`; (start, end) marks."""
        raise NotImplementedError

    # ---- compute thread ------------------------------------------------------------------------
    def landed(self, ready: Mark) -> bool:
        """Has the fetch whose last stage ended at `ready` arrived on the device?"""
        raise NotImplementedError

    def wait_landed(self, ready: Mark) -> None:
        """Make the compute timeline wait until `ready`."""
        raise NotImplementedError

    @contextlib.contextmanager
    def compute(self) -> Iterator[None]:
        """Context of the compute thread for a whole pass."""
        yield

    @contextlib.contextmanager
    def worker(self) -> Iterator[None]:
        """Context of the fetch worker thread for a whole pass."""
        yield

    def monitor(self) -> Any:
        """A context manager sampling hardware counters during a pass (CUDA: NVML), or None."""
        return None

    def close(self) -> None:
        """Release what the device holds outside torch's allocators."""


def make_device(backend: str, source: str) -> Device:
    """The device for `backend` ("cpu" or "cuda"); CUDA is imported only when asked for."""
    if backend == "cpu":
        from engramsim.backends.cpu import CpuDevice

        return CpuDevice(source)
    if backend == "cuda":
        from engramsim.backends.cuda import CudaDevice

        return CudaDevice(source)
    raise ValueError(f"no real backend {backend!r} (expected 'cpu' or 'cuda')")

"""The CUDA backend: tables in page-locked host memory, fetches on a copy stream, the stand-in
blocks on a compute stream, every GPU-side interval timed with CUDA events.

Importing this module touches no CUDA API; a CudaDevice is built only for `--backend cuda`, and
refuses with one line when torch sees no GPU.

Memory. A table is ordinary host memory page-locked with cudaHostRegister (torch.cuda.cudart()),
not torch.empty(pin_memory=True): torch's pinned allocator rounds every allocation up to a power
of two and would pin up to twice a 100 GB table. Staging buffers are small: pin_memory=True.
Rows placed in HBM are read from a full copy of the table in GPU memory (the all-HBM baseline).

Staged transport. The worker thread waits until the compute stream reaches the issuing block
(`wait_reached`: the block's start event), gathers the rows on the CPU into pinned staging
(index_select with `gather_threads` torch threads, timed with perf_counter) and enqueues one
async copy staging -> landing buffer on the copy stream, between two events.

Zero-copy. With unified virtual addressing a page-locked host address is valid on the GPU, so a
CUDA tensor over the table's host pointer (made through __cuda_array_interface__) lets torch's
CUDA index_select kernel read the rows over PCIe straight into the landing buffer, on the copy
stream. The rows are viewed as the widest integer that divides a row (int64 for every row size
the presets use), so the kernel moves 8 bytes a load, as a production gather does, not one bf16
element. The copy stream waits on the issuing block's event rather than the worker thread on the
host, so the read starts when the GPU gets there, with no host wake-up in between. This assumes
the device can use the host pointer of registered memory (true on x86-64 Linux with current
drivers); setup reads rows back once and refuses zero-copy if they differ.

Index uploads (row ids, positions) go from pinned host memory without blocking the host, so
the host keeps running ahead of the GPU (backends/device.py `to_index`).

Overlap and stalls. Before an Engram layer the compute stream waits on the fetch's last event;
the stall is the time between two compute-stream events around that wait, counted only when the
rows landed after the compute stream got there, so it is time the GPU really sat idle. Each step
ends with a synchronize (a real server syncs to sample), after which every event is resolved
against the pass's reference event through an `EventClock` (float32 milliseconds lose
microseconds after a few seconds otherwise).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

import torch

from engramsim.backends.device import TORCH_DTYPES, Device, Mark, host_index
from engramsim.backends.event_clock import EventClock
from engramsim.backends.memory import Footprint, check_fits, host_memory
from engramsim.backends.nvml import Sampler
from engramsim.errors import InputError

HOST_REGISTER_PORTABLE_MAPPED = 0x01 | 0x02  # cudaHostRegisterPortable | cudaHostRegisterMapped


WORDS = {8: (torch.int64, "<i8"), 4: (torch.int32, "<i4"), 2: (torch.int16, "<i2"), 1: (torch.uint8, "|u1")}


def word_bytes(row_bytes: int) -> int:
    """The widest integer word (8, 4, 2 or 1 bytes) a row of `row_bytes` divides into."""
    return next(w for w in WORDS if row_bytes % w == 0)


def as_words(rows: torch.Tensor) -> torch.Tensor:
    """A [rows, width] tensor with contiguous rows, viewed as [rows, row_bytes / w] words of w bytes."""
    return rows.view(WORDS[word_bytes(rows.shape[1] * rows.element_size())][0])


class _HostPages:
    """A page-locked host [rows, width] tensor exposed to torch as CUDA words (__cuda_array_interface__;
    integer words because the interface's numpy type strings have no bfloat16, and wide ones so a
    gather moves 8 bytes a load)."""

    def __init__(self, table: torch.Tensor) -> None:
        if table.dim() != 2 or table.stride(1) != 1:
            raise ValueError(f"expected a [rows, width] tensor with contiguous rows, got strides {table.stride()}")
        self.table = table  # kept alive as long as the device view is

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        t, size = self.table, self.table.element_size()
        word = word_bytes(t.shape[1] * size)
        return {"shape": (t.shape[0], t.shape[1] * size // word), "typestr": WORDS[word][1], "data": (t.data_ptr(), False),
                "strides": (t.stride(0) * size, word), "version": 3}


def require_gpu(source: str) -> None:
    """One-line refusal of --backend cuda where torch sees no GPU (checked before any work)."""
    if not torch.cuda.is_available():
        raise InputError(source, "no CUDA GPU available (torch.cuda.is_available() is False)", field="run.backend")


class CudaDevice(Device):
    kind = "cuda"
    resident_copies = True
    attention_groups = 8
    # The whole pass, untimed, first: the step shapes it meets (each decode batch size, each
    # prompt length) load their kernels lazily and grows the allocators on first use, at up to
    # hundreds of ms a step; measured on an H200, two warm-up steps left the first scenario of a
    # validation 9x slower than the same scenario run after it. Serving engines pay this once at
    # start-up (nano-vLLM's warm-up and graph capture of every batch size).
    warmup_steps = None
    warmup_s = 0.5  # idle SM clocks (~345 MHz on an H200) take some 100 ms of load to reach boost

    def __init__(self, source: str) -> None:
        super().__init__(source)
        require_gpu(source)
        self.torch_device = torch.device("cuda", torch.cuda.current_device())
        self.compute_stream = torch.cuda.Stream(self.torch_device)
        self.copy_stream = torch.cuda.Stream(self.torch_device)
        self.gather_threads = max(1, (os.cpu_count() or 2) - 1)  # one core left for the launching thread
        self._registered: list[torch.Tensor] = []
        self._clock: EventClock | None = None

    # ---- clock -------------------------------------------------------------------------------
    def start_clock(self) -> None:
        torch.cuda.synchronize(self.torch_device)
        reference = self._event(self.compute_stream)
        reference.synchronize()
        self._t0 = time.perf_counter()
        self._clock = EventClock(reference)

    def _event(self, stream: torch.cuda.Stream) -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record(stream)
        return event

    def mark(self) -> Mark:
        return self._event(self.compute_stream)

    def seconds(self, mark: Mark) -> float:
        if isinstance(mark, float):
            return mark
        assert self._clock is not None
        return self._clock.seconds(mark)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.torch_device)

    def synchronize_compute(self) -> None:
        self.compute_stream.synchronize()

    # ---- memory ------------------------------------------------------------------------------
    def check_memory(self, source: str, footprint: Footprint) -> None:
        _, available = host_memory()
        check_fits(source, "host memory", footprint.host, available)
        free, _ = torch.cuda.mem_get_info(self.torch_device)
        biggest = max(footprint.device, key=footprint.device.__getitem__, default="")
        field = "model.engram.rows_per_head" if "HBM" in biggest else "model.backbone"
        check_fits(source, f"GPU memory on {torch.cuda.get_device_name(self.torch_device)}", footprint.device, free, field)

    def compute_dtype(self, name: str) -> torch.dtype:
        """The scenario's dtype; fp8 runs in bf16 (cost.py also prices fp8 GEMMs at the bf16 peak)."""
        return TORCH_DTYPES.get(name, torch.bfloat16)

    def host_table(self, rows: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        table = torch.empty(rows, width, dtype=dtype)
        cudart = torch.cuda.cudart()
        err = cudart.cudaHostRegister(table.data_ptr(), table.numel() * table.element_size(), HOST_REGISTER_PORTABLE_MAPPED)
        if err != cudart.cudaError.success:
            raise RuntimeError(f"cudaHostRegister of a {table.numel() * table.element_size() / 2**30:.1f} GiB table failed: "
                               f"{cudart.cudaGetErrorString(err)}")
        self._registered.append(table)
        return table

    def staging(self, rows: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(rows, width, dtype=dtype, pin_memory=True)

    def resident(self, table: torch.Tensor) -> torch.Tensor:
        return table.to(self.torch_device)

    def zero_copy_source(self, table: torch.Tensor) -> torch.Tensor:
        """The table as GPU-addressable words (`as_words`)."""
        view = torch.as_tensor(_HostPages(table), device=self.torch_device)
        probe = torch.tensor([0, table.shape[0] - 1])
        if not torch.equal(view.index_select(0, probe.to(self.torch_device)).cpu(), as_words(table.index_select(0, probe))):
            raise InputError(self.source, "this GPU cannot read page-locked host memory through its host address; "
                             "use the staged transport", field="strategies.transport")
        return view

    # ---- fetch stages (worker thread) ----------------------------------------------------------
    def wait_reached(self, mark: Mark) -> float:
        assert isinstance(mark, torch.cuda.Event)  # a compute-stream mark
        mark.synchronize()
        return self.now()

    def queue_after(self, mark: Mark) -> None:
        assert isinstance(mark, torch.cuda.Event)
        self.copy_stream.wait_event(mark)

    def h2d(self, dst: torch.Tensor, src: torch.Tensor) -> tuple[Mark, Mark]:
        start = self._event(self.copy_stream)
        with torch.cuda.stream(self.copy_stream):
            dst.copy_(src, non_blocking=True)
        return start, self._event(self.copy_stream)

    def zero_copy(self, src: torch.Tensor, index: torch.Tensor, dst: torch.Tensor) -> tuple[Mark, Mark]:
        """The row ids cross the link too (the hashing runs on the host), inside the timed interval;
        `src` is `zero_copy_source`'s word view, so `dst` is viewed as the same words."""
        pinned = host_index(index.numpy(), pin=True)  # host work, before the span
        start = self._event(self.copy_stream)
        with torch.cuda.stream(self.copy_stream):
            torch.index_select(src, 0, pinned.to(self.torch_device, non_blocking=True), out=dst.view(src.dtype))
        return start, self._event(self.copy_stream)

    # ---- compute thread ------------------------------------------------------------------------
    def landed(self, ready: Mark) -> bool:
        assert isinstance(ready, torch.cuda.Event)  # the last stage is h2d or zero-copy, both on the copy stream
        return bool(ready.query())

    def wait_landed(self, ready: Mark) -> None:
        assert isinstance(ready, torch.cuda.Event)
        self.compute_stream.wait_event(ready)

    @contextlib.contextmanager
    def compute(self) -> Iterator[None]:
        previous = torch.get_num_threads()
        try:
            with torch.cuda.device(self.torch_device), torch.cuda.stream(self.compute_stream):
                yield
        finally:
            torch.set_num_threads(previous)

    @contextlib.contextmanager
    def worker(self) -> Iterator[None]:
        torch.set_num_threads(self.gather_threads)
        with torch.cuda.device(self.torch_device), torch.cuda.stream(self.copy_stream):
            yield

    def monitor(self) -> Sampler:
        """NVML on this GPU, found by PCI address (NVML numbers GPUs ignoring CUDA_VISIBLE_DEVICES)."""
        props = torch.cuda.get_device_properties(self.torch_device)
        pci = [getattr(props, f"pci_{part}_id", None) for part in ("domain", "bus", "device")]
        bus_id = None if None in pci else f"{pci[0]:08X}:{pci[1]:02X}:{pci[2]:02X}.0"
        return Sampler(self.now, bus_id)

    def close(self) -> None:
        """Unpin the tables before torch frees them."""
        torch.cuda.synchronize(self.torch_device)
        cudart = torch.cuda.cudart()
        for table in self._registered:
            cudart.cudaHostUnregister(table.data_ptr())
        self._registered.clear()

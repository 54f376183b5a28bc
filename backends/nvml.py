"""NVML: the GPU facts `engramsim hw` prints, and the sampler behind a CUDA run's PCIe counters.

pynvml (nvidia-ml-py) is a dependency, but the driver's libnvidia-ml may be missing (no GPU, a
container without it) or a query may be unsupported on a board: every NVML failure becomes one
line of text in the report, never a traceback and never a failed run.

The sampler polls every ~20 ms on a background thread: PCIe throughput in both directions
(nvmlDeviceGetPcieThroughput, itself averaged by the driver over ~20 ms; NVML's KB are taken as
1024 B), SM utilisation and the SM and memory clocks. Samples are timed with the run's clock, so
they line up with the timeline's spans.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

INTERVAL_S = 0.02
KB = 1024


class NvmlUnavailable(Exception):
    """NVML could not be used; the message is one line saying why."""


def _nvml() -> Any:
    """pynvml, initialised; NvmlUnavailable with the reason when the library cannot start."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, driver mismatch, no pynvml at all
        raise NvmlUnavailable(f"NVML unavailable: {exc}") from None
    return pynvml


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def gpus() -> dict[str, Any]:
    """Driver version and, per NVML device, name, memory and PCIe link (current and maximum)."""
    nvml = _nvml()
    try:
        devices = []
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            memory = nvml.nvmlDeviceGetMemoryInfo(h)
            devices.append({
                "index": i,
                "name": _text(nvml.nvmlDeviceGetName(h)),
                "memory_total_gib": memory.total / (1 << 30),
                "memory_free_gib": memory.free / (1 << 30),
                "pcie_generation": nvml.nvmlDeviceGetCurrPcieLinkGeneration(h),
                "pcie_generation_max": nvml.nvmlDeviceGetMaxPcieLinkGeneration(h),
                "pcie_width": nvml.nvmlDeviceGetCurrPcieLinkWidth(h),
                "pcie_width_max": nvml.nvmlDeviceGetMaxPcieLinkWidth(h),
            })
        return {"driver": _text(nvml.nvmlSystemGetDriverVersion()), "devices": devices}
    except nvml.NVMLError as exc:
        raise NvmlUnavailable(f"NVML query failed: {exc}") from None
    finally:
        nvml.nvmlShutdown()


@dataclass(frozen=True)
class Sample:
    t_s: float  # run clock
    rx_gbps: float  # host -> GPU (the GPU receives)
    tx_gbps: float  # GPU -> host
    sm_util_pct: float
    sm_clock_mhz: float
    mem_clock_mhz: float


class Sampler:
    """Samples one GPU every ~20 ms while the `with` block runs; `error` says why not, if not."""

    def __init__(self, clock: Callable[[], float], pci_bus_id: str | None = None, interval_s: float = INTERVAL_S) -> None:
        self.clock, self.pci_bus_id, self.interval_s = clock, pci_bus_id, interval_s
        self.samples: list[Sample] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        try:
            self._nvml = _nvml()
            self._handle = (self._nvml.nvmlDeviceGetHandleByPciBusId(self.pci_bus_id) if self.pci_bus_id
                            else self._nvml.nvmlDeviceGetHandleByIndex(0))
        except Exception as exc:
            self.error = str(exc)
            return self
        self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._nvml.nvmlShutdown()

    def _loop(self) -> None:
        nvml, h = self._nvml, self._handle
        while not self._stop.is_set():
            t = self.clock()
            try:
                rx = nvml.nvmlDeviceGetPcieThroughput(h, nvml.NVML_PCIE_UTIL_RX_BYTES)
                tx = nvml.nvmlDeviceGetPcieThroughput(h, nvml.NVML_PCIE_UTIL_TX_BYTES)
                util = nvml.nvmlDeviceGetUtilizationRates(h).gpu
                sm = nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM)
                mem = nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_MEM)
            except nvml.NVMLError as exc:
                self.error = f"NVML sampling stopped: {exc}"
                return
            self.samples.append(Sample(t, rx * KB / 1e9, tx * KB / 1e9, float(util), float(sm), float(mem)))
            self._stop.wait(max(0.0, self.interval_s - (self.clock() - t)))

    def summary(self) -> dict[str, Any]:
        """The `nvml` object of results.json: sample count, means and extremes."""
        s = self.samples
        out: dict[str, Any] = {"samples": len(s), "interval_ms": self.interval_s * 1e3, "error": self.error}
        if s:
            def mean(key: str) -> float:
                return sum(getattr(x, key) for x in s) / len(s)

            out |= {
                "pcie_rx_gbps_mean": mean("rx_gbps"), "pcie_rx_gbps_max": max(x.rx_gbps for x in s),
                "pcie_tx_gbps_mean": mean("tx_gbps"), "pcie_tx_gbps_max": max(x.tx_gbps for x in s),
                "sm_util_pct_mean": mean("sm_util_pct"),
                "sm_clock_mhz_mean": mean("sm_clock_mhz"), "sm_clock_mhz_min": min(x.sm_clock_mhz for x in s),
                "mem_clock_mhz_mean": mean("mem_clock_mhz"),
            }
        return out

    def counters(self) -> list[dict[str, Any]]:
        """Chrome/Perfetto counter events ("ph": "C"), one track per quantity."""
        events = []
        for x in self.samples:
            ts = round(x.t_s * 1e6, 3)
            events += [
                {"name": "PCIe GB/s", "ph": "C", "pid": 1, "ts": ts, "args": {"host->GPU": x.rx_gbps, "GPU->host": x.tx_gbps}},
                {"name": "SM util %", "ph": "C", "pid": 1, "ts": ts, "args": {"util": x.sm_util_pct}},
                {"name": "clocks MHz", "ph": "C", "pid": 1, "ts": ts, "args": {"sm": x.sm_clock_mhz, "mem": x.mem_clock_mhz}},
            ]
        return events

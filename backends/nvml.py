"""NVML: the GPU facts `engramsim hw` prints, and the sampler behind a CUDA run's PCIe counters.

pynvml (nvidia-ml-py) is a dependency, but the driver's libnvidia-ml may be missing (no GPU, a
container without it) or a query may be unsupported on a board: every NVML failure becomes one
line of text in the report, never a traceback and never a failed run.

The sampler polls every ~20 ms on a background thread: PCIe throughput in both directions over
one window (the driver's cumulative byte counters where the board has them, else
nvmlDeviceGetPcieThroughput, whose KB are taken as 1024 B), SM utilisation and the SM and memory
clocks. Samples are timed with the run's clock, so they line up with the timeline's spans.
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
    """One poll; a quantity this board does not report is None."""

    t_s: float  # run clock
    rx_gbps: float | None  # host -> GPU (the GPU receives)
    tx_gbps: float | None  # GPU -> host
    sm_util_pct: float | None
    sm_clock_mhz: float | None
    mem_clock_mhz: float | None


QUANTITIES = ("sm_util_pct", "sm_clock_mhz", "mem_clock_mhz")


class _Pcie:
    """PCIe bytes per second in both directions over one and the same window.

    Preferred: the cumulative byte counters (NVML_FI_DEV_PCIE_COUNT_RX/TX_BYTES, one
    nvmlDeviceGetFieldValues call for both, each value time-stamped by the driver), differenced
    between polls. Where a board lacks them: nvmlDeviceGetPcieThroughput, whose RX and TX are each
    the driver's own ~20 ms average and come from two successive windows (`source` says which)."""

    def __init__(self, nvml: Any, handle: Any) -> None:
        self.nvml, self.handle = nvml, handle
        self._last: tuple[int, int, int] | None = None  # (timestamp us, rx bytes, tx bytes)
        self.backwards = 0  # windows dropped because a counter went down
        fields = [getattr(nvml, "NVML_FI_DEV_PCIE_COUNT_RX_BYTES", None), getattr(nvml, "NVML_FI_DEV_PCIE_COUNT_TX_BYTES", None)]
        self.fields = None if None in fields else fields
        if self.fields:
            self._last = self._counters()  # the first window starts here
            if self._last is None:
                self.fields = None
        self.source = ("byte counters (RX and TX in one window)" if self.fields else
                       "nvmlDeviceGetPcieThroughput (RX and TX in successive ~20 ms windows)")

    def _counters(self) -> tuple[int, int, int] | None:
        try:
            rx, tx = self.nvml.nvmlDeviceGetFieldValues(self.handle, self.fields)
        except self.nvml.NVMLError:
            return None
        if rx.nvmlReturn != self.nvml.NVML_SUCCESS or tx.nvmlReturn != self.nvml.NVML_SUCCESS:
            return None
        return int(rx.timestamp), int(rx.value.ullVal), int(tx.value.ullVal)

    def read(self) -> tuple[float | None, float | None]:
        """(rx, tx) GB/s over the window since the previous read; None where there is no rate."""
        if not self.fields:
            rx = self.nvml.nvmlDeviceGetPcieThroughput(self.handle, self.nvml.NVML_PCIE_UTIL_RX_BYTES)
            tx = self.nvml.nvmlDeviceGetPcieThroughput(self.handle, self.nvml.NVML_PCIE_UTIL_TX_BYTES)
            return rx * KB / 1e9, tx * KB / 1e9
        now = self._counters()
        if now is None:
            raise self.nvml.NVMLError(self.nvml.NVML_ERROR_UNKNOWN)
        last, self._last = self._last, now
        if last is None or now[0] <= last[0]:
            return None, None
        if now[1] < last[1] or now[2] < last[2]:  # seen on an H200 (driver 580.159.04): not a rate, drop the window
            self.backwards += 1
            return None, None
        seconds = (now[0] - last[0]) / 1e6
        return (now[1] - last[1]) / seconds / 1e9, (now[2] - last[2]) / seconds / 1e9


class Sampler:
    """Samples one GPU every ~20 ms while the `with` block runs. A quantity the board refuses
    (NOT_SUPPORTED, or any other NVML error) stops being read, with the reason in `errors`; the
    others go on. `error` says why nothing could be sampled at all."""

    def __init__(self, clock: Callable[[], float], pci_bus_id: str | None = None, interval_s: float = INTERVAL_S,
                 nvml: Any = None) -> None:
        self.clock, self.pci_bus_id, self.interval_s = clock, pci_bus_id, interval_s
        self.samples: list[Sample] = []
        self.error: str | None = None
        self.errors: dict[str, str] = {}  # quantity -> why it stopped being read
        self.pcie_source: str | None = None
        self._given = nvml  # a stand-in for pynvml (tests)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        try:
            self._nvml = self._given or _nvml()
            self._handle = (self._nvml.nvmlDeviceGetHandleByPciBusId(self.pci_bus_id) if self.pci_bus_id
                            else self._nvml.nvmlDeviceGetHandleByIndex(0))
            self._pcie = _Pcie(self._nvml, self._handle)
        except Exception as exc:
            self.error = str(exc)
            return self
        self.pcie_source = self._pcie.source
        self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._nvml.nvmlShutdown()

    def _readers(self) -> dict[str, Callable[[], Any]]:
        nvml, h = self._nvml, self._handle
        return {"pcie": self._pcie.read,
                "sm_util_pct": lambda: float(nvml.nvmlDeviceGetUtilizationRates(h).gpu),
                "sm_clock_mhz": lambda: float(nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM)),
                "mem_clock_mhz": lambda: float(nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_MEM))}

    def _loop(self) -> None:
        readers = self._readers()
        while readers and not self._stop.is_set():
            t = self.clock()
            values: dict[str, Any] = {}
            for name, read in list(readers.items()):
                try:
                    values[name] = read()
                except self._nvml.NVMLError as exc:
                    self.errors[name] = f"NVML stopped reading {name}: {exc}"
                    del readers[name]
            rx, tx = values.get("pcie", (None, None))
            self.samples.append(Sample(t, rx, tx, *(values.get(q) for q in QUANTITIES)))
            self._stop.wait(max(0.0, self.interval_s - (self.clock() - t)))
        if not readers:
            self.error = "NVML sampling stopped: no quantity could be read"

    def summary(self) -> dict[str, Any]:
        """The `nvml` object of results.json: sample count, the interval the samples really had,
        where PCIe figures come from, means and extremes of what was read, and what was not."""
        s = self.samples
        gaps = [b.t_s - a.t_s for a, b in zip(s, s[1:])]
        out: dict[str, Any] = {"samples": len(s), "interval_ms": sum(gaps) / len(gaps) * 1e3 if gaps else None,
                               "interval_target_ms": self.interval_s * 1e3, "pcie_source": self.pcie_source,
                               "pcie_windows_dropped": self._pcie.backwards if self._thread is not None else 0,
                               "error": self.error, "errors": dict(self.errors)}

        def values(key: str) -> list[float]:
            return [v for x in s if (v := getattr(x, key)) is not None]

        for key, stats in (("rx_gbps", ("mean", "max")), ("tx_gbps", ("mean", "max")), ("sm_util_pct", ("mean",)),
                           ("sm_clock_mhz", ("mean", "min")), ("mem_clock_mhz", ("mean",))):
            read = values(key)
            name = f"pcie_{key}" if key.endswith("gbps") else key
            for stat in stats:
                out[f"{name}_{stat}"] = (None if not read else sum(read) / len(read) if stat == "mean" else
                                         max(read) if stat == "max" else min(read))
        return out

    def counters(self) -> list[dict[str, Any]]:
        """Chrome/Perfetto counter events ("ph": "C"), one track per quantity read."""
        tracks = (("PCIe GB/s", {"host->GPU": "rx_gbps", "GPU->host": "tx_gbps"}), ("SM util %", {"util": "sm_util_pct"}),
                  ("clocks MHz", {"sm": "sm_clock_mhz", "mem": "mem_clock_mhz"}))
        events = []
        for x in self.samples:
            ts = round(x.t_s * 1e6, 3)
            for name, keys in tracks:
                args = {label: v for label, key in keys.items() if (v := getattr(x, key)) is not None}
                if args:
                    events.append({"name": name, "ph": "C", "pid": 1, "ts": ts, "args": args})
        return events

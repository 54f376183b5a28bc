"""What keeps the CUDA path honest, tested without a GPU: event-time precision over long passes,
a worker's failure surfacing as itself, device-ordered zero-copy reads, wide-word gathers, the
NVML sampler's windows and partial support, per-pass warm-up and the host-memory override."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_backends import TINY

from engramsim.backends import executor
from engramsim.backends.cpu import CpuDevice
from engramsim.backends.cuda import _HostPages, as_words, word_bytes
from engramsim.backends.event_clock import REBASE_S, EventClock
from engramsim.backends.memory import HOST_MEMORY_ENV, host_memory, meminfo
from engramsim.backends.nvml import Sampler
from engramsim.errors import InputError
from engramsim.runner import run_real
from engramsim.scenario_io import load_scenario
from engramsim.session import prepare


class FakeEvent:
    """A CUDA event as `elapsed_time` sees it: float32 milliseconds between true times."""

    def __init__(self, t_s: float) -> None:
        self.t_s = t_s

    def elapsed_time(self, end: FakeEvent) -> float:
        return float(np.float32((end.t_s - self.t_s) * 1e3))


def test_event_clock_keeps_sub_microsecond_precision_over_a_long_pass():
    """Marks every 2 ms for 120 s, in pairs 3 us apart (a small copy): resolved against one
    reference, float32 milliseconds lose the pair's length; the moving anchor keeps it to ~0.1 us."""
    reference = FakeEvent(0.0)
    clock = EventClock(reference)
    worst_pair, worst_abs, naive_worst = 0.0, 0.0, 0.0
    for t in np.arange(0.002, 120.0, 0.002):
        start, end = FakeEvent(float(t)), FakeEvent(float(t) + 3e-6)
        s, e = clock.seconds(start), clock.seconds(end)
        worst_pair = max(worst_pair, abs((e - s) - 3e-6))
        worst_abs = max(worst_abs, abs(s - t))
        naive_worst = max(naive_worst, abs((reference.elapsed_time(end) - reference.elapsed_time(start)) / 1e3 - 3e-6))
    assert naive_worst > 2e-6, "the single-reference resolution this guards against"
    assert worst_pair < 1e-7 and worst_abs < 2e-6


def test_event_clock_resolves_marks_out_of_order_and_before_the_anchor():
    clock = EventClock(FakeEvent(0.0))
    late = clock.seconds(FakeEvent(10.0))  # moves the anchor to 10 s
    assert late == pytest.approx(10.0, abs=1e-5)
    assert clock.seconds(FakeEvent(9.9999)) == pytest.approx(9.9999, abs=1e-7)  # earlier than the anchor: negative elapsed
    assert clock.seconds(FakeEvent(10.0 + REBASE_S / 2)) == pytest.approx(10.0 + REBASE_S / 2, abs=1e-7)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scenario") / "tiny.yaml"
    path.write_text(TINY)
    return path


def _prepared(tiny: Path, *sets: str):
    return prepare(load_scenario(tiny, ["run.baseline=false", "run.max_steps=6", *sets]), str(tiny))


class StrictDevice(CpuDevice):
    """A CPU device that treats marks as CUDA does: a missing `ready` event is an AttributeError
    (what `None.query()` raises), a failed copy is a CUDA error, and after one, releasing the
    device raises it again (CUDA errors are sticky)."""

    fail_h2d = False
    calls: list[tuple[str, object]]

    def __init__(self, source: str) -> None:
        super().__init__(source)
        self.calls = []
        self.failed = False

    def landed(self, ready):
        if ready is None:
            raise AttributeError("'NoneType' object has no attribute 'query'")
        return True

    def wait_landed(self, ready):
        self.landed(ready)

    def wait_reached(self, mark):
        self.calls.append(("wait_reached", mark))
        return super().wait_reached(mark)

    def queue_after(self, mark):
        self.calls.append(("queue_after", mark))

    def h2d(self, dst, src):
        if self.fail_h2d:
            self.failed = True
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super().h2d(dst, src)

    def close(self):
        if self.failed:
            raise RuntimeError("CUDA error: an illegal memory access was encountered (sticky)")


def _strict(monkeypatch, **attrs) -> list[StrictDevice]:
    made: list[StrictDevice] = []

    def make(backend: str, source: str) -> StrictDevice:
        device = type("Strict", (StrictDevice,), attrs)(source)
        made.append(device)
        return device

    monkeypatch.setattr(executor, "make_device", make)
    return made


def test_a_failed_fetch_raises_its_own_error_not_a_missing_event(tiny, monkeypatch):
    _strict(monkeypatch, fail_h2d=True)
    with pytest.raises(RuntimeError, match="illegal memory access was encountered$"):
        run_real(_prepared(tiny, "strategies.prefetch=on-demand"), "cpu")


@pytest.mark.parametrize(("transport", "host_waits"), [("staged", True), ("zero-copy", False)])
def test_a_zero_copy_read_is_ordered_on_the_device_without_a_host_wait(tiny, monkeypatch, transport, host_waits):
    made = _strict(monkeypatch)
    run_real(_prepared(tiny, f"strategies.transport={transport}"), "cpu")
    kinds = {kind for kind, _ in made[0].calls}
    assert kinds == ({"wait_reached"} if host_waits else {"queue_after"})


def test_warm_up_runs_on_the_pass_own_worker_thread_and_leaves_nothing_behind(tiny, monkeypatch):
    """Every pass warms up on the fetch worker that then runs it (OpenMP pools are per thread), for
    at least `warmup_s`, and starts with no spans, fetches or cache rows from the warm-up."""
    threads: list[list[int]] = []

    class Recording(CpuDevice):
        warmup_s = 0.05

        def gather(self, table, index, out):
            threads[-1].append(threading.get_ident())
            return super().gather(table, index, out)

    monkeypatch.setattr(executor, "make_device", lambda backend, source: Recording(source))
    starts = []
    original = executor.RealSession._warm_up

    def warm_up(self, worker, placement, engram):
        threads.append([])
        original(self, worker, placement, engram)
        starts.append(len(threads[-1]))

    monkeypatch.setattr(executor.RealSession, "_warm_up", warm_up)
    outcome = run_real(_prepared(tiny, "strategies.cache={name: lru, params: {rows: 5000}}"), "cpu")
    assert len(threads) == 1 and starts[0] >= 2, "warmed up for at least two fetches"
    assert len(set(threads[0])) == 1, "one worker thread for warm-up and pass"
    assert [s.index for s in outcome.steps] == list(range(len(outcome.steps)))
    assert {s.step for s in outcome.spans} <= {s.index for s in outcome.steps}, "no warm-up span in the pass"
    assert outcome.steps[0].layers[0].cache_hits == 0, "caches start the pass empty"


def test_words_are_the_widest_integer_dividing_a_row():
    assert [word_bytes(b) for b in (256, 12, 6, 3)] == [8, 4, 2, 1]
    table = torch.randn(5, 64, dtype=torch.float32).to(torch.bfloat16)
    words = as_words(table)
    assert words.dtype == torch.int64 and words.shape == (5, 16)
    assert torch.equal(words.view(torch.bfloat16), table)
    iface = _HostPages(table).__cuda_array_interface__
    assert iface["typestr"] == "<i8" and iface["shape"] == (5, 16) and iface["strides"] == (128, 8)
    odd = torch.zeros(3, 3, dtype=torch.bfloat16)  # 6-byte rows: 2-byte words
    assert _HostPages(odd).__cuda_array_interface__["typestr"] == "<i2"


class FakeNvml:
    """pynvml's surface the sampler uses: byte counters advancing 1 GB/s in, 0.5 GB/s out."""

    NVML_FI_DEV_PCIE_COUNT_RX_BYTES, NVML_FI_DEV_PCIE_COUNT_TX_BYTES = 198, 197
    NVML_PCIE_UTIL_RX_BYTES, NVML_PCIE_UTIL_TX_BYTES = 1, 0
    NVML_CLOCK_SM, NVML_CLOCK_MEM = 1, 2
    NVML_SUCCESS, NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_UNKNOWN = 0, 3, 999

    class NVMLError(Exception):
        pass

    def __init__(self, counters: bool = True, util: bool = True) -> None:
        self.counters, self.util, self.t_us = counters, util, 0
        self.throughput_calls: list[int] = []

    def nvmlDeviceGetHandleByIndex(self, i):
        return "gpu0"

    def nvmlDeviceGetFieldValues(self, handle, fields):
        self.t_us += 20_000
        ret = self.NVML_SUCCESS if self.counters else self.NVML_ERROR_NOT_SUPPORTED

        def value(rate: float):
            return SimpleNamespace(nvmlReturn=ret, timestamp=self.t_us, value=SimpleNamespace(ullVal=int(rate * self.t_us * 1e3)))

        return [value(1.0), value(0.5)]

    def nvmlDeviceGetPcieThroughput(self, handle, counter):
        self.throughput_calls.append(counter)
        return 1000

    def nvmlDeviceGetUtilizationRates(self, handle):
        if not self.util:
            raise self.NVMLError("Not Supported")
        return SimpleNamespace(gpu=50)

    def nvmlDeviceGetClockInfo(self, handle, clock):
        return 1980 if clock == self.NVML_CLOCK_SM else 3201

    def nvmlShutdown(self):
        pass


def _sample(nvml: FakeNvml, seconds: float = 0.15) -> Sampler:
    with Sampler(time.perf_counter, nvml=nvml, interval_s=0.01) as sampler:
        time.sleep(seconds)
    return sampler


def test_nvml_reads_both_directions_in_one_window_and_reports_the_real_interval():
    sampler = _sample(FakeNvml())
    summary = sampler.summary()
    assert summary["samples"] >= 5 and summary["pcie_source"].startswith("byte counters")
    assert summary["pcie_rx_gbps_mean"] == pytest.approx(1.0) and summary["pcie_tx_gbps_mean"] == pytest.approx(0.5)
    assert summary["interval_ms"] == pytest.approx(10, rel=0.8) and summary["interval_target_ms"] == 10
    assert summary["pcie_windows_dropped"] == 0


def test_nvml_drops_a_window_whose_counter_went_down():
    """Seen on an H200: counter deltas below zero, which are no rate; such windows are dropped and counted."""
    nvml = FakeNvml()
    reads = iter([(20_000, 100, 100), (40_000, 50, 200), (60_000, 1_000_050, 500_200)])

    def values(handle, fields):
        t, rx, tx = next(reads)
        return [SimpleNamespace(nvmlReturn=0, timestamp=t, value=SimpleNamespace(ullVal=v)) for v in (rx, tx)]

    nvml.nvmlDeviceGetFieldValues = values
    from engramsim.backends.nvml import _Pcie

    pcie = _Pcie(nvml, "gpu0")  # its probe takes the first read
    assert pcie.read() == (None, None) and pcie.backwards == 1
    assert pcie.read() == (pytest.approx(0.05), pytest.approx(0.025))  # 1 MB and 0.5 MB in 20 ms


def test_nvml_one_unsupported_quantity_does_not_stop_the_others():
    nvml = FakeNvml(counters=False, util=False)
    sampler = _sample(nvml)
    summary = sampler.summary()
    assert summary["pcie_source"].startswith("nvmlDeviceGetPcieThroughput") and nvml.throughput_calls
    assert summary["sm_util_pct_mean"] is None and "sm_util_pct" in summary["errors"] and summary["error"] is None
    assert summary["sm_clock_mhz_mean"] == 1980 and summary["pcie_rx_gbps_mean"] == pytest.approx(1000 * 1024 / 1e9)
    assert all("util" not in e["args"] for e in sampler.counters())


def test_host_memory_can_be_stated_where_the_vm_grows_on_demand(monkeypatch):
    monkeypatch.setenv(HOST_MEMORY_ENV, "120")
    total, available = host_memory()
    assert available == 120 << 30 and total == meminfo()["MemTotal"]
    monkeypatch.setenv(HOST_MEMORY_ENV, "lots")
    with pytest.raises(InputError, match=f"{HOST_MEMORY_ENV}.*positive number of GiB"):
        host_memory()


def test_warm_up_follows_the_arrivals_without_sleeping_through_their_gaps(tiny, monkeypatch):
    """Requests a second apart: the whole-pass warm-up (as on CUDA) meets them one by one, as the
    pass will (batches of one), but skips the gaps instead of sleeping through them."""
    prepared = _prepared(tiny, "workload.arrival={kind: poisson, rate_per_s: 1}", "run.max_steps=40")
    sizes: list[int] = []

    class WholePass(CpuDevice):
        warmup_steps = None

    monkeypatch.setattr(executor, "make_device", lambda backend, source: WholePass(source))
    slept: list[float] = []
    monkeypatch.setattr(executor.time, "sleep", slept.append)
    with executor.RealSession(prepared, "cpu") as session, session._threads() as worker:
        original = executor.PassState.step

        def step(self, start, plan, spans):
            sizes.append(plan.step.num_seqs)
            return original(self, start, plan, spans)

        monkeypatch.setattr(executor.PassState, "step", step)
        started = time.perf_counter()
        session._warm_up(worker, None, True)
    assert not slept and time.perf_counter() - started < 5, "the gaps were skipped"
    assert sizes and sizes[0] == 1, "the first request ran alone, as it will in the pass"

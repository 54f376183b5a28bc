"""What a real run will cost, said before it allocates anything.

`engramsim run --backend cpu|cuda` on a scenario sized for a GPU can ask this machine for more
memory than it has, or for hours, and used to find out only by trying. `estimate_real_run`
predicts both without allocating:

- memory: the bytes `backends.executor.SessionLayout.footprint` says the session will allocate
  (the function the session's own memory check and allocation read), plus the workload's
  arrays, which exist already;
- wall time: setting up (tables allocated and filled, stand-in weights drawn, the warm-up steps)
  plus every pass of `runner.passes`, simulated on the profile that best describes this machine
  for the backend (`pricing_profile`).

`preflight_real` turns that into the line `engramsim run` prints, and refuses in one line a run
that does not fit in memory, or that would take longer than MAX_WALL_S unless asked to. It sits
in the top layer because it needs both the simulator and the real backend's allocation sizes; like
`runner.run_real_report` it imports torch only when called, so a simulated run never loads it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from engramsim.backends import memory
from engramsim.backends.calibration.machine import check_profile_host, cpu_model, link_name, memory_gib
from engramsim.errors import InputError
from engramsim.hardware.presets import load_profile
from engramsim.hardware.profile import GPU, HardwareProfile, Host, Link, Provenance
from engramsim.runner import passes, real_placements, simulate_run
from engramsim.session import Prepared
from engramsim.workload import MEMO_BYTES

GIB = 1 << 30
GB = 1e9
MAX_WALL_S = 600.0  # a real run estimated to take longer needs --yes
SIM_MAX_STEPS = 2_000  # steps simulated per pass (about a second); a longer pass is extrapolated
PROFILES = Path("profiles")  # where `engramsim calibrate --out profiles/NAME.yaml` keeps this machine's profiles
# fill_table into fresh torch.empty tables on the README's 2-core Xeon VM (2026-11-30, three runs of
# each size): 1.7-4.4 GB/s up to 2 GiB, 0.5-0.9 GB/s for 3-6 GiB (first touches of memory the VM had
# not backed yet). The large-table rate is the one that decides whether a run is long.
FILL_BYTES_PER_S = 0.8e9
# StandIn's weights on the CPU backend (randn, scale, oneDNN prepack), same VM and day: 85-87 M
# parameters/s for 0.4-1.2 B parameters, fp32 and bf16 alike, after ~0.7 s once (oneDNN's first call).
# CUDA draws them on the GPU: no cost here.
STANDIN_PARAMS_PER_S = 85e6
STANDIN_FIRST_CALL_S = 0.7


def default_cpu_profile() -> HardwareProfile:
    """The CPU profile when this machine has none calibrated: `engramsim calibrate --backend cpu
    --quick` on the README's 2-core Xeon VM (2026-11-30, with its MLA + mHC and MoE shapes), rounded, with this machine's names and
    memory. One thread of another x86 core may well be 2x faster or slower."""
    cpu, gib = cpu_model(), memory_gib()
    return HardwareProfile(
        name="default-cpu",
        gpu=GPU(name=cpu, bf16_tflops=0.11, hbm_gbps=13.5, hbm_gib=gib, compute_efficiency=1.0, memory_efficiency=1.0,
                layer_overhead_us=210.0, engram_overhead_us=950.0, kernel_overhead_us=105.0, gemm_half_rows=13.0,
                grouped_gemm_half_rows=24.0, roofline_exponent=32.0, copy_engines=1),
        link=Link(name=link_name("cpu"), h2d_gbps=6.0, d2h_gbps=6.0, dma_latency_us=93.0, zero_copy_gbps=3.2,
                  zero_copy_latency_us=310.0, transaction_bytes=128),
        host=Host(name=cpu, dram_gbps=7.5, dram_gib=gib, gather_rows_per_s=11e6, gather_threads=1, gather_overhead_us=180.0),
        step_overhead_us=360.0, step_overhead_per_seq_us=2.9,
        provenance=Provenance(kind="preset", source="engramsim.estimate: a quick CPU calibration of a 2-core Xeon VM, rounded",
                              host=None),
    )


def calibrated_here(profile: HardwareProfile, backend: str) -> bool:
    """Was `profile` calibrated on this machine's CPU (and GPU) for `backend`? (A CPU calibration names no GPU.)"""
    prov = profile.provenance
    return prov.kind == "calibrated" and (prov.gpu is None) == (backend == "cpu") and check_profile_host(profile) is None


def pricing_profile(prepared: Prepared, backend: str) -> tuple[HardwareProfile, str]:
    """The profile that prices the passes, and how it was chosen: the scenario's own when it was
    calibrated here for `backend`, else the newest such profile in PROFILES, else an uncalibrated
    default (CPU: `default_cpu_profile`; CUDA: the scenario's preset)."""
    if calibrated_here(prepared.profile, backend):
        return prepared.profile, f"{prepared.profile.name} (the scenario's, calibrated on this machine)"
    found = []
    for path in sorted(PROFILES.glob("*.y*ml")):
        try:
            profile = load_profile(path)
        except InputError:  # not a profile: nothing to price with
            continue
        if calibrated_here(profile, backend):
            found.append((profile.provenance.date or "", str(path), profile))
    if found:
        date, name, profile = max(found)
        return profile, f"{name} (calibrated on this machine, {date[:10]})"
    if backend == "cpu":
        return default_cpu_profile(), (f"default-cpu (uncalibrated: a 2-core Xeon VM's numbers, rounded; "
                                       f"`engramsim calibrate --backend cpu --quick --out {PROFILES}/cpu.yaml` makes this machine's)")
    kind = prepared.profile.provenance.kind
    return prepared.profile, f"{prepared.profile.name} (the scenario's {kind} profile, not calibrated for {backend} on this machine)"


def simulate_passes(prepared: Prepared, profile: HardwareProfile, warm_up_steps: int | None,
                    warm_up_min_s: float = 0.0) -> tuple[dict[str, float], float, str | None]:
    """Simulated seconds of every pass on `profile`, those of the passes' warm-ups (each pass's first
    `warm_up_steps`, None: the whole pass, repeated for at least `warm_up_min_s`), and how a pass
    longer than SIM_MAX_STEPS was extrapolated (by output tokens, up to the scenario's max_steps)."""
    run = prepared.scenario.run
    cap = min(run.max_steps or SIM_MAX_STEPS, SIM_MAX_STEPS)
    capped = replace(prepared, profile=profile,
                     scenario=prepared.scenario.model_copy(update={"run": run.model_copy(update={"max_steps": cap})}))
    total = prepared.workload.total_output_tokens
    seconds: dict[str, float] = {}
    warm_up, note = 0.0, None
    for label, kwargs in passes(prepared.scenario):
        outcome = simulate_run(capped, **kwargs)
        factor = 1.0
        cut_short = len(outcome.steps) == cap and cap != run.max_steps  # by SIM_MAX_STEPS, not by the scenario
        if cut_short and outcome.output_tokens < total:
            factor = min(total / outcome.output_tokens, run.max_steps / cap if run.max_steps else math.inf)
            note = f"passes extrapolated from their first {cap:,} simulated steps by output tokens"
        seconds[label] = outcome.makespan_s * factor
        first = (seconds[label] if warm_up_steps is None else
                 sum(outcome.steps[i].latency_s for i in range(min(warm_up_steps, len(outcome.steps)))))
        warm_up += first * max(1, math.ceil(warm_up_min_s / first)) if first > 0 else warm_up_min_s
    return seconds, warm_up, note


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _items(items: dict[str, int]) -> str:
    """The items worth changing (5% of the total or more), biggest first, in GiB."""
    total = sum(items.values())
    big = sorted(((size, name) for name, size in items.items() if size >= total / 20), reverse=True)
    return ", ".join(f"{name} {size / GIB:.2f}" for size, name in big) + " GiB"


@dataclass(frozen=True)
class RunEstimate:
    """What a real run will take: wall seconds by phase, bytes by item, and what priced them."""

    scenario: str
    backend: str
    setup: dict[str, float]  # seconds: tables allocated and filled, weights drawn, tables copied to HBM, warm-up
    passes: dict[str, float]  # seconds of each pass, by its label in `runner.passes`
    footprint: memory.Footprint  # bytes the session allocates (on the CPU backend, "device" is host memory too)
    workload_bytes: int  # the workload's arrays and its lookups memo: held already, or growing during the run
    profile: str  # which profile priced the passes, and how it was chosen
    note: str | None = None  # how passes too long to simulate whole were extrapolated

    @property
    def wall_s(self) -> float:
        return sum(self.setup.values()) + sum(self.passes.values())

    @property
    def memory(self) -> dict[str, int]:
        """Bytes by item, wherever they live."""
        return {**self.footprint.host, **self.footprint.device, "workload arrays": self.workload_bytes}

    @property
    def memory_bytes(self) -> int:
        return sum(self.memory.values())

    def text(self) -> str:
        """One line for the user: wall time by phase, memory by item, the profile."""
        setup = sum(self.setup.values())
        wall = (f"~{_duration(self.wall_s)} wall (setup {_duration(setup)}, {len(self.passes)} "
                f"pass{'es' if len(self.passes) > 1 else ''} {_duration(self.wall_s - setup)})")
        if self.backend == "cpu":
            mem = f"~{self.memory_bytes / GIB:.1f} GiB memory ({_items(self.memory)})"
        else:
            host = {**self.footprint.host, "workload arrays": self.workload_bytes}
            mem = (f"~{sum(host.values()) / GIB:.1f} GiB host memory ({_items(host)}), "
                   f"~{sum(self.footprint.device.values()) / GIB:.1f} GiB GPU memory ({_items(self.footprint.device)})")
        line = f"{self.backend} run of {self.scenario!r}: {wall}, {mem}; profile {self.profile}"
        return f"{line}; {self.note}" if self.note else line


def estimate_real_run(prepared: Prepared, backend: str) -> RunEstimate:
    """What `runner.run_real_report(prepared, backend, ...)` will take, before it allocates
    anything (the device is made and closed again: on CUDA that initialises its context)."""
    from engramsim.backends.device import make_device
    from engramsim.backends.executor import SessionLayout

    scenario = prepared.scenario
    layout = SessionLayout(prepared, real_placements(scenario))
    device = make_device(backend, prepared.source)
    try:
        footprint = layout.footprint(device, layout.resident)
        itemsize = device.compute_dtype(scenario.model.backbone.dtype).itemsize
    finally:
        device.close()
    profile, label = pricing_profile(prepared, backend)
    seconds, warm_up, note = simulate_passes(prepared, profile, device.warmup_steps, device.warmup_s)
    setup = {"Engram tables": footprint.host["Engram tables"] / FILL_BYTES_PER_S}
    if backend == "cpu":
        setup["stand-in weights"] = STANDIN_FIRST_CALL_S + footprint.device["stand-in weights"] / itemsize / STANDIN_PARAMS_PER_S
    if "Engram tables in HBM" in footprint.device:
        setup["Engram tables in HBM"] = footprint.device["Engram tables in HBM"] / (profile.link.h2d_gbps * GB)
    setup["warm-up"] = warm_up
    return RunEstimate(scenario.name, backend, setup, seconds, footprint, workload_bytes(prepared), label, note)


def workload_bytes(prepared: Prepared) -> int:
    """What the workload holds since `prepare` (its arrays, the trace's tokens) and what its lookups
    memo may grow to: a step's unique rows never outnumber its references, its key is 8 B a token."""
    workload = prepared.workload
    requests = workload.requests
    arrays = (workload.window_offsets, workload.trace_tokens, requests.arrival_s, requests.prompt_len, requests.output_len,
              requests.trace_start)
    lookups = workload.num_tokens * 8 * (1 + len(prepared.tables) * prepared.scenario.model.engram.heads_per_layer)
    return sum(a.nbytes for a in arrays) + min(MEMO_BYTES, lookups)


def check_real_memory(prepared: Prepared, estimate: RunEstimate) -> None:
    """InputError (one line, naming the field to change) when the estimated session does not fit
    in this machine's memory (CPU: one memory; CUDA: host memory and the GPU's free memory)."""
    fp = estimate.footprint
    _, host = memory.host_memory()
    if estimate.backend == "cpu":  # one memory, as the session's own check sees it
        places = [("host memory", {**fp.host, **fp.device}, host)]
    else:
        import torch

        places = [("host memory", fp.host, host), ("GPU memory", fp.device, torch.cuda.mem_get_info()[0])]
    for where, items, available in places:
        memory.check_fits(prepared.source, where, items, available, fp.field_of(items))


def preflight_real(prepared: Prepared, backend: str, yes: bool, ask: Callable[[str], bool] | None = None) -> str:
    """The estimate's line for the user; InputError (one line, naming the field to change) when the
    run does not fit in memory, or takes longer than MAX_WALL_S and neither `yes` nor `ask(line)`
    (a terminal's prompt) says to go ahead."""
    estimate = estimate_real_run(prepared, backend)
    text = estimate.text()
    check_real_memory(prepared, estimate)
    if estimate.wall_s > MAX_WALL_S and not yes and not (ask and ask(text)):
        wall = {**estimate.setup, **estimate.passes}
        field = estimate.footprint.fields.get(max(wall, key=wall.__getitem__), "workload.requests")
        raise InputError(prepared.source, f"{text}; that is over {MAX_WALL_S / 60:.0f} min: pass --yes to run it anyway",
                         field=field)
    return text


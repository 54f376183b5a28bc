"""Who this machine is: what a calibrated profile records as its host and GPU, the check that a
profile was calibrated here, and whether a real backend can run here at all.

Shared by `engramsim calibrate`, `run`, `validate` and `hw`. Nothing here imports torch at import
time: `run` checks a profile's host before it knows it needs torch.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket

from engramsim import __version__
from engramsim.errors import InputError
from engramsim.hardware.profile import HardwareProfile

GIB = 1 << 30


def cpu_model() -> str:
    """The CPU model from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_host() -> str:
    """'<CPU model> x<cores> @ <hostname>': what a calibrated profile records as its host."""
    return f"{cpu_model()} x{os.cpu_count() or 1} @ {socket.gethostname()}"


def _hardware_part(host: str | None) -> str | None:
    """The host string without its hostname (a CI runner's name changes every run; its CPU does not)."""
    return None if host is None else host.rsplit(" @ ", 1)[0].strip()


def gpu_name() -> str | None:
    """This machine's first GPU by NVML, without initialising CUDA; None when there is none."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            if pynvml.nvmlDeviceGetCount() == 0:
                return None
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
            return name.decode() if isinstance(name, bytes) else str(name)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 -- no library, no driver, no device: no GPU as far as a profile is concerned
        return None


def check_profile_host(profile: HardwareProfile) -> str | None:
    """A warning when `profile` was calibrated on other hardware than this machine, else None.

    Only calibrated profiles are checked (a preset describes hardware you may not have, on
    purpose). The CPU model and core count must match (not the hostname); so must the GPU when
    the profile names one.
    """
    prov = profile.provenance
    if prov.kind != "calibrated":
        return None
    problems = []
    here = machine_host()
    if prov.host and _hardware_part(prov.host) != _hardware_part(here):
        problems.append(f"host {_hardware_part(prov.host)!r} (this machine: {_hardware_part(here)!r})")
    if prov.gpu:
        gpu = gpu_name()
        if gpu != prov.gpu:
            problems.append(f"GPU {prov.gpu!r} (this machine: {gpu or 'none'!r})")
    if not problems:
        return None
    return (f"profile {profile.name!r} was calibrated on {' and '.join(problems)}; "
            f"its numbers may not hold here (run `engramsim calibrate` on this machine)")


def versions(backend: str) -> dict[str, str]:
    """The software a calibration ran on: its numbers hold for these versions."""
    import numpy as np
    import scipy
    import torch

    out = {"engramsim": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "numpy": np.__version__, "scipy": scipy.__version__}
    if backend == "cuda" and torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
        with contextlib.suppress(Exception):
            import pynvml

            pynvml.nvmlInit()
            drv = pynvml.nvmlSystemGetDriverVersion()
            out["driver"] = drv.decode() if isinstance(drv, bytes) else str(drv)
            pynvml.nvmlShutdown()
    return out


def require_backend(backend: str) -> None:
    """InputError (one line, exit 2) when `backend` cannot run here."""
    if backend not in ("cpu", "cuda"):
        raise InputError("--backend", f"expected 'cpu' or 'cuda', got {backend!r}")
    if backend == "cuda":
        import torch

        if not torch.cuda.is_available():
            build = f"torch {torch.__version__}" + ("" if torch.version.cuda else " (a CPU-only build)")
            raise InputError("--backend", f"'cuda' needs a CUDA GPU, and {build} sees none; use --backend cpu")


def memory_gib() -> float:
    """Host memory, GiB (one decimal): what a CPU profile records as its memory."""
    from engramsim.backends.memory import host_memory

    return round(host_memory()[0] / GIB, 1)


def cache_bytes() -> tuple[int, int] | None:
    """(L2 of one core, last-level cache) in bytes from sysfs (Linux), None where it says nothing."""
    sizes: dict[int, int] = {}
    base = "/sys/devices/system/cpu/cpu0/cache"
    with contextlib.suppress(OSError, ValueError):
        for index in sorted(os.listdir(base)):
            if not index.startswith("index"):
                continue
            with open(f"{base}/{index}/type", encoding="utf-8") as f:
                if f.read().strip() == "Instruction":
                    continue
            with open(f"{base}/{index}/level", encoding="utf-8") as f, open(f"{base}/{index}/size", encoding="utf-8") as g:
                level, size = int(f.read()), g.read().strip()
            sizes[level] = int(size[:-1]) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[size[-1]] if size[-1].isalpha() else int(size)
    if 2 not in sizes:
        return None
    return sizes[2], sizes[max(sizes)]


def huge_page_advice() -> str | None:
    """The kernel's transparent-huge-page mode ('always', 'madvise' or 'never'); None off Linux."""
    with contextlib.suppress(OSError):
        with open("/sys/kernel/mm/transparent_hugepage/enabled", encoding="utf-8") as f:
            return f.read().split("[", 1)[1].split("]", 1)[0]
    return None


def link_name(backend: str) -> str:
    """The link a calibration measured, as its profile names it."""
    if backend == "cpu":
        return "host memcpy (the CPU backend's stand-in for the link)"
    with contextlib.suppress(Exception):
        from engramsim.backends.nvml import gpus

        dev = gpus()["devices"][0]
        return f"PCIe Gen{dev['pcie_generation']} x{dev['pcie_width']} (measured)"
    return "host-to-device link (measured)"

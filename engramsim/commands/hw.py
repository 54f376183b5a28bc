"""`engramsim hw`: what this machine offers a real run: CPU and its NUMA nodes, host memory, torch build, GPUs, PCIe.

It works everywhere: without a GPU it says "no CUDA GPU", and an NVML failure (no driver
library, an unsupported query) is one line in the report, not an error.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from engramsim.commands import HELP
from engramsim.errors import InputError

GIB = 1 << 30


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("hw", help=HELP["hw"])
    p.add_argument("--json", action="store_true", help="print the findings as one JSON object")
    p.add_argument("--presets", action="store_true", help="list the shipped hardware, link and tier presets instead")
    p.set_defaults(handler=run)


def cpu_count(cpulist: str) -> int:
    """CPUs in a kernel cpulist ("0-3,8-11" -> 8)."""
    count = 0
    for part in cpulist.strip().split(","):
        if part:
            first, _, last = part.partition("-")
            count += int(last or first) - int(first) + 1
    return count


def numa_nodes(root: Path = Path("/sys/devices/system/node")) -> list[dict[str, int]]:
    """Each NUMA node (socket, or part of one) and its CPUs, from sysfs: what `hardware.node.numa_nodes`
    and a profile's `socket.cores` describe; empty where the kernel does not say."""
    out = []
    for node in sorted(root.glob("node[0-9]*"), key=lambda path: int(path.name[4:])):
        try:
            out.append({"node": int(node.name[4:]), "cpus": cpu_count((node / "cpulist").read_text())})
        except (OSError, ValueError):
            continue
    return out


def detect() -> dict[str, Any]:
    """Everything `hw` reports, as plain JSON-able values."""
    import torch

    from engramsim.backends.calibration.machine import cpu_model
    from engramsim.backends.memory import host_memory
    from engramsim.backends.nvml import NvmlUnavailable, gpus

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {"cpu": {"model": cpu_model(), "logical_cores": os.cpu_count(), "usable_cores": usable},
                            "numa_nodes": numa_nodes()}
    try:
        total, available = host_memory()
        info["host_memory"] = {"total_gib": total / GIB, "available_gib": available / GIB}
    except InputError as exc:
        info["host_memory"] = {"error": exc.problem}
    info["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    info["gpus"] = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i)
            info["gpus"].append({"index": i, "name": props.name, "capability": f"{props.major}.{props.minor}",
                                 "memory_total_gib": total / GIB, "memory_free_gib": free / GIB})
    try:
        info["nvml"] = gpus()
    except NvmlUnavailable as exc:
        info["nvml"] = {"error": str(exc)}
    return info


def report_lines(info: dict[str, Any]) -> list[str]:
    cpu, mem, tch = info["cpu"], info["host_memory"], info["torch"]
    lines = [f"CPU: {cpu['model']} ({cpu['logical_cores']} logical cores, {cpu['usable_cores']} usable)"]
    numa = info["numa_nodes"]
    nodes = ", ".join(f"node{n['node']}: {n['cpus']} CPUs" for n in numa)
    lines.append(f"NUMA: {len(numa)} node(s) ({nodes}; hardware.node.numa_nodes)" if numa else "NUMA: not reported by the kernel")
    lines.append(f"host memory: {mem['error']}" if "error" in mem else
                 f"host memory: {mem['total_gib']:.1f} GiB total, {mem['available_gib']:.1f} GiB available")
    build = f"CUDA {tch['cuda']}" if tch["cuda"] else "CPU-only build"
    lines.append(f"torch: {tch['version']} ({build})")
    if not info["gpus"]:
        lines.append("GPU: no CUDA GPU (torch.cuda.is_available() is False)")
    for gpu in info["gpus"]:
        lines.append(f"GPU {gpu['index']}: {gpu['name']} (sm {gpu['capability']}), "
                     f"{gpu['memory_total_gib']:.1f} GiB, {gpu['memory_free_gib']:.1f} GiB free")
    nvml = info["nvml"]
    if "error" in nvml:
        lines.append(nvml["error"])
    else:
        lines.append(f"NVML: driver {nvml['driver']}")
        for d in nvml["devices"]:
            lines.append(f"  device {d['index']}: {d['name']}, PCIe Gen{d['pcie_generation']} x{d['pcie_width']} "
                         f"(max Gen{d['pcie_generation_max']} x{d['pcie_width_max']})")
    return lines


def run(args: argparse.Namespace) -> int:
    if args.presets:
        from engramsim.hardware.presets import link_names, profile_names, tier_names

        print("profiles: " + ", ".join(profile_names()) + "\nlinks: " + ", ".join(link_names())
              + "\ntiers: " + ", ".join(tier_names()) + " (hardware.cxl / hardware.nvme)")
        return 0
    info = detect()
    print(json.dumps(info, indent=2) if args.json else "\n".join(report_lines(info)))
    return 0

"""The device check's first minute: can this machine run the CUDA backend at all?

Logs /proc/meminfo, page-locks 1 GiB of host memory through the backend's own `host_table`
(cudaHostRegister), reads rows of it back through the zero-copy view and compares them, times one
64 MiB pinned host-to-device copy with CUDA events (median of 5), and takes one NVML read and a
short NVML sampling. Writes everything as JSON to the path given; exits 1 on the first failure.
With `--backend cpu` (a dry run of the device check's plumbing) only the memory facts are read.

Usage: python scripts/device_smoke.py OUT.json [--backend cuda|cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from engramsim.backends.memory import meminfo

GIB, MIB = 1 << 30, 1 << 20


def cuda_checks(out: dict[str, Any]) -> None:
    from engramsim.backends.cuda import CudaDevice, as_words
    from engramsim.backends.device import to_index
    from engramsim.backends.nvml import gpus

    props = torch.cuda.get_device_properties(0)
    out["gpu"] = {"name": props.name, "sms": props.multi_processor_count, "memory_gib": props.total_memory / GIB,
                  "torch": torch.__version__, "cuda": torch.version.cuda}
    device = CudaDevice("smoke")
    try:
        t = time.perf_counter()
        table = device.host_table(GIB // 160, 80, torch.bfloat16)  # 1 GiB of 160-byte rows, page-locked
        out["register_1gib_s"] = time.perf_counter() - t
        words = as_words(table)  # every row tells itself apart: its index in the first and last word
        words.zero_()
        words[:, 0] = torch.arange(table.shape[0])
        words[:, -1] = torch.arange(table.shape[0]) * 7 + 1
        view = device.zero_copy_source(table)  # refuses when rows read back differ
        rows = torch.randint(0, table.shape[0], (4096,), generator=torch.Generator().manual_seed(0))
        got = view.index_select(0, to_index(rows.numpy(), device.torch_device)).cpu()
        out["zero_copy_readback_equal"] = bool(torch.equal(got, as_words(table.index_select(0, rows))))
        if not out["zero_copy_readback_equal"]:
            raise RuntimeError("zero-copy read-back differs from the host table")
        src = torch.empty(64 * MIB, dtype=torch.uint8, pin_memory=True)
        dst = torch.empty(64 * MIB, dtype=torch.uint8, device=device.torch_device)
        device.start_clock()
        seconds = []
        for _ in range(6):
            start, end = device.h2d(dst, src)
            device.synchronize()
            seconds.append(device.seconds(end) - device.seconds(start))
        out["h2d_64mib_s"] = seconds[1:]  # the first is a warm-up
        out["h2d_64mib_gbps_median"] = 64 * MIB / statistics.median(seconds[1:]) / 1e9
    finally:
        device.close()
    out["nvml"] = gpus()
    sampler = device.monitor()
    with sampler:
        time.sleep(0.3)
    out["nvml_sampling"] = sampler.summary()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--backend", choices=("cuda", "cpu"), default="cuda")
    args = parser.parse_args()
    info = meminfo()
    out: dict[str, Any] = {"backend": args.backend, "meminfo_gib": {k: info[k] / GIB for k in ("MemTotal", "MemAvailable", "MemFree")
                                                                     if k in info}}
    code = 0
    try:
        if args.backend == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("torch sees no CUDA GPU")
            cuda_checks(out)
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["traceback"] = traceback.format_exc()
        code = 1
    out["ok"] = code == 0
    text = json.dumps(out, indent=2)
    args.out.write_text(text + "\n")
    print(text)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""Free-memory checks, done before a real backend allocates anything.

Engram tables reach hundreds of GiB. A run that cannot fit must fail in a second with one line
naming the field to change, not be killed by the OOM killer after minutes of filling a table.
Host memory is read from /proc/meminfo (MemAvailable: what can be allocated without swapping),
so psutil is not a dependency; GPU memory from torch.cuda.mem_get_info. A VM whose memory grows
as it is used (a Firecracker microVM with hot-plugged memory) reports far less than it can give:
there `ENGRAMSIM_HOST_MEMORY_GIB` states what is available instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from engramsim.errors import InputError

GIB = 1 << 30
MARGIN_FRACTION = 0.10  # of what is available, left free for the OS, the allocator's slack and torch itself
MARGIN_MIN = 1 * GIB


def meminfo(path: Path = Path("/proc/meminfo")) -> dict[str, int]:
    """/proc/meminfo as bytes per field (the file's kB are KiB)."""
    out = {}
    for line in path.read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


def host_memory() -> tuple[int, int]:
    """(total, available) host memory in bytes (/proc/meminfo's MemTotal, and MemAvailable or what
    `ENGRAMSIM_HOST_MEMORY_GIB` states where it is set); InputError where neither can be read or
    the variable is not a number."""
    stated = os.environ.get(HOST_MEMORY_ENV)
    if stated:
        try:
            gib = float(stated)
        except ValueError:
            gib = -1.0
        if not gib > 0:
            raise InputError(f"environment variable {HOST_MEMORY_ENV}", f"expected a positive number of GiB, got {stated!r}")
    try:
        info = meminfo()
    except OSError as exc:
        if stated:
            return int(gib * GIB), int(gib * GIB)
        raise InputError("/proc/meminfo", f"cannot read host memory size ({exc.strerror or exc}); real backends need Linux") from None
    return info["MemTotal"], int(gib * GIB) if stated else info.get("MemAvailable", info.get("MemFree", 0))


TABLE_FIELD = "model.engram.rows_per_head"
HOST_MEMORY_ENV = "ENGRAMSIM_HOST_MEMORY_GIB"


@dataclass
class Footprint:
    """Bytes a run will allocate, by place and item, so a refusal can say what is big, and the
    scenario field that sizes each item, so it can say what to change."""

    host: dict[str, int] = field(default_factory=dict)
    device: dict[str, int] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)

    def field_of(self, items: dict[str, int]) -> str:
        """The field sizing the biggest of `items` (the table size when it has none)."""
        biggest = max(items, key=items.__getitem__, default="")
        return self.fields.get(biggest, TABLE_FIELD)


def margin(available: int) -> int:
    return max(MARGIN_MIN, int(available * MARGIN_FRACTION))


def check_fits(source: str, where: str, items: dict[str, int], available: int,
               field: str = TABLE_FIELD) -> None:
    """Raise one InputError line when `items` plus the safety margin exceed `available` bytes."""
    needed = sum(items.values())
    if needed + margin(available) <= available:
        return
    big = sorted(((name, size) for name, size in items.items() if size >= needed / 100), key=lambda kv: -kv[1])
    parts = ", ".join(f"{name} {size / GIB:.2f}" for name, size in big)  # the items worth changing
    raise InputError(
        source,
        f"the run needs {needed / GIB:.2f} GiB of {where} ({parts} GiB), {available / GIB:.2f} GiB available "
        f"(keeping {margin(available) / GIB:.2f} GiB free)"
        + (f"; where host memory grows as it is used, set {HOST_MEMORY_ENV}" if where == "host memory" else ""),
        field=field,
    )

"""A node: several GPUs sharing one host, each with its own link, serving its own replica.

What the GPUs share is a `fabric.Fabric` of capacities: per socket, its DRAM bandwidth
(`host.dram_gbps`) and its cores (`socket.cores`, drawn by every replica's gather threads); per
PCIe switch, its uplink to the CPU (an x16 link of the profile's generation, `link.h2d_gbps`);
per ordered pair of sockets, the interconnect (`socket.interconnect_gbps`); and the NVMe drives
(one queue for the node) and CXL expanders (`cxl.devices x cxl.gbps`). Each GPU keeps its own
link (one transfer at a time), copy engines and compute stream (simulator/engine.py).

Where a read lands: a gather reads the table (or the host staging an NVMe read filled) and writes
pinned staging in its GPU's socket; a DMA after a gather reads that staging; a DMA or zero-copy
read with no gather before it reads the table (in DRAM, or in the CXL expanders); a drive's direct
read into HBM touches no host memory. A table copy interleaved over every socket (`per-node`) has
1/sockets of its pages in each: a GPU's reads of the others' share cross the interconnect and, for
a gather thread, cost `socket.remote_latency_ratio` times a local row. A copy per socket
(`per-numa`) is read locally.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Literal

import simpy

from engramsim.hardware.profile import HardwareProfile
from engramsim.scenario import Node, socket_of, switch_of
from engramsim.simulator.fabric import Fabric

GB = 1e9
Source = Literal["table", "staging", "cxl", "device"]
"""Where a transfer's bytes are read: `Seat.transfer`."""


def capacities(node: Node, profile: HardwareProfile) -> dict[str, float]:
    """Every shared capacity of the node, by name (bytes/s, or threads for cores)."""
    socket, host, link = profile.socket, profile.host, profile.link
    assert socket is not None, "a node needs the profile's socket section (session.check_node)"
    out: dict[str, float] = {}
    for s in range(node.numa_nodes):
        out[f"dram{s}"] = host.dram_gbps * GB
        out[f"cores{s}"] = float(socket.cores)
        for other in range(node.numa_nodes):
            if other != s:
                out[f"link{other}>{s}"] = socket.interconnect_gbps * GB
    for switch in range(switch_of(node.gpus - 1, node) + 1):
        out[f"switch{switch}"] = link.h2d_gbps * GB
    if profile.cxl is not None:
        out["cxl"] = profile.cxl.devices * profile.cxl.gbps * GB
    return out


@dataclass
class Seat:
    """Where one GPU sits in the node, and how its host-side legs draw on the shared fabric."""

    socket: int
    switch: int
    sockets: int  # of the node
    interleaved: bool  # the tables are one copy over every socket (per-node), not one per socket
    remote_latency_ratio: float
    threads: int  # gather threads of one gather
    fabric: Fabric
    drives: simpy.Resource  # the node's NVMe drives: one batch of page reads at a time

    @property
    def remote_share(self) -> float:
        """Fraction of a table read that lands on another socket's DRAM."""
        return (self.sockets - 1) / self.sockets if self.interleaved else 0.0

    def _reads(self, source: Source, rate: float) -> dict[str, float]:
        """Demands of reading `source` at `rate` bytes/s: the table's pages in each socket's DRAM
        (and, for the other sockets' pages, the interconnect from there), this socket's staging,
        the CXL expanders, or nothing of the host (a device writing into HBM itself)."""
        if source == "cxl":
            return {"cxl": rate}
        if source == "device":
            return {}
        if source == "staging" or not self.interleaved:
            return {f"dram{self.socket}": rate}
        share = rate / self.sockets
        out = {f"dram{s}": share for s in range(self.sockets)}
        out |= {f"link{s}>{self.socket}": share for s in range(self.sockets) if s != self.socket}
        return out

    def gather(self, seconds: float, overhead_s: float, latency_s: float, nbytes: int,
               table_share: float) -> Generator[simpy.Event, Any, None]:
        """A gather of `nbytes` that alone takes `seconds` (`overhead_s` fixed, then the larger of the
        rows' latency, `latency_s`, and their DRAM time), `table_share` of its rows read from the
        table (the rest from host staging an NVMe read filled): the table's remote rows stretch the
        latency part by `socket.remote_latency_ratio`; it holds its threads of this socket's cores,
        reads the table's sockets and the staging, and writes staging in this socket's DRAM."""
        stretch = 1 + table_share * self.remote_share * (self.remote_latency_ratio - 1)
        seconds = max(seconds, overhead_s + latency_s * stretch)
        rate = nbytes / seconds if seconds > 0 else 0.0
        demands = {f"cores{self.socket}": float(self.threads)}
        for reads in (self._reads("table", rate * table_share), self._reads("staging", rate * (1 - table_share)),
                      self._reads("staging", rate)):  # the last: the staging writes
            for name, value in reads.items():
                demands[name] = demands.get(name, 0.0) + value
        yield from self.fabric.run(seconds, demands)

    def gather_cxl(self, seconds: float, nbytes: int) -> Generator[simpy.Event, Any, None]:
        """A gather from the CXL expanders: this socket's cores, the expanders' bandwidth, staging writes."""
        rate = nbytes / seconds if seconds > 0 else 0.0
        yield from self.fabric.run(seconds, {f"cores{self.socket}": float(self.threads), "cxl": rate, f"dram{self.socket}": rate})

    def land_pages(self, seconds: float, nbytes: int) -> Generator[simpy.Event, Any, None]:
        """NVMe pages read into host staging in this socket's DRAM."""
        yield from self.fabric.run(seconds, {f"dram{self.socket}": nbytes / seconds if seconds > 0 else 0.0})

    def transfer(self, wire_s: float, wire_bytes: int, source: Source) -> Generator[simpy.Event, Any, None]:
        """`wire_bytes` crossing this GPU's switch uplink at its link's rate, read from `source`: the
        table in host DRAM (a DMA or zero-copy read of table rows), this socket's staging, the CXL
        expanders, or a device that writes them itself (an NVMe drive's peer-to-peer read)."""
        rate = wire_bytes / wire_s if wire_s > 0 else 0.0
        yield from self.fabric.run(wire_s, {f"switch{self.switch}": rate, **self._reads(source, rate)})


def seats(env: simpy.Environment, node: Node, profile: HardwareProfile) -> list[Seat]:
    """One seat per GPU of the node, sharing one fabric and one NVMe queue."""
    socket = profile.socket
    assert socket is not None, "a node needs the profile's socket section (session.check_node)"
    fabric = Fabric(env, capacities(node, profile))
    drives = simpy.Resource(env, capacity=1)
    return [Seat(socket_of(gpu, node), switch_of(gpu, node), node.numa_nodes, node.table_copies == "per-node",
                 socket.remote_latency_ratio, profile.host.gather_threads, fabric, drives) for gpu in range(node.gpus)]

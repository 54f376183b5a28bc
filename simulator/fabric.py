"""Shared capacities that concurrent transfers divide: a fluid model of a node's host.

A node's GPUs share a socket's DRAM bandwidth and cores, a PCIe switch's uplink and the socket
interconnect. A transfer (a flow) is known by how long it takes alone and by what it draws from
each capacity while it runs at that speed (bytes/s of DRAM, threads of cores). While flows
overlap, each runs at a fraction of its solo speed, set by progressive filling: every flow speeds
up together until a capacity is full; the flows through it stop there, the others go on, up to
their solo speed. That is max-min fairness weighted by each flow's demand, so flows through one
full capacity slow by the same factor, and a flow held back elsewhere leaves its share to the rest.
Speeds change only when a flow starts or ends, so a flow costs a few events, never one per byte.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from typing import Any

import simpy

EPSILON = 1e-12


class Flow:
    """One transfer through the fabric: its solo seconds still to run and its demand per capacity."""

    def __init__(self, seconds: float, demands: Mapping[str, float]) -> None:
        self.left_s = seconds
        self.demands = {name: rate for name, rate in demands.items() if rate > 0}
        self.speed = 1.0


def fill(flows: list[Flow], capacities: Mapping[str, float]) -> None:
    """Set each flow's speed (a fraction of its solo speed, at most 1) by progressive filling."""
    open_flows = list(flows)
    used = dict.fromkeys(capacities, 0.0)  # drawn by flows already fixed
    while open_flows:
        demand = {name: total for name in capacities if (total := sum(flow.demands.get(name, 0.0) for flow in open_flows)) > 0}
        left = {name: max(0.0, capacities[name] - used[name]) for name in demand}
        level = min([1.0, *(left[name] / demand[name] for name in demand)])
        full = {name for name in demand if level * demand[name] >= left[name] * (1 - 1e-9)}
        fixed = [flow for flow in open_flows if level >= 1.0 or full & flow.demands.keys()]
        for flow in fixed:
            flow.speed = max(level, EPSILON)
            for name, rate in flow.demands.items():
                used[name] += rate * flow.speed
        open_flows = [flow for flow in open_flows if flow not in fixed]


class Fabric:
    """Named capacities (units per second) that the flows running at once divide (`fill`)."""

    def __init__(self, env: simpy.Environment, capacities: Mapping[str, float]) -> None:
        self.env = env
        self.capacities = dict(capacities)
        self.flows: list[Flow] = []
        self._changed = env.event()  # succeeds whenever the flows, and so their speeds, change

    def run(self, seconds: float, demands: Mapping[str, float]) -> Generator[simpy.Event, Any, None]:
        """Run a flow that alone takes `seconds` drawing `demands`; return when it is done."""
        unknown = set(demands) - set(self.capacities)
        if unknown:
            raise KeyError(f"no capacity named {sorted(unknown)}")
        flow = Flow(seconds, demands)
        self._change(add=flow)
        while True:
            since, speed, changed = self.env.now, flow.speed, self._changed
            done = self.env.timeout(flow.left_s / speed)
            yield done | changed
            flow.left_s -= (self.env.now - since) * speed
            if done.processed or flow.left_s <= max(seconds, self.env.now) * 1e-12:  # what the clock's float can tell
                break
        self._change(remove=flow)

    def _change(self, add: Flow | None = None, remove: Flow | None = None) -> None:
        """Add or remove a flow, settle every flow's speed, wake the flows to take it up."""
        if add is not None:
            self.flows.append(add)
        if remove is not None:
            self.flows.remove(remove)
        fill(self.flows, self.capacities)
        changed, self._changed = self._changed, self.env.event()
        changed.succeed()

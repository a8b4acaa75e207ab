"""One arm's view of the world: the slots its own traffic fills at each site, and one call.

Every arm places the same requests, so each keeps its own queues: an arm that
sends everything to a site's few slots sees that site's queue grow and its
requests refused (503, queue full) or dropped (the worker drops work whose
caller's deadline passed), and an arm that spreads load does not. Outages and
the drawn network and service times are shared by all arms.

A site is ``concurrency`` FIFO slots: a call arriving at the site (half a
network leg after it starts) takes the slot that frees first, waits until
then, and holds it for its service time (the workload-vector form of a
multi-server FIFO queue, Kiefer and Wolfowitz 1955). The cloud autoscales: no
queue, unless the topology gives it a :class:`~edgeroute.tools.sim.synthetic.CloudScaling`,
when it is such slots on replicas that start after a cold start (:class:`ScalingCloud`).
"""

from __future__ import annotations

import heapq
import math

from edgeroute.tools.sim.synthetic import DOWN, HANG, CloudScaling, Topology
from router.plan import Plan

OK, FAILED, TIMEOUT, CANCELLED = 0, 1, 2, 3


class Call:
    """One upstream call of one request; times are ms from the request's arrival."""

    __slots__ = ("ahead", "busy", "end_ms", "outcome", "permit", "plan", "served", "service_ms",
                 "start_ms", "target", "timeout_ms", "total_ms", "wait_ms")

    def __init__(self, target: int, start_ms: float, end_ms: float, outcome: int,
                 wait_ms: float = 0.0, service_ms: float = 0.0, served: bool = False,
                 busy: bool = False) -> None:
        self.target, self.start_ms, self.end_ms, self.outcome = target, start_ms, end_ms, outcome
        self.wait_ms, self.service_ms, self.served = wait_ms, service_ms, served
        self.busy = busy
        """Refused because the site's queue is full (a 503 with ``Retry-After``)."""
        self.total_ms = end_ms - start_ms
        self.timeout_ms = float("inf")
        """The timeout the call was sent with."""
        self.permit: object | None = None
        """The breaker permit the call holds (router arms only)."""
        self.plan: Plan | None = None
        """The plan the call belongs to: it says when a timeout is the target's failure."""
        self.ahead = 0
        """Calls the launching replica had in flight to the target (router arms only)."""


class ScalingCloud:
    """The slots of an autoscaled cloud, one arm's: replicas start when a call finds no free
    slot and answer only after their cold start; idle ones go back to the minimum."""

    def __init__(self, scaling: CloudScaling) -> None:
        self.scaling = scaling
        self.replicas = scaling.min_replicas
        self.slots: list[float] = [0.0] * (scaling.min_replicas * scaling.slots_per_replica)
        self.pending: list[float] = []
        """Ready times of replicas starting."""
        self.busy_until_ms = 0.0
        self.starts = 0

    def _ready(self, at_ms: float) -> None:
        self.replicas += 1
        for _ in range(self.scaling.slots_per_replica):
            heapq.heappush(self.slots, at_ms)

    def admit(self, at_ms: float, service_ms: float) -> float:
        """The wait (ms) of a call arriving at ``at_ms`` that holds a slot ``service_ms``."""
        sc = self.scaling
        while self.pending and self.pending[0] <= at_ms:
            self._ready(heapq.heappop(self.pending))
        if self.replicas > sc.min_replicas and at_ms - self.busy_until_ms >= sc.idle_ms:
            self.replicas = sc.min_replicas
            self.slots = [self.busy_until_ms] * (sc.min_replicas * sc.slots_per_replica)
        free = self.slots[0] if self.slots else math.inf
        if free > at_ms and self.replicas + len(self.pending) < sc.max_replicas:
            delay = sc.upscale_delay_ms if self.replicas else 0.0
            heapq.heappush(self.pending, at_ms + delay + sc.cold_start_ms)
            self.starts += 1
        if self.pending and self.pending[0] < free:
            self._ready(heapq.heappop(self.pending))
        start = max(self.slots[0], at_ms)
        heapq.heapreplace(self.slots, start + service_ms)
        self.busy_until_ms = max(self.busy_until_ms, start + service_ms)
        return start - at_ms


class World:
    """The queues of one arm; outages come from the shared :class:`Topology`."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.concurrency = topo.concurrency.tolist()
        self.max_wait_ms = topo.max_wait_ms.tolist()
        self.slots: list[list[float]] = [[] for _ in range(topo.sites + 1)]
        self.refused = 0
        self.dropped = 0
        self.cloud = None if topo.cloud_scaling is None else ScalingCloud(topo.cloud_scaling)

    def call(self, target: int, arrival_ms: float, start_ms: float, timeout_ms: float,
             network_ms: float, service_ms: float, deadline_ms: float) -> Call:
        """The call to ``target`` started ``start_ms`` after a request arrived at
        ``arrival_ms`` (absolute), given up after ``timeout_ms``."""
        status = self.topo.status(target, (arrival_ms + start_ms) / 1000.0)
        if status == HANG:
            return Call(target, start_ms, start_ms + timeout_ms, TIMEOUT)
        if status == DOWN:
            if network_ms > timeout_ms:
                return Call(target, start_ms, start_ms + timeout_ms, TIMEOUT)
            return Call(target, start_ms, start_ms + network_ms, FAILED)
        wait = self._admit(target, arrival_ms + start_ms + network_ms / 2, service_ms,
                           arrival_ms + deadline_ms)
        if wait is None:
            if network_ms > timeout_ms:
                return Call(target, start_ms, start_ms + timeout_ms, TIMEOUT)
            return Call(target, start_ms, start_ms + network_ms, FAILED, busy=True)
        total = network_ms + wait + service_ms
        if wait < 0.0:
            return Call(target, start_ms, start_ms + timeout_ms, TIMEOUT)
        if total > timeout_ms:
            return Call(target, start_ms, start_ms + timeout_ms, TIMEOUT, wait, service_ms, True)
        return Call(target, start_ms, start_ms + total, OK, wait, service_ms, True)

    def _admit(self, target: int, at_ms: float, service_ms: float,
               deadline_at_ms: float) -> float | None:
        """The wait at the site (ms); ``None``: refused, queue full; negative: dropped, the
        caller's deadline passed before a slot freed."""
        if target == self.topo.cloud:
            return 0.0 if self.cloud is None else self.cloud.admit(at_ms, service_ms)
        slots = self.slots[target]
        if len(slots) < self.concurrency[target]:
            heapq.heappush(slots, at_ms + service_ms)
            return 0.0
        wait = max(slots[0] - at_ms, 0.0)
        if wait > self.max_wait_ms[target]:
            self.refused += 1
            return None
        if at_ms + wait > deadline_at_ms:
            self.dropped += 1
            return -1.0
        heapq.heapreplace(slots, at_ms + wait + service_ms)
        return wait

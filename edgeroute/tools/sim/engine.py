"""The discrete-event loop: requests, call endings and probe rounds in virtual time.

One heap of events orders everything the routers hear (a call ending, a
probe answering, the next probe round) between request arrivals; before a
request is decided, every event due by its arrival has been delivered, with
the virtual clock set to the event's time. Each arm is a router deployment
running one named policy (``default`` is edgeroute's risk-optimal engine, the
baselines are the same engine under ``always-edge``, ``always-cloud`` ...)
with its own replicas, its own world (queues) and its own learning. For each
request, each arm:

1. picks the replica whose turn it is (round-robin); the replica rebuilds the
   candidates' due tables (off the timed path) and the real
   :func:`router.decision.decide` chooses a plan over the views its estimators
   give of the request's candidates (timed, wall clock);
2. runs the plan in its world (:mod:`edgeroute.tools.sim.execute`); each call is fed
   back to that replica when it ends.

The oracle places each request once: of the candidates up at arrival (only
the cloud for ``quality=high``), the cheapest whose drawn network + service
time meets the deadline, queues ignored. It knows every draw in advance and
meets no queue, so no arm attains a request it misses, nor pays less for one
both attain: an upper bound, not a policy a router could run.
"""

from __future__ import annotations

import heapq
import itertools
import math
import resource
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeroute.config import RouterSettings
from edgeroute.tools.sim.execute import Limits, Outcome, Request, run_plan
from edgeroute.tools.sim.replica import RouterReplica, VirtualClock
from edgeroute.tools.sim.synthetic import Scenario, Topology, build_topology
from edgeroute.tools.sim.tally import Tally, percentiles_us
from edgeroute.tools.sim.trace import Chunk, chunks
from edgeroute.tools.sim.world import World
from router.cost import marginal_cost_usd
from router.decision import RequestQuality, decide
from router.plan import Decision
from router.policy import PolicyDocument
from router.probing import PROBE_LOOP_S

FEEDBACK, PROBE_ROUND, PROBE_END = 0, 1, 2
ORACLE = "oracle"


@dataclass(frozen=True)
class ArmSpec:
    """A router deployment to simulate: a name, the named policy it runs, its replicas."""

    name: str
    policy: str = "default"
    replicas: int = 1


DEFAULT_ARMS = (ArmSpec("router"), ArmSpec("always-edge", "always-edge"),
                ArmSpec("always-cloud", "always-cloud"))


class _Arm:
    def __init__(self, spec: ArmSpec, sim: Simulation) -> None:
        s = sim.s
        self.name, self.policy = spec.name, sim.doc.policies[spec.policy]
        self.policy_name = spec.policy
        self.replicas = [RouterReplica(i, s, sim.topo, sim.doc, sim.clock)
                         for i in range(spec.replicas)]
        self.world = World(sim.topo)
        self.tally = Tally(spec.name, s.requests, s.deadlines_ms)
        self.views_us = np.zeros(s.requests, dtype=np.float32)
        self.decide_us = np.zeros(s.requests, dtype=np.float32)


Record = Callable[[str, int, Decision, "Outcome | None", float], None]
"""``(arm, request index, decision, what running its plan did or None, marginal $)``."""


class Simulation:
    """One run of a scenario: every arm over the same requests and draws, and the oracle.

    ``topology`` and ``trace`` replace the synthetic world and requests drawn from ``s``
    (the benchmark's scenarios bring their own, :mod:`edgeroute.tools.bench.simulated`);
    ``record`` hears of every request each arm settled."""

    def __init__(self, s: Scenario, *, arms: Sequence[ArmSpec] = DEFAULT_ARMS,
                 doc: PolicyDocument | None = None, topology: Topology | None = None,
                 trace: Iterable[Chunk] | None = None, record: Record | None = None) -> None:
        self.s = s
        self.doc = doc = doc or PolicyDocument()
        self.topo = topo = topology or build_topology(s)
        self._trace = trace
        self._record = record
        self.clock = VirtualClock()
        self.arms = [_Arm(spec, self) for spec in arms]
        self.oracle = Tally(ORACLE, s.requests, s.deadlines_ms)
        names = topo.names()
        self.ids = {n: i for i, n in enumerate(names)}
        self.small = [i != topo.cloud for i in range(len(names))]
        self.prices = [doc.prices.for_target(n, "edge" if self.small[i] else "cloud")
                       for i, n in enumerate(names)]
        self.limits = Limits(max_attempts=doc.retry.max_attempts,
                             min_attempt_ms=RouterSettings().min_attempt_ms)
        self._heap: list[tuple[Any, ...]] = []
        self._seq = itertools.count()
        self._probing = True

    def run(self, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Simulate every request; ``progress(done)`` hears of each chunk."""
        started, cpu = time.perf_counter(), time.process_time()
        for arm in self.arms:
            for replica in arm.replicas:
                self._push(0.0, PROBE_ROUND, replica)
        done = 0
        for chunk in self._trace if self._trace is not None else chunks(self.s, self.topo):
            for k in range(len(chunk)):
                self._until(chunk.arrival_s[k])
                self._request(chunk, k)
            done += len(chunk)
            if progress is not None:
                progress(done)
        self._probing = False
        self._until(math.inf)
        return self.summary(time.perf_counter() - started, time.process_time() - cpu)

    def _push(self, at_s: float, kind: int, replica: RouterReplica, *rest: Any) -> None:
        heapq.heappush(self._heap, (at_s, next(self._seq), kind, replica, *rest))

    def _until(self, t_s: float) -> None:
        heap, clock = self._heap, self.clock
        while heap and heap[0][0] <= t_s:
            at, _, kind, replica, *rest = heapq.heappop(heap)
            clock.now = at
            if kind == FEEDBACK:
                replica.feedback(rest[0], rest[1])
            elif kind == PROBE_END:
                replica.probe_result(*rest)
            elif self._probing:
                found = replica.probe_round()
                for took_s, target, status, rtt_ms in found:
                    self._push(at + took_s, PROBE_END, replica, target, status, rtt_ms)
                longest = max((f[0] for f in found), default=0.0)
                self._push(at + longest + min(self.s.probe_interval_s / 4, PROBE_LOOP_S),
                           PROBE_ROUND, replica)
        if t_s != math.inf:
            clock.now = t_s

    def _request(self, chunk: Chunk, k: int) -> None:
        i = chunk.first + k
        cands = chunk.candidates[k]
        high = chunk.high[k]
        quality: RequestQuality = "high" if high else "any"
        req = Request(cands, chunk.network_ms[k], chunk.service_ms[k], chunk.arrival_s[k] * 1000,
                      chunk.deadline_ms[k], chunk.confidence[k])
        oracle = self._oracle(i, req, high)
        clock = time.perf_counter
        for arm in self.arms:
            replica = arm.replicas[i % len(arm.replicas)]
            replica.maintain(cands)
            t0 = clock()
            views = replica.views(cands)
            t1 = clock()
            decision = decide(views, deadline_ms=req.deadline_ms, quality=quality, rows=1,
                              policy=arm.policy, policy_name=arm.policy_name, rng=replica.rng,
                              state=replica.baselines)
            t2 = clock()
            arm.views_us[i] = (t1 - t0) * 1e6
            arm.decide_us[i] = (t2 - t1) * 1e6
            self._settle(i, decision, req, high, oracle, arm, replica)

    def _settle(self, i: int, decision: Decision, req: Request, high: bool,
                oracle: tuple[bool, float], arm: _Arm, replica: RouterReplica) -> None:
        plan, tally = decision.plan, arm.tally
        if plan is None:
            tally.add(i, req.deadline_ms, None, False, 0.0, False, oracle)
            if self._record is not None:
                self._record(arm.name, i, decision, None, 0.0)
            return
        out = run_plan(plan, req, arm.world, replica, self.limits, self.ids, self.small)
        prices, cost = self.prices, 0.0
        replica.launched(out.calls)
        arrival_s = req.arrival_ms / 1000
        for call in out.calls:
            if call.served:
                cost += marginal_cost_usd(prices[call.target], 1, call.service_ms, 1)
            self._push(arrival_s + call.end_ms / 1000, FEEDBACK, replica, call, req.confidence)
        answer = out.answer
        tally.calls += len(out.calls)
        tally.hedged += out.hedged
        tally.escalated += out.escalated
        cloud = answer is not None and answer.target == self.topo.cloud
        if answer is not None and answer.target not in (self.ids[plan.primary], *(
                self.ids[n] for n in (plan.hedge, plan.escalate_to) if n)):
            tally.fallbacks += 1
        attained = (out.answered_ms is not None and out.answered_ms <= req.deadline_ms
                    and (cloud or not high))
        tally.add(i, req.deadline_ms, out.answered_ms, attained, cost, cloud, oracle)
        if self._record is not None:
            self._record(arm.name, i, decision, out, cost)

    def _oracle(self, i: int, req: Request, high: bool) -> tuple[bool, float]:
        topo, at_s = self.topo, req.arrival_ms / 1000
        best: tuple[float, float, int] | None = None
        fastest: tuple[float, float, int] | None = None
        for j, target in enumerate(req.candidates):
            if (high and target != topo.cloud) or topo.status(target, at_s):
                continue
            latency = req.network_ms[j] + req.service_ms[j]
            cost = marginal_cost_usd(self.prices[target], 1, req.service_ms[j], 1)
            if latency <= req.deadline_ms and (best is None or (cost, latency) < best[:2]):
                best = (cost, latency, target)
            if fastest is None or latency < fastest[1]:
                fastest = (cost, latency, target)
        chosen = best or fastest
        met = (best is not None, best[0] if best else 0.0)
        if chosen is None:
            self.oracle.add(i, req.deadline_ms, None, False, 0.0, False, met)
        else:
            self.oracle.add(i, req.deadline_ms, chosen[1], met[0], chosen[0],
                            chosen[2] == topo.cloud, met)
        self.oracle.calls += chosen is not None
        return met

    def summary(self, wall_s: float, cpu_s: float) -> dict[str, Any]:
        """Figures of the run, JSON-ready (``arms`` and ``oracle`` by name)."""
        duration = max(self.clock.now, 1e-9)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {
            "scenario": self.s.model_dump(),
            "virtual_s": duration,
            "sites_down_share": self.topo.down_share(),
            "wall_s": wall_s,
            "cpu_s": cpu_s,
            "peak_rss_mib": peak / (1024 * 1024 if sys.platform == "darwin" else 1024),
            "arms": {arm.name: self._arm_summary(arm, duration) for arm in self.arms},
            ORACLE: self.oracle.summary(),
        }

    def _arm_summary(self, arm: _Arm, duration_s: float) -> dict[str, Any]:
        replicas = arm.replicas
        probes = sum(r.probes for r in replicas)
        found = arm.tally.summary(self.oracle)
        found.update({
            "policy": arm.policy_name,
            "replicas": len(replicas),
            "decide": percentiles_us(arm.decide_us),
            "views": percentiles_us(arm.views_us),
            "probes_per_s": probes / duration_s,
            "probes_per_target_per_s": probes / duration_s / len(self.ids),
            "probe_failures": sum(r.probe_failures for r in replicas),
            "ejections": sum(r.ejections for r in replicas),
            "table_rebuilds": sum(r.refreshes() for r in replicas),
            "hedges_denied": sum(r.budget.denied for r in replicas),
            "queue_refused": arm.world.refused,
            "queue_dropped": arm.world.dropped,
        })
        return found

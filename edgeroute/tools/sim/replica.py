"""One router replica's state, fed in virtual time exactly as the routing service feeds it.

A :class:`RouterReplica` holds what one replica of the real router holds: a
:class:`~router.estimator.TargetEstimator` per target (1,000 sites and the
cloud), the :class:`~router.breaker.Breakers`, the
:class:`~router.budget.RetryBudget` and the baseline state. The objects are
the router's own; only their clock is virtual. What each call teaches them
follows ``router.calls.Caller``: an answer is a success for the breaker and an
observation of network, queue and service time for the estimator (and of the
small model's confidence); a refusal is a failure; a timeout counts as one
only when overdue by its plan's times (:meth:`router.plan.Plan.overdue`); a
cancelled hedge loser is a slow call only when overdue. Probes follow
``router.targets.TargetSet``: every idle target once per probe interval, the
whole round awaited before the next, a half-open breaker's trial call made by
the prober.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from edgeroute.config import CloudDeployment, RouterSettings
from edgeroute.tools.sim.synthetic import DOWN, HANG, Scenario, Topology
from edgeroute.tools.sim.world import CANCELLED, FAILED, OK, TIMEOUT, Call
from router.breaker import Breakers, Permit, Transition
from router.budget import RetryBudget
from router.decision import BaselineState
from router.estimator import TargetEstimator
from router.latency import EstimatorSettings
from router.policy import PolicyDocument
from router.view import TargetView

PROBE_TIMEOUT_MS = 1000.0
PROBE_LOOP_S = 0.1
"""``router.targets.MAINTAIN_S``: the probe loop's pause between rounds."""


class VirtualClock:
    """The simulation's clock, handed to every estimator, breaker and budget."""

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class RouterReplica:
    """One replica: estimators, breakers and retry budget of every target; the run's hooks."""

    def __init__(self, index: int, s: Scenario, topo: Topology, doc: PolicyDocument,
                 clock: VirtualClock) -> None:
        self.topo, self.clock, self.index = topo, clock, index
        router, cloud = RouterSettings(), CloudDeployment()
        self.names = topo.names()
        concurrency = [int(c) for c in topo.concurrency[:-1].tolist()] + [cloud.max_batch_size]
        settings: dict[int, EstimatorSettings] = {}
        self.estimators = []
        for i, name in enumerate(self.names):
            c = concurrency[i]
            if c not in settings:
                settings[c] = EstimatorSettings(refresh_interval_s=s.refresh_interval_s,
                                                probe_interval_s=s.probe_interval_s,
                                                concurrency=c)
            is_cloud = i == topo.cloud
            self.estimators.append(TargetEstimator(
                name=name, tier="cloud" if is_cloud else "edge",
                quality="large" if is_cloud else "small",
                prior_latency_ms=router.prior_latency_ms, settings=settings[c], clock=clock))
        self.ejections = 0
        self.breakers = Breakers(doc.breaker, clock=clock, on_transition=self._transition)
        self.breaker_of = [self.breakers[n] for n in self.names]
        self.budget = RetryBudget(doc.retry, clock=clock)
        self.prices = [doc.prices.for_target(n, e.tier)
                       for n, e in zip(self.names, self.estimators, strict=True)]
        self.baselines = BaselineState()
        self.rng = random.Random(s.seed * 1009 + index)
        self._probe_rng = np.random.default_rng([s.seed, 3, index])
        self.probes = 0
        self.probe_failures = 0

    def _transition(self, event: Transition) -> None:
        if event.to_state == "open":
            self.ejections += 1

    def maintain(self, targets: Sequence[int]) -> None:
        """Rebuild what is due, off the decision path (the app's background task)."""
        est = self.estimators
        for t in targets:
            est[t].latency.refresh_if_due()
            est[t].escalation_table()

    def views(self, targets: Sequence[int]) -> list[TargetView]:
        """The views :meth:`router.service.RoutingService.decide` builds, for the candidates."""
        est, breaker, prices = self.estimators, self.breaker_of, self.prices
        return [est[t].view(1, breaker[t].allows(), prices[t]) for t in targets]

    def refreshes(self) -> int:
        return sum(e.latency.version for e in self.estimators)

    def claim(self, target: int) -> Permit | None:
        return self.breaker_of[target].acquire()

    def allows(self, target: int) -> bool:
        return self.breaker_of[target].allows()

    def try_hedge(self) -> bool:
        return self.budget.try_spend()

    def record_retry(self) -> None:
        self.budget.record_retry()

    def launched(self, calls: Sequence[Call]) -> None:
        self.budget.record_request()
        for call in calls:
            est = self.estimators[call.target]
            call.ahead = est.in_flight
            est.in_flight += 1

    def feedback(self, call: Call, confidence: float) -> None:
        """What the call taught, delivered when it ended (the clock reads its end)."""
        est = self.estimators[call.target]
        est.in_flight -= 1
        permit = call.permit
        assert isinstance(permit, Permit)
        outcome, total = call.outcome, call.total_ms
        if outcome == OK:
            permit.success(total)
            est.observe_success(total, call.service_ms, call.wait_ms, 1, call.ahead)
            if est.quality == "small":
                est.observe_confidence(confidence)
        elif outcome == FAILED:
            est.observe_failure("refused", total)
            permit.failure("refused")
        elif call.plan is None or call.plan.overdue(self.names[call.target], total):
            if outcome == TIMEOUT:
                permit.failure("timeout")
                est.observe_failure("timeout", total)
            else:
                permit.slow("abandoned")
        else:
            assert outcome in (TIMEOUT, CANCELLED)
            permit.release()

    def probe_round(self) -> list[tuple[float, int, int, float]]:
        """Probe every idle target: ``(duration_s, target, status, rtt_ms)`` for each."""
        now = self.clock.now
        due = [i for i, e in enumerate(self.estimators) if e.needs_probe(now)]
        if not due:
            return []
        topo = self.topo
        rtt = self._probe_rng.lognormal(np.log(topo.rtt_median_ms[due]), topo.rtt_sigma[due])
        found = []
        for target, ms in zip(due, rtt.tolist(), strict=True):
            status = topo.status(target, now)
            took = PROBE_TIMEOUT_MS if status == HANG else ms
            found.append((took / 1000.0, target, status, ms))
        self.probes += len(found)
        return found

    def probe_result(self, target: int, status: int, rtt_ms: float) -> None:
        est, breaker = self.estimators[target], self.breaker_of[target]
        if status in (DOWN, HANG):
            self.probe_failures += 1
            took = PROBE_TIMEOUT_MS if status == HANG else rtt_ms
            est.observe_failure("probe failed", took)
            breaker.probe_failed()
            return
        est.observe_probe(rtt_ms)
        breaker.probe_succeeded()
        if breaker.state == "half_open" and not est.in_flight:
            permit = breaker.acquire()
            if permit is not None:
                permit.success(rtt_ms)

"""One router replica's state, fed in virtual time exactly as the routing service feeds it.

A :class:`RouterReplica` holds what one replica of the real router holds: a
:class:`~router.estimator.TargetEstimator` per target (1,000 sites and the
cloud), the :class:`~router.breaker.Breakers`, the
:class:`~router.budget.RetryBudget` and the baseline state. The objects are
the router's own; only their clock is virtual. What each call teaches them is
decided by the router's own outcome classifier (:func:`router.lessons.learn`,
as :class:`router.calls.Caller` uses it), and probes follow the router's own
prober rules (:mod:`router.probing`): every due target once per round, the
whole round awaited before the next, a trial call by the prober when its
rules ask for one (it answers when the probe did, in the probe's time).
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
from router.lessons import Ended, Lesson, Outcome, learn
from router.policy import PolicyDocument
from router.probing import PROBE_TIMEOUT_S, due, learn_probe, learn_trial, wants_trial
from router.view import TargetView

PROBE_TIMEOUT_MS = PROBE_TIMEOUT_S * 1000
OUTCOMES: dict[int, Outcome] = {OK: "success", FAILED: "failure", TIMEOUT: "timeout",
                                CANCELLED: "cancelled"}


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

    def feedback(self, call: Call, confidence: float) -> Lesson:
        """What the call taught, delivered when it ended (the clock reads its end)."""
        est = self.estimators[call.target]
        est.in_flight -= 1
        permit = call.permit
        assert isinstance(permit, Permit)
        ended = Ended(self.names[call.target], OUTCOMES[call.outcome], call.total_ms,
                      call.timeout_ms, behind_own=call.ahead >= est.settings.concurrency,
                      busy=call.busy, server_ms=call.service_ms, queue_ms=call.wait_ms)
        lesson = learn(ended, call.plan, permit, est, ahead=call.ahead)
        if call.outcome == OK and est.quality == "small":
            est.observe_confidence(confidence)
        return lesson

    def probe_round(self) -> list[tuple[float, int, int, float]]:
        """Probe every due target: ``(duration_s, target, status, rtt_ms)`` for each."""
        now = self.clock.now
        due_now = [i for i, e in enumerate(self.estimators) if due(e, now)]
        if not due_now:
            return []
        topo = self.topo
        rtt = self._probe_rng.lognormal(np.log(topo.rtt_median_ms[due_now]),
                                        topo.rtt_sigma[due_now])
        found = []
        for target, ms in zip(due_now, rtt.tolist(), strict=True):
            status = topo.status(target, now)
            took = PROBE_TIMEOUT_MS if status == HANG else ms
            found.append((took / 1000.0, target, status, ms))
        self.probes += len(found)
        return found

    def probe_result(self, target: int, status: int, rtt_ms: float) -> None:
        est, breaker = self.estimators[target], self.breaker_of[target]
        if status in (DOWN, HANG):
            self.probe_failures += 1
            hung = status == HANG
            learn_probe(est, breaker, answered=False,
                        elapsed_ms=PROBE_TIMEOUT_MS if hung else rtt_ms, timed_out=hung,
                        reason="no answer" if hung else "connection refused")
            return
        learn_probe(est, breaker, answered=True, elapsed_ms=rtt_ms)
        if wants_trial(est, breaker):
            permit = breaker.acquire()
            if permit is not None:
                learn_trial(permit, est, answered=True, elapsed_ms=rtt_ms)

"""The routing service: decide, execute, account — everything a request needs but HTTP and Ray.

:class:`RoutingService` holds one router replica's state (targets and their
estimators, breakers, retry budget, admission bounds, the policy in force,
the cost ledger) and routes one parsed request at a time. The Serve ingress
(:mod:`router.app`) is a thin HTTP shell around it; tests drive it with
in-memory transports.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeroute.oip import OIPError
from router.activity import Activity
from router.breaker import Breakers, Transition
from router.calls import Attempt
from router.cost import Ledger, marginal_cost_usd
from router.decision import BaselineState, RequestQuality, decide
from router.executor import Executor
from router.metrics import RouterMetrics
from router.plan import Decision
from router.policy import PolicyDocument
from router.served import NotServed, Served, Shed
from router.targets import Target, TargetSet
from router.tenancy import Caller


@dataclass(frozen=True)
class Routed:
    served: Served
    decision: Decision
    decision_us: float
    cost_usd: float

    def parameters(self, caller: Caller, deadline_ms: float, explain: bool) -> dict[str, Any]:
        """The response ``parameters``: where it ran, how, for how much, and why."""
        plan, served = self.decision.plan, self.served
        assert plan is not None
        params: dict[str, Any] = {
            "target": served.target.name,
            "tier": served.target.tier,
            "model_version": served.reply.model_version,
            "attempts": served.attempts,
            "fallback": served.fallback,
            "hedged": served.hedged,
            "escalated": served.escalated,
            "predicted_latency_ms": round(plan.predicted_p50_ms, 3),
            "predicted_p_miss": round(plan.p_miss, 5),
            "within_risk_budget": plan.within_budget,
            "plan": plan.describe(),
            "cost_usd": self.cost_usd,
            "decision_us": round(self.decision_us, 1),
            "upstream_ms": round(served.upstream_ms, 3),
            "deadline_ms": deadline_ms,
            "policy": caller.policy_name,
            "tenant": caller.tenant,
        }
        if explain:
            params["explanation"] = self.decision.explain()
        return params


class Rejected(OIPError):
    """The decision found no plan it may run (503 with Retry-After)."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(f"no plan: {decision.reason}", status=503)
        self.decision = decision


class RoutingService:
    def __init__(
        self,
        targets: TargetSet,
        *,
        metrics: RouterMetrics,
        min_attempt_ms: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.targets = targets
        self.metrics = metrics
        self.policy = PolicyDocument()
        self.breakers = Breakers(self.policy.breaker, on_transition=self._transition, clock=clock)
        targets.breakers = self.breakers
        self.executor = Executor(
            targets, retry=self.policy.retry, admission=self.policy.admission,
            breakers=self.breakers, clock=clock, on_attempt=self._attempt,
            min_attempt_ms=min_attempt_ms,
        )
        self.ledger = Ledger({t.name: self.policy.prices.for_target(t.name, t.tier)
                              for t in targets})
        self.baselines = BaselineState()
        self.rng = rng or random.Random()
        self.clock = clock
        self.activity = Activity(clock=clock)
        """The last minutes of outcomes, for the status page (``GET /v1/metrics/summary``)."""
        for target in targets:
            self._breaker_closed(target.name)

    def _breaker_closed(self, name: str) -> None:
        """A target's breaker starts closed: say so, so that the gauge exists before the
        first transition (a dashboard panel or alert over it would have no data)."""
        self.metrics.breaker_open.record(0.0, {"target": name})

    def apply_policy(self, policy: PolicyDocument) -> None:
        """Swap the policy; learned state (estimates, breakers, budgets) carries over."""
        self.policy = policy
        self._price_ledger()
        self.breakers.configure(policy.breaker)
        self.executor.configure(retry=policy.retry, breaker=policy.breaker,
                                admission=policy.admission)

    def add_target(self, target: Target) -> None:
        """A target that joined while the router runs (the edge fleet); used from the next
        decision on, starting from its estimator's prior until probes and answers come in."""
        self.targets.add(target)
        self._price_ledger()
        self._breaker_closed(target.name)

    def _price_ledger(self) -> None:
        self.ledger.set_prices({t.name: self.policy.prices.for_target(t.name, t.tier)
                                for t in self.targets})

    def remove_target(self, name: str) -> Target | None:
        """No new decision uses ``name``; requests already sent there finish or fail over.
        Its breaker is forgotten with it: a worker that joins again under the same name is a
        new worker (fresh estimates, a closed breaker)."""
        self.breakers.forget(name)
        return self.targets.remove(name)

    def decide(self, rows: int, deadline_ms: float, quality: RequestQuality,
               caller: Caller) -> tuple[Decision, float]:
        started = time.perf_counter()
        views = [t.view(rows, self.executor.allows(t.name),
                        self.policy.prices.for_target(t.name, t.tier)) for t in self.targets]
        decision = decide(views, deadline_ms=deadline_ms, quality=quality, rows=rows,
                          policy=caller.policy, policy_name=caller.policy_name, rng=self.rng,
                          state=self.baselines)
        decision_us = (time.perf_counter() - started) * 1e6
        self.metrics.decision.record(decision_us, {})
        return decision, decision_us

    async def route(self, x: np.ndarray, *, deadline_ms: float, received: float,
                    quality: RequestQuality, caller: Caller) -> Routed:
        """Serve one request; raises :class:`Rejected` or ``NotServed``/``Shed``. The
        outcome, either way, goes to :attr:`activity`."""
        try:
            routed = await self._route(x, deadline_ms=deadline_ms, received=received,
                                       quality=quality, caller=caller)
        except (Rejected, NotServed) as failure:
            status = 504 if isinstance(failure, NotServed) and failure.deadline_passed else 503
            self.activity.failed(
                status=status, latency_ms=(self.clock() - received) * 1000,
                deadline_ms=deadline_ms, error=str(failure),
                decision=failure.decision if isinstance(failure, Rejected) else None,
                shed=isinstance(failure, Shed))
            raise
        target = routed.served.target
        self.activity.served(latency_ms=(self.clock() - received) * 1000,
                             deadline_ms=deadline_ms, target=target.name, tier=target.tier,
                             decision=routed.decision, cost_usd=routed.cost_usd,
                             upstream_ms=routed.served.upstream_ms)
        return routed

    async def _route(self, x: np.ndarray, *, deadline_ms: float, received: float,
                     quality: RequestQuality, caller: Caller) -> Routed:
        remaining_ms = deadline_ms - (self.clock() - received) * 1000
        decision, decision_us = self.decide(len(x), remaining_ms, quality, caller)
        if decision.plan is None:
            raise Rejected(decision)
        served = await self.executor.run(decision.plan, x, received + deadline_ms / 1000)
        target = served.target
        prices = self.policy.prices.for_target(target.name, target.tier)
        cost = marginal_cost_usd(prices, len(x), served.reply.server_ms, served.reply.batch_rows)
        self.ledger.add(target.name, cost)
        self.metrics.served(target.name, target.tier, cost)
        self.metrics.upstream.record(served.upstream_ms, {"target": target.name,
                                                          "tier": target.tier})
        if served.fallback:
            self.metrics.fallbacks.record(1, {})
        if served.hedged:
            self.metrics.hedges.record(1, {"outcome": "won" if served.hedge_won else "lost"})
        if served.retries:
            self.metrics.retries.record(served.retries, {"target": target.name})
        return Routed(served, decision, decision_us, cost)

    def _transition(self, event: Transition) -> None:
        self.metrics.breaker.record(1, {"target": event.target, "to_state": event.to_state})
        self.metrics.breaker_open.record(float(event.to_state == "open"),
                                         {"target": event.target})

    def _attempt(self, attempt: Attempt) -> None:
        self.metrics.attempts.record(1, {"target": attempt.target, "outcome": attempt.outcome})

    def observe_replicas(self, name: str, replicas: int, elapsed_s: float) -> None:
        """Feed the cloud's running replica count (read from Serve at a bounded rate) to its
        estimator (cold starts) and the ledger (provisioned replica-seconds)."""
        target = self.targets.get(name)
        if target is None:
            return
        target.estimator.set_replicas(replicas)
        self.ledger.add_provisioned(name, replicas * elapsed_s)
        self.metrics.cloud_replicas.record(replicas, {})

    def snapshot(self) -> dict[str, Any]:
        targets = []
        for t in self.targets:
            view = t.snapshot(self.policy.prices.for_target(t.name, t.tier))
            view["breaker"] = self.breakers[t.name].snapshot()
            targets.append(view)
        return {"targets": targets, "executor": self.executor.snapshot(),
                "ledger": self.ledger.snapshot()}

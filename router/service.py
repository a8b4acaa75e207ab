"""The routing service: decide, execute, account — everything a request needs but HTTP and Ray.

:class:`RoutingService` holds one router replica's state (targets and their
estimators, breakers, retry budget, admission bounds, the policy in force,
the cost ledger) and routes one parsed request at a time. The Serve ingress
(:mod:`router.app`) is a thin HTTP shell around it; tests drive it with
in-memory transports.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgeroute.contract import MODEL_NAME
from edgeroute.signature import Batch
from router.activity import Activity, Outcome
from router.admission import DeadlineAdmission
from router.breaker import Breakers, Transition
from router.cache import CACHE_TIER, USE_CACHE, Directives, Entry, ResponseCache, Reused
from router.calls import Attempt
from router.cost import Ledger, marginal_cost_usd
from router.decision import BaselineState, RequestQuality, decide
from router.estimator import TargetEstimator
from router.executor import Executor
from router.explore import Explorer
from router.lag import LoopLag
from router.metrics import RouterMetrics
from router.plan import Decision
from router.policy import PolicyDocument
from router.served import NotServed, Served, Shed
from router.targets import Target, TargetSet
from router.tenancy import Caller
from router.transport import Reply
from router.view import TargetView
from router.window import RollingTally

SHARE_WINDOW_S = 10.0
"""``traffic_share`` in ``/v1/targets``: each target's share of the upstream calls this replica
made over this many recent seconds (hedges, escalations and fallbacks included)."""


@dataclass(frozen=True)
class Routed:
    served: Served
    decision: Decision
    decision_us: float
    cost_usd: float

    @property
    def reply(self) -> Reply:
        return self.served.reply

    @property
    def target_name(self) -> str | None:
        """The target that answered this request."""
        return self.served.target.name

    @property
    def metric_tier(self) -> str:
        return self.served.target.tier

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


class Rejected(Exception):
    """The decision found no plan it may run (the ingress answers it: :mod:`router.errors`)."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(f"no plan: {decision.reason}")
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
        lag: LoopLag | None = None,
        finish_ms: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.targets = targets
        self.finish_ms = finish_ms
        """The replica's own time from an answer in hand to its last byte sent (learned by
        :mod:`router.frontdoor`): reserved out of every deadline."""
        self.metrics = metrics
        self.policy = PolicyDocument()
        self.breakers = Breakers(self.policy.breaker, on_transition=self._transition, clock=clock)
        targets.breakers = self.breakers
        self.lag = lag or LoopLag(clock=clock)
        """The replica's own lateness: run :meth:`LoopLag.run` on its event loop (one per
        replica, shared by the service of each model)."""
        targets.lag = self.lag
        self.executor = Executor(
            targets, retry=self.policy.retry, admission=self.policy.admission,
            breakers=self.breakers, clock=clock, on_attempt=self._attempt,
            min_attempt_ms=min_attempt_ms, lag=self.lag,
        )
        self.admission = DeadlineAdmission(self.executor.limits, lag=self.lag, clock=clock)
        self.ledger = Ledger({t.name: self.policy.prices.for_target(t.name, t.tier)
                              for t in targets})
        self.baselines = BaselineState()
        self.rng = rng or random.Random()
        self.clock = clock
        self.calls_to = RollingTally(SHARE_WINDOW_S, clock=clock)
        self.explorer = Explorer(clock=clock)
        self.drained: set[str] = set()
        """Targets no new decision may use (an operator's drain); probes keep them measured
        and calls already made there finish."""
        targets.on_tick = self.publish_gauges
        self.activity = Activity(clock=clock)
        """The last minutes of outcomes, for the status page (``GET /v1/metrics/summary``)."""
        self.cache = ResponseCache(
            self.policy.cache, clock=clock,
            on_outcome=lambda outcome: metrics.cache_lookups.record(1, {"outcome": outcome}))
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
        self.cache.configure(policy.cache)
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
        self.drained.discard(name)
        return self.targets.remove(name)

    def _known(self, name: str) -> Target:
        target = self.targets.get(name)
        if target is None:
            raise KeyError(name)
        return target

    def drain(self, name: str, drained: bool = True) -> Target:
        """Stop (or resume) placing new requests on ``name``; raises ``KeyError`` if unknown."""
        target = self._known(name)
        (self.drained.add if drained else self.drained.discard)(name)
        return target

    def reset(self, name: str, estimator: TargetEstimator) -> Target:
        """Forget what was learned about ``name``: a fresh estimator and a closed breaker, as
        for a worker that joined anew (its calls in flight still count); raises ``KeyError``
        if unknown."""
        target = self._known(name)
        estimator.in_flight = target.estimator.in_flight
        target.estimator = estimator
        self.breakers.forget(name)
        self._breaker_closed(name)
        return target

    def decide(self, rows: int, deadline_ms: float, quality: RequestQuality,
               caller: Caller) -> tuple[Decision, float]:
        started = time.perf_counter()
        views = [t.view(rows, self.executor.allows(t.name),
                        self.policy.prices.for_target(t.name, t.tier))
                 for t in self.targets if t.name not in self.drained]
        decision = decide(views, deadline_ms=deadline_ms, quality=quality, rows=rows,
                          policy=caller.policy, policy_name=caller.policy_name, rng=self.rng,
                          state=self.baselines)
        if decision.plan is not None and caller.policy.strategy == "risk-optimal":
            decision = self._explore(decision, views, deadline_ms, quality, caller)
        decision_us = (time.perf_counter() - started) * 1e6
        self.metrics.decision.record(decision_us, {})
        return decision, decision_us

    def _explore(self, decision: Decision, views: list[TargetView], deadline_ms: float,
                 quality: RequestQuality, caller: Caller) -> Decision:
        """The decision for a request that explores a target due for it (:mod:`router.explore`):
        the best plan starting on it, the other targets of its quality set aside, if that plan
        is within the risk budget (the targets set aside come back as its last fallbacks, which
        can only lower its risk); else ``decision`` unchanged."""
        assert decision.plan is not None
        asleep = {t.name for t in self.targets if t.scales_to_zero and not t.estimator.replicas}
        target = self.explorer.due(views, caller.policy, quality, {decision.plan.primary}, asleep)
        if target is None:
            return decision
        aside = [dataclasses.replace(v, allowed=False)
                 if v.quality == target.quality and v is not target else v for v in views]
        explored = decide(aside, deadline_ms=deadline_ms, quality=quality, rows=target.rows,
                          policy=caller.policy, policy_name=caller.policy_name, rng=self.rng,
                          state=self.baselines)
        plan = explored.plan
        if plan is None or plan.primary != target.name or not plan.within_budget:
            return decision
        self.explorer.explored()
        chosen = decision.plan
        extra = tuple(t for t in (chosen.primary, *chosen.fallbacks) if t not in plan.targets)
        fallbacks = (plan.fallbacks + extra)[:max(caller.policy.max_fallbacks,
                                                  len(plan.fallbacks))]
        return dataclasses.replace(
            explored, plan=dataclasses.replace(plan, fallbacks=fallbacks),
            reason=f"exploring {target.name} (not called for {self.explorer.idle_s:g} s; the "
                   f"other {target.quality} models were set aside, shown as breaker open, and "
                   f"the plan it displaced is its fallback): {explored.reason}")

    async def route(self, x: Batch, *, deadline_ms: float, received: float,
                    quality: RequestQuality, caller: Caller, model: str = MODEL_NAME,
                    cache: Directives = USE_CACHE) -> Routed | Reused:
        """Serve one request, from the response cache (:mod:`router.cache`) when it may;
        raises :class:`Rejected` or ``NotServed``/``Shed``. The outcome, either way, goes
        to :attr:`activity`."""

        async def fresh() -> tuple[Routed, Entry]:
            routed = await self._route(x, deadline_ms=deadline_ms, received=received,
                                       quality=quality, caller=caller)
            target = routed.served.target
            return routed, Entry(routed.served.reply, target.name, target.tier, target.quality,
                                 routed.cost_usd)

        try:
            answer = await self.cache.answer(model, quality, x,
                                             deadline_at=received + deadline_ms / 1000,
                                             directives=cache, compute=fresh)
        except (Rejected, NotServed) as failure:
            status = 504 if isinstance(failure, NotServed) and failure.deadline_passed else 503
            self.activity.failed(
                status=status, latency_ms=(self.clock() - received) * 1000,
                deadline_ms=deadline_ms, error=str(failure),
                decision=failure.decision if isinstance(failure, Rejected) else None,
                shed=isinstance(failure, Shed))
            raise
        if isinstance(answer, Reused):
            self._reused(answer, received, deadline_ms)
            return answer
        routed = answer
        target = routed.served.target
        self.activity.served(latency_ms=(self.clock() - received) * 1000,
                             deadline_ms=deadline_ms, target=target.name, tier=target.tier,
                             decision=routed.decision, cost_usd=routed.cost_usd,
                             upstream_ms=routed.served.upstream_ms)
        return routed

    async def _route(self, x: Batch, *, deadline_ms: float, received: float,
                     quality: RequestQuality, caller: Caller) -> Routed:
        """The request itself: admission, decision, execution, accounting.

        A request the router cannot start in time is shed first (:class:`DeadlineAdmission`);
        the decision then plans for the deadline left after the router's own predicted delay
        and the time the replica takes to send an answer once it has one (``finish_ms``).
        """
        ticket = self.admission.admit(received, deadline_ms)
        try:
            budget_ms = deadline_ms - self.finish_ms()
            remaining_ms = budget_ms - (self.clock() - received + ticket.delay_s) * 1000
            decision, decision_us = self.decide(len(x), remaining_ms, quality, caller)
            if decision.plan is None:
                raise Rejected(decision)
            served = await self.executor.run(decision.plan, x, received + budget_ms / 1000,
                                             on_sent=ticket.started)
        finally:
            ticket.done()
        target = served.target
        prices = self.policy.prices.for_target(target.name, target.tier)
        wire_bytes = x.nbytes + sum(t.data.nbytes for t in served.reply.outputs)
        cost = marginal_cost_usd(prices, len(x), served.reply.server_ms, served.reply.batch_rows,
                                 wire_bytes / max(len(x), 1))
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

    def _reused(self, reused: Reused, received: float, deadline_ms: float) -> None:
        """Account an answer given again: nothing spent, the original call's cost saved."""
        saved = reused.entry.cost_usd
        self.ledger.add_saved(reused.entry.target, saved)
        self.metrics.cache_saved.record(saved, {})
        self.activity.record(Outcome(self.clock(), 200, (self.clock() - received) * 1000,
                                     deadline_ms, tier=CACHE_TIER))

    def _transition(self, event: Transition) -> None:
        self.metrics.breaker.record(1, {"target": event.target, "to_state": event.to_state})
        self.metrics.breaker_open.record(float(event.to_state == "open"),
                                         {"target": event.target})

    def publish_gauges(self) -> None:
        """Set each target's gauges from the state ``/v1/targets`` shows (the prober calls
        this once per probe interval; transitions also set the breaker gauge at once)."""
        for t in self.targets:
            tags = {"target": t.name}
            self.metrics.breaker_open.record(float(self.breakers[t.name].state == "open"),
                                             tags)
            self.metrics.predicted.record(t.estimator.distribution(1).quantile(0.5), tags)
        self.metrics.cache_bytes.record(self.cache.nbytes, {})

    def available(self, target: Target) -> bool:
        """Whether the target takes calls and answers them: its breaker lets calls through
        (closed, or half-open with its trial free) and its last inference did not fail."""
        breaker = self.breakers[target.name]
        return breaker.allows() and not breaker.down and target.estimator.answering

    def _attempt(self, attempt: Attempt) -> None:
        self.metrics.attempts.record(1, {"target": attempt.target, "outcome": attempt.outcome})
        self.calls_to.add(attempt.target)
        self.explorer.called(attempt.target)

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
        threshold = self.policy.policies["default"].cascade.confidence_threshold
        shares = self.calls_to.shares()
        for t in self.targets:
            view = t.snapshot(self.policy.prices.for_target(t.name, t.tier), threshold)
            view["breaker"] = self.breakers[t.name].snapshot()
            view["available"] = view["estimates"]["available"] = self.available(t)
            view["traffic_share"] = round(shares.get(t.name, 0.0), 4)
            view["drained"] = t.name in self.drained
            view["in_flight"] = t.estimator.in_flight
            targets.append(view)
        executor = self.executor.snapshot()
        executor["admission"].update(self.admission.snapshot())
        return {"targets": targets, "executor": executor,
                "exploration": self.explorer.snapshot(),
                "ledger": self.ledger.snapshot(), "cache": self.cache.snapshot()}

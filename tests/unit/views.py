"""Target views and decision runs for the decision's unit tests (no estimator behind them)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from edgeroute.config import Quality, Tier
from router.candidates import BREAKER_OPEN, FAILING, NOT_ALLOWED, QUALITY
from router.decision import BaselineState, RequestQuality, decide
from router.distribution import Distribution
from router.plan import Decision
from router.policy import CascadeSettings, HedgeSettings, RoutingPolicy
from router.view import THRESHOLDS, TargetView
from router.viewset import ViewSet

NO_EXTRAS = RoutingPolicy(hedge=HedgeSettings(enabled=False),
                          cascade=CascadeSettings(enabled=False))
EXCLUDED = {BREAKER_OPEN, QUALITY, NOT_ALLOWED, FAILING}


def view(
    name: str,
    *,
    median: float = 20.0,
    sigma: float = 0.3,
    tier: Tier = "edge",
    quality: Quality = "small",
    p_fail: float = 0.0,
    cost: float = 1e-7,
    fail_fast: float | None = None,
    allowed: bool = True,
    escalation: float = 0.2,
    ewma: float | None = None,
    latency: Distribution | None = None,
) -> TargetView:
    table = tuple(0.0 if t == 0 else escalation for t in THRESHOLDS.tolist())
    return TargetView(
        name=name, tier=tier, quality=quality, allowed=allowed,
        latency=latency or Distribution.lognormal(median, sigma), p_fail=p_fail,
        fail_fast_ms=median / 4 if fail_fast is None else fail_fast, cost_usd=cost,
        ewma_latency_ms=median if ewma is None else ewma, escalation=table,
    )


def cloud(name: str = "cloud", **kwargs: object) -> TargetView:
    defaults: dict[str, object] = {"median": 40.0, "tier": "cloud", "quality": "large",
                                   "cost": 2e-6}
    return view(name, **{**defaults, **kwargs})  # type: ignore[arg-type]


def run(views: Sequence[TargetView] | ViewSet, deadline_ms: float = 250.0,
        policy: RoutingPolicy = NO_EXTRAS, quality: RequestQuality = "any",
        state: BaselineState | None = None, seed: int = 0) -> Decision:
    return decide(views, deadline_ms=deadline_ms, quality=quality, rows=1, policy=policy,
                  policy_name="test", rng=random.Random(seed), state=state or BaselineState())


def verdicts(decision: Decision) -> dict[str, str]:
    return {row.plan: row.verdict for row in decision.candidates}

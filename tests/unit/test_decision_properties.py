"""Properties of the decision that must hold whatever the views (hypothesis): a longer
deadline never raises the risk, a higher price never wins a target more traffic, an open
breaker or a failed target is never used, and the budget is met whenever it can be."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from router.candidates import HEDGE_TOO_COSTLY
from router.decision import RequestQuality
from router.plan import Decision
from router.policy import CascadeSettings, HedgeSettings, RoutingPolicy, Strategy
from router.view import TargetView
from tests.unit.views import EXCLUDED, run, view


@st.composite
def target_views(draw: st.DrawFn, min_size: int = 1, max_size: int = 5) -> list[TargetView]:
    count = draw(st.integers(min_size, max_size))
    views = []
    for i in range(count):
        large = draw(st.booleans())
        views.append(view(
            f"t{i}", median=draw(st.floats(1.0, 300.0)), sigma=draw(st.floats(0.02, 1.2)),
            tier="cloud" if large and draw(st.booleans()) else "edge",
            quality="large" if large else "small",
            p_fail=draw(st.sampled_from([0.0, 0.0, 0.001, 0.02, 0.2, 1.0])),
            cost=draw(st.floats(0.0, 1e-5)), fail_fast=draw(st.floats(0.0, 50.0)),
            allowed=draw(st.booleans()) or draw(st.booleans()),
            escalation=draw(st.floats(0.0, 1.0)), ewma=draw(st.floats(1.0, 300.0)),
        ))
    return views


policies = st.builds(
    RoutingPolicy,
    risk_budget=st.sampled_from([0.0, 0.001, 0.01, 0.1]),
    objective=st.sampled_from(["min-cost", "min-latency"]),
    hedge=st.builds(HedgeSettings, enabled=st.booleans(),
                    delay_quantile=st.sampled_from([0.5, 0.9, 0.95])),
    cascade=st.builds(CascadeSettings, enabled=st.booleans(),
                      prefer_over_small=st.booleans()),
    max_fallbacks=st.integers(0, 3),
    miss_penalty_usd=st.sampled_from([0.0, 1e-6]),
)
strategies = st.sampled_from(["risk-optimal", "always-edge", "always-cloud", "random",
                              "round-robin", "least-latency", "least-cost"])
qualities = st.sampled_from(["any", "high"])
PROPERTY_SETTINGS = settings(max_examples=200, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])


def enumerated(decision: Decision) -> list[float]:
    """P_miss of every plan the decision could have chosen."""
    return [row.p_miss for row in decision.candidates
            if row.verdict not in EXCLUDED | {HEDGE_TOO_COSTLY}]


GREEDY_FALLBACKS_MISS = {
    "views": [view("t0", median=154.0, sigma=0.68, cost=0.0, fail_fast=0.0),
              view("t1", median=39.5, sigma=0.18, p_fail=0.02, cost=0.0, fail_fast=16.9),
              view("t2", median=51.1, sigma=0.05, p_fail=0.02, cost=0.0, fail_fast=0.0)],
    "policy": RoutingPolicy(risk_budget=0.0, miss_penalty_usd=0.0,
                            hedge=HedgeSettings(enabled=False),
                            cascade=CascadeSettings(enabled=False)),
    "quality": "any", "d1": 421.0, "d2": 826.0,
}
"""Fallbacks ordered greedily (each one's chance alone) made this best P_miss rise from
3.1e-5 to 1.4e-4 with the longer deadline; the likeliest order does not."""


@PROPERTY_SETTINGS
@given(views=target_views(), policy=policies, quality=qualities,
       d1=st.floats(1.0, 1000.0), d2=st.floats(1.0, 1000.0))
@example(**GREEDY_FALLBACKS_MISS)
def test_a_longer_deadline_never_raises_the_risk(views: list[TargetView], policy: RoutingPolicy,
                                                 quality: RequestQuality, d1: float,
                                                 d2: float) -> None:
    short, long = sorted((d1, d2))
    for v in views:
        assert 1 - v.meet_alone(long) <= 1 - v.meet_alone(short) + 1e-12, v.name
    best = [min(enumerated(run(views, d, policy, quality)), default=1.0) for d in (short, long)]
    assert best[1] <= best[0] + 1e-9, f"best plan's P_miss rose from {best[0]} to {best[1]}"


@PROPERTY_SETTINGS
@given(views=target_views(min_size=2), policy=policies, quality=qualities,
       deadlines=st.lists(st.floats(1.0, 600.0), min_size=5, max_size=15),
       which=st.integers(0, 4), factor=st.floats(1.01, 100.0), least_cost=st.booleans())
def test_a_higher_price_never_raises_a_targets_share(
    views: list[TargetView], policy: RoutingPolicy, quality: RequestQuality,
    deadlines: list[float], which: int, factor: float, least_cost: bool,
) -> None:
    if least_cost:
        policy = policy.model_copy(update={"strategy": "least-cost"})
    target = views[which % len(views)]
    pricier = [v if v is not target else view(
        v.name, latency=v.latency, tier=v.tier, quality=v.quality, p_fail=v.p_fail,
        cost=max(v.cost_usd, 1e-9) * factor, fail_fast=v.fail_fast_ms, allowed=v.allowed,
        escalation=v.escalation[-1], ewma=v.ewma_latency_ms) for v in views]

    def share(vs: list[TargetView]) -> int:
        plans = [run(vs, d, policy, quality).plan for d in deadlines]
        return sum(p is not None and p.primary == target.name for p in plans)

    assert share(pricier) <= share(views)


@PROPERTY_SETTINGS
@given(views=target_views(), policy=policies, strategy=strategies, quality=qualities,
       deadline=st.floats(1.0, 1000.0), seed=st.integers(0, 100))
def test_an_open_breaker_or_a_failed_target_is_never_used(
    views: list[TargetView], policy: RoutingPolicy, strategy: Strategy,
    quality: RequestQuality, deadline: float, seed: int,
) -> None:
    policy = policy.model_copy(update={"strategy": strategy})
    plan = run(views, deadline, policy, quality, seed=seed).plan
    assume(plan is not None)
    assert plan is not None
    out = {v.name for v in views if not v.allowed or v.p_fail >= 1.0}
    assert plan.primary not in out
    assert not set(plan.targets) & out


@PROPERTY_SETTINGS
@given(views=target_views(), policy=policies, quality=qualities,
       deadline=st.floats(1.0, 1000.0))
def test_the_chosen_plan_is_within_budget_whenever_any_plan_is(
    views: list[TargetView], policy: RoutingPolicy, quality: RequestQuality, deadline: float,
) -> None:
    decision = run(views, deadline, policy, quality)
    feasible = [p for p in enumerated(decision) if p <= policy.risk_budget + 1e-12]
    if feasible:
        assert decision.plan is not None and decision.plan.within_budget
        assert decision.plan.p_miss <= policy.risk_budget + 1e-12
    elif decision.plan is not None:
        assert not decision.plan.within_budget
        assert decision.plan.p_miss == pytest.approx(min(enumerated(decision)))


@PROPERTY_SETTINGS
@given(views=target_views(), policy=policies, quality=qualities,
       deadline=st.floats(1.0, 1000.0))
def test_pruning_never_changes_the_choice(
    views: list[TargetView], policy: RoutingPolicy, quality: RequestQuality, deadline: float,
) -> None:
    """The search passes over plans by lower bounds (cost floor, P_miss of the plan's own
    targets) and leaves them unevaluated; the table evaluates every plan. Whatever it left
    out, no row of the table beats the chosen plan (cheaper, or faster for min-latency,
    within the budget; or less risky when nothing is)."""
    decision = run(views, deadline, policy, quality)
    if decision.plan is None:
        return
    rows = [r for r in decision.candidates if r.verdict not in EXCLUDED | {HEDGE_TOO_COSTLY}]
    chosen = next(r for r in decision.candidates if r.verdict == "chosen")
    if len(views) <= 4:
        assert all(r.verdict != "not shortlisted" for r in rows), "every plan was enumerated"
    budget = policy.risk_budget + 1e-12
    if not decision.plan.within_budget:
        assert all(r.p_miss > budget for r in rows)
        assert chosen.p_miss <= min(r.p_miss for r in rows) + 1e-15
        return
    assert chosen.p_miss <= budget
    feasible = [r for r in rows if r.p_miss <= budget and r.verdict != "cascade preferred"]
    if policy.objective == "min-latency":
        assert chosen.p50_ms <= min(r.p50_ms for r in feasible) + 1e-9
    else:
        penalty, tie = policy.miss_penalty_usd, policy.cost_tie_ratio
        best = min(r.cost_usd + penalty * r.p_miss for r in feasible)
        assert chosen.cost_usd + penalty * chosen.p_miss <= best * (1 + tie) + 1e-18

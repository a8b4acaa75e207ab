"""The placement decision over target views: which plan serves a request and why the others
lost, for the risk-optimal engine and every baseline."""

from __future__ import annotations

import gc
import random

import numpy as np
import pytest

from router.candidates import (
    BREAKER_OPEN,
    CASCADE_PREFERRED,
    CHOSEN,
    DEARER,
    HEDGE_TOO_COSTLY,
    NOT_ALLOWED,
    NOT_DRAWN,
    OTHER_TIER,
    OVER_BUDGET,
    QUALITY,
    SLOWER,
)
from router.decision import BaselineState, decide
from router.distribution import Distribution
from router.policy import CascadeSettings, HedgeSettings, RoutingPolicy, Strategy
from router.viewset import ViewSet
from tests.unit.views import NO_EXTRAS, cloud, run, verdicts, view


def test_the_cheapest_target_within_the_risk_budget_is_primary() -> None:
    decision = run([cloud(), view("edge-far", median=60.0, cost=2e-7), view("edge-near")])
    assert decision.plan is not None
    assert decision.plan.primary == "edge-near"
    assert decision.plan.within_budget
    assert decision.plan.p_miss <= NO_EXTRAS.risk_budget
    assert "least expected cost" in decision.reason


def test_a_cheap_target_too_slow_for_the_deadline_loses_as_over_budget() -> None:
    slow_cheap = view("slow-cheap", median=200.0, cost=0.0)
    decision = run([slow_cheap, view("edge"), cloud()], deadline_ms=100.0)
    assert decision.plan is not None and decision.plan.primary == "edge"
    rows = {row.plan.split(",")[0]: row for row in decision.candidates}
    assert rows["slow-cheap"].verdict == OVER_BUDGET
    assert rows["slow-cheap"].p_miss > 0.5
    assert rows["cloud"].verdict == DEARER


def test_the_risk_of_the_tail_decides_not_the_mean() -> None:
    jittery = view("jittery", median=30.0, sigma=0.8, cost=0.0)
    steady = view("steady", median=50.0, sigma=0.05, cost=1e-6)
    assert run([jittery, steady], deadline_ms=70.0).plan.primary == "steady"  # type: ignore[union-attr]
    assert run([jittery, steady], deadline_ms=400.0).plan.primary == "jittery"  # type: ignore[union-attr]


def test_fallbacks_bring_a_flaky_primary_within_budget() -> None:
    flaky = view("flaky", p_fail=0.05, fail_fast=2.0, cost=1e-8)
    backup = view("backup", median=30.0, cost=1e-7)
    decision = run([flaky, backup], deadline_ms=200.0)
    plan = decision.plan
    assert plan is not None and plan.primary == "flaky" and plan.fallbacks == ("backup",)
    expected = 1 - (flaky.meet_alone(200.0) + 0.05 * backup.meet_alone(198.0))
    assert plan.p_miss == pytest.approx(expected, abs=1e-12)
    assert 1 - flaky.meet_alone(200.0) == pytest.approx(0.05)
    assert plan.expected_cost_usd == pytest.approx(1e-8 + 0.05 * 1e-7)
    alone = run([flaky, backup], deadline_ms=200.0,
                policy=NO_EXTRAS.model_copy(update={"max_fallbacks": 0}))
    assert alone.plan is not None and alone.plan.primary == "backup", "alone it misses 5%"


def test_fallbacks_are_the_least_risky_first_and_at_most_max_fallbacks() -> None:
    views = [view("primary", cost=0.0), view("slow", median=150.0), view("fast", median=10.0),
             view("mid", median=60.0)]
    plan = run(views, deadline_ms=200.0).plan
    assert plan is not None and plan.fallbacks == ("fast", "mid")
    one = run(views, deadline_ms=200.0, policy=NO_EXTRAS.model_copy(update={"max_fallbacks": 1}))
    assert one.plan is not None and one.plan.fallbacks == ("fast",)


def test_a_hedge_brings_a_heavy_tailed_primary_within_budget() -> None:
    """The Tail at Scale: a 3% straggler tail misses a 100 ms deadline; a hedge after the
    primary's p95 to a second target catches it for about 5% extra requests."""
    samples = np.random.default_rng(1).lognormal(np.log(10.0), 0.3, 200_000)
    samples[: 6_000] *= 20.0
    straggly = view("straggly", latency=Distribution.from_samples(samples), cost=1e-7)
    other = view("other", median=30.0, cost=1e-6)
    policy = RoutingPolicy(cascade=CascadeSettings(enabled=False), max_fallbacks=0)
    decision = run([straggly, other], deadline_ms=100.0, policy=policy)
    plan = decision.plan
    assert plan is not None and plan.kind == "hedged"
    assert (plan.primary, plan.hedge) == ("straggly", "other")
    assert plan.hedge_delay_ms == pytest.approx(straggly.latency.quantile(0.95))
    assert plan.expected_extra_ratio == pytest.approx(0.05, abs=1e-6)
    assert plan.expected_cost_usd == pytest.approx(1e-7 + 0.05 * 1e-6, rel=1e-3)
    assert plan.p_miss <= 0.01
    assert verdicts(decision)["straggly"] == OVER_BUDGET
    assert verdicts(decision)["other"] == DEARER


def test_a_hedge_that_adds_too_many_requests_is_refused() -> None:
    policy = RoutingPolicy(cascade=CascadeSettings(enabled=False),
                           hedge=HedgeSettings(delay_quantile=0.5, max_extra_ratio=0.05))
    decision = run([view("a"), view("b", cost=1e-6)], policy=policy)
    hedged = [row for row in decision.candidates if "hedged" in row.plan]
    assert hedged and all(row.verdict == HEDGE_TOO_COSTLY for row in hedged)


def test_the_hedge_waits_at_least_the_minimum_delay() -> None:
    policy = RoutingPolicy(cascade=CascadeSettings(enabled=False),
                           hedge=HedgeSettings(min_delay_ms=30.0))
    rows = run([view("a", median=5.0, sigma=0.1), view("b")], policy=policy).candidates
    assert any("after 30.0 ms" in row.plan for row in rows)


def test_when_no_plan_meets_the_budget_the_least_risky_runs_flagged() -> None:
    decision = run([view("a", median=100.0), cloud(median=80.0)], deadline_ms=70.0)
    plan = decision.plan
    assert plan is not None and not plan.within_budget
    assert plan.primary == "cloud"
    assert "least risky" in decision.reason
    assert all(row.verdict in (CHOSEN, OVER_BUDGET) for row in decision.candidates)


def test_a_policy_may_reject_instead() -> None:
    policy = NO_EXTRAS.model_copy(update={"on_infeasible": "reject"})
    decision = run([view("a", median=100.0)], deadline_ms=70.0, policy=policy)
    assert decision.plan is None
    assert "rejected" in decision.reason
    assert [row.verdict for row in decision.candidates] == [OVER_BUDGET]


def test_high_quality_goes_only_to_large_models_of_high_quality_tiers() -> None:
    large_edge = view("large-edge", quality="large", cost=0.0)
    views = [view("edge"), large_edge, cloud()]
    decision = run(views, quality="high")
    assert decision.plan is not None and decision.plan.primary == "cloud"
    assert set(decision.plan.targets) == {"cloud"}
    assert verdicts(decision)["edge"] == QUALITY
    assert verdicts(decision)["large-edge"] == QUALITY
    both = NO_EXTRAS.model_copy(update={"high_quality_tiers": ("cloud", "edge")})
    assert run(views, quality="high", policy=both).plan.primary == "large-edge"  # type: ignore[union-attr]


def test_without_a_large_model_high_quality_gets_no_plan() -> None:
    decision = run([view("edge-a"), view("edge-b")], quality="high")
    assert decision.plan is None
    assert "quality=high" in decision.reason


def test_the_policy_limits_tiers_and_targets() -> None:
    views = [view("edge-a", cost=0.0), view("edge-b"), cloud()]
    only_cloud = NO_EXTRAS.model_copy(update={"allowed_tiers": ("cloud",)})
    decision = run(views, policy=only_cloud)
    assert decision.plan is not None and decision.plan.primary == "cloud"
    assert decision.plan.fallbacks == ()
    assert verdicts(decision)["edge-a"] == NOT_ALLOWED
    named = NO_EXTRAS.model_copy(update={"allowed_targets": ("edge-b",)})
    assert run(views, policy=named).plan.targets == ("edge-b",)  # type: ignore[union-attr]


def test_an_open_breaker_keeps_a_target_out_of_every_plan() -> None:
    views = [view("open", cost=0.0, allowed=False), view("edge"), cloud()]
    decision = run(views, policy=RoutingPolicy())
    assert decision.plan is not None
    assert "open" not in decision.plan.targets
    assert verdicts(decision)["open"] == BREAKER_OPEN


def test_a_cascade_is_preferred_to_the_small_model_alone() -> None:
    edge, big = view("edge", escalation=0.1), cloud()
    decision = run([edge, big], deadline_ms=250.0, policy=RoutingPolicy())
    plan = decision.plan
    assert plan is not None and plan.kind == "cascade"
    assert (plan.primary, plan.escalate_to, plan.confidence_threshold) == ("edge", "cloud", 0.9)
    assert plan.expected_cost_usd == pytest.approx(1e-7 + 0.1 * 2e-6)
    assert verdicts(decision)["edge, then cloud"] == CASCADE_PREFERRED
    assert verdicts(decision)["cloud, then edge"] == DEARER
    assert "rank below a cascade" in decision.reason


def test_a_cascade_without_time_to_escalate_leaves_the_small_model_alone() -> None:
    edge, big = view("edge", median=10.0, escalation=0.3), cloud(median=60.0)
    decision = run([edge, big], deadline_ms=45.0, policy=RoutingPolicy())
    plan = decision.plan
    assert plan is not None and plan.kind == "single" and plan.primary == "edge"
    assert "small model alone" in decision.reason
    cascade = next(r for r in decision.candidates if "escalating" in r.plan)
    assert cascade.verdict == OVER_BUDGET
    assert cascade.p_miss == pytest.approx(0.3, rel=0.05), "nearly every escalation is late"


def test_without_the_preference_a_cascade_only_adds_cost() -> None:
    policy = RoutingPolicy(cascade=CascadeSettings(prefer_over_small=False))
    decision = run([view("edge"), cloud()], policy=policy)
    assert decision.plan is not None and decision.plan.kind == "single"
    assert decision.plan.primary == "edge"
    assert any(r.verdict == DEARER and "escalating" in r.plan for r in decision.candidates)


def test_no_cascade_for_high_quality() -> None:
    decision = run([view("edge"), cloud()], quality="high", policy=RoutingPolicy())
    assert not any("escalating" in row.plan for row in decision.candidates)


def test_the_min_latency_objective_takes_the_fastest_p50_within_budget() -> None:
    policy = NO_EXTRAS.model_copy(update={"objective": "min-latency"})
    decision = run([view("cheap", median=50.0, cost=0.0), cloud(median=20.0)], policy=policy)
    assert decision.plan is not None and decision.plan.primary == "cloud"
    assert "fastest p50" in decision.reason
    assert verdicts(decision)["cheap, then cloud"] == SLOWER


def test_the_explanation_lists_every_plan_with_figures() -> None:
    decision = run([view("edge"), view("edge-b", median=30.0), cloud()], policy=RoutingPolicy())
    explained = decision.explain()
    assert explained["plan"] == decision.plan.describe()  # type: ignore[union-attr]
    candidates = explained["candidates"]
    assert candidates[0]["verdict"] == CHOSEN
    assert sum(c["verdict"] == CHOSEN for c in candidates) == 1
    assert len(candidates) == 3 + 2 + 6, "3 singles, 2 cascades, 6 hedged pairs"
    for row in candidates:
        assert 0 < row["p50_ms"] <= row["p99_ms"]
        assert 0.0 <= row["p_miss"] <= 1.0


def test_views_for_other_rows_are_refused() -> None:
    with pytest.raises(ValueError, match="rows"):
        decide([view("a")], deadline_ms=10.0, quality="any", rows=4, policy=NO_EXTRAS,
               policy_name="x", rng=random.Random(0), state=BaselineState())


def baseline(strategy: Strategy) -> RoutingPolicy:
    return RoutingPolicy(strategy=strategy, hedge=HedgeSettings(enabled=False),
                         cascade=CascadeSettings(enabled=False))


BASELINE_VIEWS = [
    view("edge-fast", median=10.0, cost=3e-7, ewma=40.0),
    view("edge-slow", median=30.0, cost=1e-7, ewma=15.0),
    cloud(median=25.0, cost=2e-6, ewma=30.0),
]


@pytest.mark.parametrize(("strategy", "primary", "loser"), [
    ("always-edge", "edge-fast", SLOWER),
    ("always-cloud", "cloud", OTHER_TIER),
    ("least-latency", "edge-slow", SLOWER),
    ("least-cost", "edge-slow", DEARER),
])
def test_each_baseline_keeps_its_single_criterion(strategy: Strategy, primary: str,
                                                  loser: str) -> None:
    decision = run(BASELINE_VIEWS, policy=baseline(strategy))
    assert decision.plan is not None and decision.plan.primary == primary
    assert len(decision.plan.fallbacks) == 2, "baselines get the same ordered fallbacks"
    assert f"{strategy} baseline" in decision.reason
    assert loser in verdicts(decision).values()


def test_always_edge_with_no_edge_allowed_does_not_switch_tier() -> None:
    decision = run([view("edge", allowed=False), cloud()], policy=baseline("always-edge"))
    assert decision.plan is None
    assert "no edge target" in decision.reason


def test_round_robin_takes_turns_and_random_follows_the_rng() -> None:
    state = BaselineState()
    turns = [run(BASELINE_VIEWS, policy=baseline("round-robin"), state=state).plan.primary  # type: ignore[union-attr]
             for _ in range(6)]
    assert turns == ["edge-fast", "edge-slow", "cloud"] * 2
    draws = [run(BASELINE_VIEWS, policy=baseline("random"), seed=s).plan.primary  # type: ignore[union-attr]
             for s in range(60)]
    assert set(draws) == {"edge-fast", "edge-slow", "cloud"}
    again = [run(BASELINE_VIEWS, policy=baseline("random"), seed=s).plan.primary  # type: ignore[union-attr]
             for s in range(60)]
    assert draws == again
    assert NOT_DRAWN in verdicts(run(BASELINE_VIEWS, policy=baseline("random"))).values()


def test_baselines_respect_quality_and_breakers() -> None:
    views = [view("edge", cost=0.0), cloud("cloud-a", allowed=False), cloud("cloud-b")]
    for strategy in ("random", "round-robin", "least-latency", "least-cost", "always-cloud"):
        plan = run(views, quality="high", policy=baseline(strategy)).plan  # type: ignore[arg-type]
        assert plan is not None and plan.targets == ("cloud-b",), strategy


def test_among_a_thousand_targets_the_cheapest_within_budget_is_found() -> None:
    rng = np.random.default_rng(5)
    views = [view(f"edge-{i}", median=float(rng.uniform(5, 300)), cost=float(rng.uniform(1, 2)))
             for i in range(1000)]
    views.append(view("bargain", median=40.0, cost=0.5))
    views.append(view("bargain-slow", median=400.0, cost=0.1))
    view_set = ViewSet(views)
    decision = run(view_set, deadline_ms=100.0, policy=RoutingPolicy())
    assert decision.plan is not None and decision.plan.primary == "bargain"
    assert decision.plan.p_miss <= 0.01
    assert len(decision.plan.fallbacks) == 2
    assert len(decision.candidates) >= 1002
    assert verdicts(decision)[decision.plan.describe()] == CHOSEN


@pytest.mark.parametrize("deadline_ms", [5.0, 60.0, 250.0])
def test_a_decision_leaves_no_garbage_cycles(deadline_ms: float) -> None:
    """Decisions are freed as they are dropped: cyclic garbage would wait for the collector,
    whose pauses land on some later request's decision time."""
    views = [view("edge-a"), view("edge-b", median=40.0, p_fail=0.01), cloud(p_fail=0.001)]
    policies = [RoutingPolicy(), NO_EXTRAS, baseline("least-latency")]
    gc.collect()
    gc.disable()
    try:
        for policy in policies:
            decision = run(views, deadline_ms=deadline_ms, policy=policy)
            assert len(decision.candidates) >= 3
            run(views, deadline_ms=deadline_ms, policy=policy)
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_a_plan_that_loses_the_cost_tie_on_speed_is_labelled_slower() -> None:
    """A cascade that escalates 94% of the time costs within the cost tie of the cloud alone;
    the faster plan wins the tie, and the table says so (not "not shortlisted", which would
    claim a pruning miss among three targets)."""
    views = [view("edge-a", median=20.0, cost=5e-8, escalation=0.94),
             cloud(cost=1e-6, median=40.0)]
    decision = run(views, 1000.0, RoutingPolicy(hedge=HedgeSettings(enabled=False)), "any")
    assert decision.plan is not None and decision.plan.primary == "cloud"
    cascade = next(row for row in decision.candidates if "escalating" in row.plan)
    assert cascade.verdict == "slower"
    assert "not shortlisted" not in {row.verdict for row in decision.candidates}

"""The placement decision and the marginal cost it weighs: which target a request goes to
first, and in what order the others follow."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeroute.config import Prices, Quality, Tier
from router.cost import BYTES_PER_ROW, marginal_cost_usd
from router.estimator import Prediction
from router.placement import Candidate, RequestQuality, allowed, choose


def candidate(
    name: str,
    *,
    mean_ms: float,
    cost_usd: float,
    spread_ms: float = 0.0,
    quality: Quality = "small",
    tier: Tier = "edge",
    available: bool = True,
) -> Candidate:
    prediction = Prediction(mean_ms, 0.0, 0.0, spread_ms, True)
    return Candidate(name, tier, quality, available, prediction, cost_usd)


def names(order: Sequence[Candidate]) -> list[str]:
    return [c.name for c in order]


EDGE_NEAR = candidate("edge-near", mean_ms=10.0, spread_ms=2.0, cost_usd=1e-8)
EDGE_FAR = candidate("edge-far", mean_ms=40.0, spread_ms=5.0, cost_usd=2e-8)
CLOUD = candidate("cloud", mean_ms=60.0, spread_ms=10.0, cost_usd=1e-6, quality="large",
                  tier="cloud")


def test_the_cheapest_target_that_fits_the_deadline_is_primary() -> None:
    plan = choose([CLOUD, EDGE_FAR, EDGE_NEAR], deadline_ms=250.0, quality="any")
    assert plan.primary is EDGE_NEAR
    assert "cheapest" in plan.reason


def test_a_cheap_target_too_slow_for_the_deadline_is_passed_over() -> None:
    slow_cheap = candidate("slow-cheap", mean_ms=200.0, spread_ms=20.0, cost_usd=0.0)
    plan = choose([slow_cheap, EDGE_FAR, CLOUD], deadline_ms=100.0, quality="any")
    assert plan.primary is EDGE_FAR


def test_the_deadline_is_checked_against_the_upper_estimate_not_the_mean() -> None:
    jittery = candidate("jittery", mean_ms=40.0, spread_ms=20.0, cost_usd=0.0)
    steady = candidate("steady", mean_ms=60.0, spread_ms=1.0, cost_usd=1.0)
    assert choose([jittery, steady], deadline_ms=70.0, quality="any").primary is steady
    assert choose([jittery, steady], deadline_ms=80.0, quality="any").primary is jittery


def test_when_nothing_fits_the_fastest_available_target_is_primary() -> None:
    plan = choose([CLOUD, EDGE_FAR, EDGE_NEAR], deadline_ms=5.0, quality="any")
    assert plan.primary is EDGE_NEAR
    assert "fastest" in plan.reason


def test_high_quality_never_goes_to_a_small_model() -> None:
    plan = choose([EDGE_NEAR, EDGE_FAR, CLOUD], deadline_ms=5.0, quality="high")
    assert names(plan.order) == ["cloud"]


def test_high_quality_without_a_large_model_gets_an_empty_plan() -> None:
    plan = choose([EDGE_NEAR, EDGE_FAR], deadline_ms=250.0, quality="high")
    assert plan.order == ()
    assert plan.primary is None
    assert "quality=high" in plan.reason


def test_a_cooling_down_target_is_never_primary_while_another_is_available() -> None:
    cooling = candidate("cooling", mean_ms=1.0, cost_usd=0.0, available=False)
    plan = choose([cooling, EDGE_FAR], deadline_ms=250.0, quality="any")
    assert plan.primary is EDGE_FAR
    plan = choose([cooling, EDGE_FAR], deadline_ms=1.0, quality="any")
    assert plan.primary is EDGE_FAR


def test_when_every_target_cools_down_the_fastest_is_still_tried() -> None:
    slow = candidate("slow", mean_ms=90.0, cost_usd=0.0, available=False)
    fast = candidate("fast", mean_ms=9.0, cost_usd=1.0, available=False)
    plan = choose([slow, fast], deadline_ms=250.0, quality="any")
    assert names(plan.order) == ["fast", "slow"]


def test_fallbacks_put_available_then_fitting_targets_first_then_the_faster() -> None:
    cooling_fast = candidate("cooling-fast", mean_ms=1.0, cost_usd=0.0, available=False)
    too_slow = candidate("too-slow", mean_ms=150.0, cost_usd=0.0)
    fits_slower = candidate("fits-slower", mean_ms=50.0, cost_usd=1.0)
    fits_faster = candidate("fits-faster", mean_ms=20.0, cost_usd=2.0)
    cheapest = candidate("cheapest", mean_ms=30.0, cost_usd=0.0)
    plan = choose(
        [cooling_fast, too_slow, fits_slower, fits_faster, cheapest],
        deadline_ms=100.0,
        quality="any",
    )
    assert names(plan.order) == [
        "cheapest", "fits-faster", "fits-slower", "too-slow", "cooling-fast"
    ]


def test_cost_ties_go_to_the_faster_target() -> None:
    a = candidate("a", mean_ms=30.0, cost_usd=1.0)
    b = candidate("b", mean_ms=20.0, cost_usd=1.0)
    assert choose([a, b], deadline_ms=250.0, quality="any").primary is b


candidates_strategy = st.lists(
    st.builds(
        lambda quality, available, mean, spread, cost: (quality, available, mean, spread, cost),
        st.sampled_from(["small", "large"]),
        st.booleans(),
        st.floats(0.0, 1000.0),
        st.floats(0.0, 200.0),
        st.floats(0.0, 1e-3),
    ),
    min_size=0,
    max_size=6,
).map(
    lambda rows: [
        candidate(f"t{i}", mean_ms=m, spread_ms=s, cost_usd=c, quality=q, available=a)
        for i, (q, a, m, s, c) in enumerate(rows)
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    candidates=candidates_strategy,
    deadline_ms=st.floats(0.0, 3000.0),
    quality=st.sampled_from(["any", "high"]),
)
def test_plan_properties(
    candidates: list[Candidate], deadline_ms: float, quality: RequestQuality
) -> None:
    plan = choose(candidates, deadline_ms, quality)
    eligible = [c for c in candidates if allowed(c, quality)]

    assert sorted(names(plan.order)) == sorted(names(eligible)), "each eligible target once"
    if not eligible:
        assert plan.primary is None
        return
    primary = plan.primary
    assert primary is not None
    assert allowed(primary, quality)
    if quality == "high":
        assert all(c.quality == "large" for c in plan.order)

    fitting = [c for c in eligible if c.available and c.prediction.upper_ms() <= deadline_ms]
    if fitting:
        assert primary in fitting
        assert primary.cost_usd == min(c.cost_usd for c in fitting)
    if any(c.available for c in eligible):
        assert primary.available
    availability = [c.available for c in plan.order[1:]]
    assert availability == sorted(availability, reverse=True), "available fallbacks first"


HOURLY = 3600.0
"""A compute price of $3600/h is $1 per compute second: figures below read as seconds."""


def test_compute_is_charged_by_the_request_share_of_its_batch() -> None:
    prices = Prices(usd_per_compute_hour=HOURLY)
    assert marginal_cost_usd(prices, rows=1, service_ms=1000.0, batch_rows=1) == pytest.approx(1.0)
    assert marginal_cost_usd(prices, rows=2, service_ms=1000.0, batch_rows=8) == pytest.approx(
        0.25
    )
    assert marginal_cost_usd(prices, rows=8, service_ms=500.0, batch_rows=8) == pytest.approx(0.5)


def test_a_request_never_pays_for_more_than_the_whole_batch() -> None:
    prices = Prices(usd_per_compute_hour=HOURLY)
    assert marginal_cost_usd(prices, rows=16, service_ms=1000.0, batch_rows=4) == pytest.approx(
        1.0
    )
    assert marginal_cost_usd(prices, rows=1, service_ms=1000.0, batch_rows=0) == pytest.approx(1.0)


def test_the_request_fee_is_flat() -> None:
    prices = Prices(usd_per_request=2e-7)
    assert marginal_cost_usd(prices, 1, 5.0, 1) == pytest.approx(2e-7)
    assert marginal_cost_usd(prices, 64, 5.0, 64) == pytest.approx(2e-7)


def test_per_inference_and_egress_grow_with_rows() -> None:
    per_row = Prices(usd_per_inference=5e-8)
    assert marginal_cost_usd(per_row, 10, 1.0, 10) == pytest.approx(5e-7)
    egress = Prices(usd_per_gb_egress=0.09)
    assert marginal_cost_usd(egress, 10, 1.0, 10) == pytest.approx(0.09 * 10 * BYTES_PER_ROW / 1e9)


def test_the_terms_add_up() -> None:
    prices = Prices(usd_per_compute_hour=HOURLY, usd_per_request=1e-3, usd_per_inference=1e-4,
                    usd_per_gb_egress=1.0)
    got = marginal_cost_usd(prices, rows=4, service_ms=100.0, batch_rows=16)
    want = 0.1 * 4 / 16 + 1e-3 + 4e-4 + 4 * BYTES_PER_ROW / 1e9
    assert got == pytest.approx(want)


def test_provisioned_hours_are_not_marginal() -> None:
    assert marginal_cost_usd(Prices(usd_per_hour=2.5), 32, 100.0, 32) == 0.0

"""The risk and cost of each plan shape (single with fallbacks, hedged, cascade), checked
against a Monte Carlo run of the same plan with the same failure model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from router import risk
from router.view import TargetView
from tests.unit.views import cloud, view


def simulate_chain(chain: Sequence[TargetView], deadline: float, rng: np.random.Generator,
                   start: float = 0.0) -> bool:
    left = deadline - start
    for v in chain:
        if left <= 0:
            return False
        if rng.random() < v.p_fail:
            left -= v.fail_fast_ms
            continue
        return v.latency.quantile(rng.random()) <= left
    return False


def simulate_hedged(a: TargetView, b: TargetView, h: float, rest: Sequence[TargetView],
                    deadline: float, rng: np.random.Generator) -> bool:
    if rng.random() < a.p_fail:
        start = min(a.fail_fast_ms, h)
        if rng.random() < b.p_fail:
            return simulate_chain(rest, deadline, rng, start + b.fail_fast_ms)
        return start + b.latency.quantile(rng.random()) <= deadline
    la = a.latency.quantile(rng.random())
    if la <= deadline:
        return True
    return rng.random() >= b.p_fail and h + b.latency.quantile(rng.random()) <= deadline


def simulate_cascade(s: TargetView, e: TargetView, escalate: float, rest: Sequence[TargetView],
                     deadline: float, rng: np.random.Generator) -> bool:
    if rng.random() < s.p_fail:
        return simulate_chain(rest, deadline, rng, s.fail_fast_ms)
    ls = s.latency.quantile(rng.random())
    if ls > deadline:
        return False
    if rng.random() >= escalate:
        return True
    return rng.random() >= e.p_fail and ls + e.latency.quantile(rng.random()) <= deadline


TRIALS = 40_000


def test_the_risk_of_each_plan_shape_matches_simulation() -> None:
    """Each formula of :mod:`router.risk` against a Monte Carlo run of the same plan."""
    rng = np.random.default_rng(8)
    a = view("a", median=20.0, sigma=0.6, p_fail=0.1, fail_fast=5.0)
    b = view("b", median=30.0, sigma=0.3, p_fail=0.05, fail_fast=8.0)
    c = cloud(median=25.0, sigma=0.4, p_fail=0.2, fail_fast=3.0)
    deadline = 45.0
    rest = risk.fallbacks((a, b, c), (a,), deadline - a.fail_fast_ms, 2)
    assert rest.targets == (c, b), "c fails fast, leaving b nearly all of the 40 ms left"
    p_miss, _ = risk.single(a, rest, deadline)
    simulated = 1 - np.mean([simulate_chain((a, c, b), deadline, rng) for _ in range(TRIALS)])
    assert p_miss == pytest.approx(simulated, abs=0.01)
    h = a.latency.quantile(0.8)
    rest = risk.fallbacks((c,), (), risk.hedge_rest_ms(a, b, h, deadline), 1)
    p_miss, _, extra = risk.hedged(a, b, h, rest, deadline)
    simulated = 1 - np.mean([simulate_hedged(a, b, h, (c,), deadline, rng)
                             for _ in range(TRIALS)])
    assert p_miss == pytest.approx(simulated, abs=0.01)
    assert extra == pytest.approx(0.9 * 0.2, rel=0.01)
    rest = risk.fallbacks((b,), (), 70.0 - a.fail_fast_ms, 1)
    p_miss, cost = risk.cascade(a, c, 0.4, rest, 70.0)
    simulated = 1 - np.mean([simulate_cascade(a, c, 0.4, (b,), 70.0, rng)
                             for _ in range(TRIALS)])
    assert p_miss == pytest.approx(simulated, abs=0.01)
    assert cost == pytest.approx(1e-7 + 0.9 * 0.4 * 2e-6 + 0.1 * 1e-7)


def test_fallbacks_run_in_the_order_likeliest_to_answer_not_greedily() -> None:
    """Alone, b is likelier than c to answer in 40 ms; but c fails often and fast, which
    leaves b almost all the time, while b fails rarely and slowly: c then b answers more
    often. Ordering greedily by each one's chance alone let a longer deadline raise P_miss."""
    b = view("b", median=30.0, sigma=0.3, p_fail=0.05, fail_fast=8.0)
    c = cloud(median=25.0, sigma=0.4, p_fail=0.2, fail_fast=3.0)
    assert b.meet_alone(40.0) > c.meet_alone(40.0)
    rest = risk.fallbacks((b, c), (), 40.0, 2)
    assert rest.targets == (c, b)
    assert rest.meet == pytest.approx(c.meet_alone(40.0) + 0.2 * b.meet_alone(37.0))
    assert rest.meet > b.meet_alone(40.0) + 0.05 * c.meet_alone(32.0)
    rng = np.random.default_rng(3)
    simulated = np.mean([simulate_chain((c, b), 40.0, rng) for _ in range(TRIALS)])
    assert rest.meet == pytest.approx(simulated, abs=0.01)
    assert risk.fallbacks((b, c), (), 40.0, 1).targets == (b,), "one fallback: the likeliest"

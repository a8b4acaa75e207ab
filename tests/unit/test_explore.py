"""Exploration: a target whose estimates went stale (here: an edge worker that was ejected
while its neighbour learned) gets a small share of traffic back, relearns what the decision
prices, and wins the traffic it deserves; without it, it would stay unused for good."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from router.estimator import TargetEstimator
from router.explore import Explorer
from router.metrics import MemoryFactory, RouterMetrics
from router.policy import PolicyDocument, RoutingPolicy
from router.service import RoutingService
from router.targets import TargetSet
from router.tenancy import Caller
from router.view import TargetView
from tests.unit.fakes import FakeClock, FakeTransport, fake_target, run_async

X = np.zeros((1, 64), dtype=np.float32)
DEFAULT = Caller("anonymous", "default", PolicyDocument().policies["default"])


def service(explorer: Explorer, clock: FakeClock) -> RoutingService:
    """Two edge workers that answer confidently and the cloud, on one fake clock."""
    targets = TargetSet([
        fake_target(FakeTransport(name, confidence=0.99), tier=tier, quality=quality,
                    estimator=TargetEstimator(name=name, tier=tier, quality=quality,
                                              clock=clock))
        for name, tier, quality in (("edge-a", "edge", "small"), ("edge-b", "edge", "small"),
                                    ("cloud", "cloud", "large"))], clock=clock)
    svc = RoutingService(targets, metrics=RouterMetrics(MemoryFactory()), clock=clock)
    svc.explorer = explorer
    return svc


def served(svc: RoutingService, n: int, clock: FakeClock) -> list[str]:
    """``n`` requests, one every 50 ms."""
    async def main() -> list[str]:
        names = []
        for _ in range(n):
            clock.advance(0.05)
            routed = await svc.route(X, deadline_ms=200.0, received=clock(),
                                     quality="any", caller=DEFAULT)
            names.append(routed.served.target.name)
        return names

    return run_async(main)


def outage_then_recovery(svc: RoutingService, clock: FakeClock) -> None:
    """edge-a is ejected before it ever answered; edge-b serves and learns; edge-a returns."""
    breaker = svc.breakers["edge-a"]
    for _ in range(5):
        permit = breaker.acquire()
        assert permit is not None
        permit.failure("connection refused")
    breaker.probe_failed()
    assert Counter(served(svc, 60, clock))["edge-a"] == 0
    edge_a = svc.targets.targets["edge-a"]

    async def probe() -> bool:
        return await svc.targets.probe(edge_a)

    assert run_async(probe)
    assert breaker.state == "closed"


@pytest.mark.parametrize("explore", [False, True])
def test_a_target_stuck_at_its_prior_relearns_only_by_exploring(explore: bool) -> None:
    """edge-a was ejected before it ever answered (a worker that joined, or restarted, during
    an outage): its unsure-answer rate is the prior, which makes every cascade through it look
    dearer than one through edge-b. Without exploring it never gets the traffic that would
    correct that; exploring gives it a bounded share, and its rate moves to what it is."""
    clock = FakeClock()
    svc = service(Explorer(idle_s=0.5, max_share=0.1 if explore else 0.0, clock=clock), clock)
    outage_then_recovery(svc, clock)
    after = Counter(served(svc, 400, clock))
    edge_a = next(t for t in svc.snapshot()["targets"] if t["name"] == "edge-a")
    if not explore:
        assert after["edge-a"] == 0
        assert edge_a["unsure_rate"] == pytest.approx(0.3, abs=0.01)
        return
    assert after["edge-a"] >= 20, after
    assert edge_a["unsure_rate"] < 0.15, "confident answers: the rate falls from the prior"
    assert edge_a["traffic_share"] > 0
    assert svc.snapshot()["exploration"]["explored"] <= 0.1 * 200 + 1


def view(name: str, quality: str = "small", allowed: bool = True) -> TargetView:
    from router.distribution import Distribution

    return TargetView(name=name, tier="edge" if quality == "small" else "cloud",
                      quality=quality, allowed=allowed,  # type: ignore[arg-type]
                      latency=Distribution.point(5.0), p_fail=0.0, fail_fast_ms=1.0,
                      cost_usd=1e-8, ewma_latency_ms=5.0)


def test_explorations_stay_within_their_share_and_skip_what_may_not_be_used() -> None:
    clock = FakeClock()
    explorer = Explorer(idle_s=1.0, max_share=0.05, window_s=10.0, clock=clock)
    views = [view("edge-a"), view("edge-b"), view("edge-c", allowed=False), view("cloud", "large")]
    policy = RoutingPolicy()
    explored = []
    for _ in range(1000):
        clock.advance(0.01)
        explorer.called("edge-a")
        due = explorer.due(views, policy, "any", in_plan={"edge-a"}, skip={"cloud"})
        if due is not None:
            explorer.explored()
            explored.append(due.name)
    assert set(explored) == {"edge-b"}, "not the plan's, not ejected, not skipped"
    assert len(explored) <= 0.05 * 1000 + 1 * (1000 * 0.01 / 10.0) + 1
    assert len(explored) >= 5, "about one per idle second"
    clock.advance(5.0)
    assert explorer.due(views, policy, "high", in_plan={"cloud"}) is None, "quality=high"

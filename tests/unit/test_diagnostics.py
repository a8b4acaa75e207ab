"""What ``/v1/targets`` and the gauges say about a target is what the router acts on: a
worker answering every inference 503 is not called available, a held-down worker's breaker
gauge reads open, the last error carries its age and clears once the target answers, and the
unsure-answer rate and traffic share the decision works from are shown."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import pytest

from router.estimator import TargetEstimator
from router.metrics import MemoryFactory, RouterMetrics
from router.policy import RoutingPolicy
from router.served import NotServed
from router.service import RoutingService
from router.targets import TargetSet
from router.tenancy import Caller
from tests.unit.fakes import (
    FakeClock,
    FakeTransport,
    answer,
    fail_with,
    fake_target,
    overloaded,
    refused,
    run_async,
)

X = np.zeros((1, 64), dtype=np.float32)
DEFAULT = Caller("anonymous", "default", RoutingPolicy())


class Rig:
    """A routing service over an edge worker and the cloud on one fake clock."""

    def __init__(self, edge: FakeTransport) -> None:
        self.clock = FakeClock()
        self.edge, self.cloud = edge, FakeTransport("cloud")
        self.factory = MemoryFactory()
        self.targets = TargetSet(
            [fake_target(t, tier=tier, quality=quality,
                         estimator=TargetEstimator(name=t.name, tier=tier, quality=quality,
                                                   clock=self.clock))
             for t, tier, quality in ((edge, "edge", "small"), (self.cloud, "cloud", "large"))],
            clock=self.clock)
        self.service = RoutingService(self.targets, metrics=RouterMetrics(self.factory),
                                      clock=self.clock)

    def route(self, n: int = 1) -> None:
        async def main() -> None:
            for _ in range(n):
                with contextlib.suppress(NotServed):
                    await self.service.route(X, deadline_ms=500.0, received=self.clock(),
                                             quality="any", caller=DEFAULT)

        run_async(main)

    def probe(self) -> None:
        async def main() -> None:
            await self.targets.probe(self.targets.targets[self.edge.name])

        run_async(main)

    def view(self) -> dict[str, Any]:
        return next(t for t in self.service.snapshot()["targets"] if t["name"] == "edge-a")

    def gauge(self) -> float:
        self.service.publish_gauges()
        values = self.factory.instruments["edgeroute_target_breaker_open"].values
        return float(values[(("model", "digits"), ("target", "edge-a"))])


def test_the_last_error_has_an_age_and_clears_once_the_target_answers() -> None:
    clock = FakeClock()
    est = TargetEstimator(clock=clock)
    est.observe_failure("connection refused", 2.0)
    clock.advance(12.5)
    snapshot = est.snapshot()
    assert snapshot["last_error"] == "connection refused"
    assert snapshot["last_error_s_ago"] == pytest.approx(12.5)
    est.observe_probe(3.0)
    assert est.snapshot()["last_error"] == "connection refused", "a health check is no answer"
    est.observe_success(total_ms=5.0, server_ms=1.0, queue_ms=0.0, batch_rows=1)
    assert est.snapshot()["last_error"] is None
    assert est.snapshot()["last_error_s_ago"] is None


def test_a_worker_answering_every_inference_503_is_not_available() -> None:
    """Its health checks pass all along; it is shown unavailable from its first 503 through
    every ejection and trial, and available again, error cleared, once it answers."""
    rig = Rig(FakeTransport("edge-a", fail_with(overloaded())))
    assert rig.view()["available"]
    rig.route(10)
    assert rig.edge.calls >= 1
    seen = []
    for _ in range(12):
        rig.clock.advance(1.0)
        rig.probe()
        view = rig.view()
        seen.append(view["available"])
        assert view["estimates"]["available"] == view["available"]
        assert "HTTP 503" in view["estimates"]["last_error"]
        assert view["estimates"]["last_error_at"].endswith("+00:00")
    assert not any(seen), seen
    rig.edge.behaviour = answer
    for _ in range(20):
        rig.clock.advance(1.0)
        rig.probe()
        if rig.view()["breaker"]["state"] == "closed":
            break
    view = rig.view()
    assert view["breaker"]["state"] == "closed" and view["available"]
    assert view["estimates"]["last_error"] is None
    assert view["estimates"]["last_error_at"] is None


def test_the_breaker_gauge_reads_open_while_a_worker_is_held_down() -> None:
    rig = Rig(FakeTransport("edge-a", fail_with(refused)))
    rig.route(10)
    rig.edge.probe_error = refused("edge-a")
    for _ in range(30):
        rig.clock.advance(1.0)
        rig.probe()
        view = rig.view()
        assert view["breaker"]["state"] == "open" and view["breaker"]["down"]
        assert rig.gauge() == 1.0
        assert not view["available"]
    rig.edge.probe_error = None
    rig.edge.behaviour = answer
    rig.clock.advance(1.0)
    rig.probe()
    assert rig.view()["breaker"]["state"] == "closed", "back within one probe of its return"
    assert rig.gauge() == 0.0
    assert rig.view()["available"]
    predicted = rig.factory.instruments["edgeroute_target_predicted_latency_ms"].values
    assert (("model", "digits"), ("target", "edge-a")) in predicted


def test_the_unsure_answer_rate_and_the_traffic_share_are_shown() -> None:
    rig = Rig(FakeTransport("edge-a", confidence=0.5))
    rig.route(40)
    edge = rig.view()
    cloud = next(t for t in rig.service.snapshot()["targets"] if t["name"] == "cloud")
    assert edge["unsure_rate"] > 0.3, "answers at 0.5 are below the 0.9 threshold"
    assert cloud["unsure_rate"] is None, "a large model's answers are not escalated"
    assert edge["traffic_share"] + cloud["traffic_share"] == pytest.approx(1.0)
    assert edge["traffic_share"] > 0
    rig.clock.advance(30.0)
    assert rig.view()["traffic_share"] == 0.0, "the share is of recent traffic"

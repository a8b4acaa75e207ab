"""The status page's feed: the recent past of a router replica, on a fake clock."""

from __future__ import annotations

import re
import time

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from edgeroute.models.catalog import ServedModel
from edgeroute.signature import Signature
from router.activity import EXPLAINED, Activity
from router.estimator import TargetEstimator
from router.metrics import MemoryFactory, RouterMetrics
from router.models import ModelServices
from router.plan import CandidateRow, Decision, Plan
from router.policy import RoutingPolicy
from router.served import NotServed
from router.service import RoutingService
from router.targets import TargetSet
from router.tenancy import Caller
from router.ui import PAGE, StatusPage
from tests.unit.fakes import FakeClock, FakeTransport, fail_with, fake_target, refused, run_async

DECISION = Decision(
    Plan("single", "edge-a", fallbacks=("cloud",), p_miss=0.001, predicted_p50_ms=9.0),
    reason="cheapest within risk budget", policy="default",
    candidates=[CandidateRow("edge-a, then cloud", 9.0, 20.0, 0.001, 1e-7, "chosen")])


def served(activity: Activity, target: str = "edge-a", tier: str = "edge",
           latency_ms: float = 10.0, deadline_ms: float = 100.0,
           upstream_ms: float = 8.0) -> None:
    activity.served(latency_ms=latency_ms, deadline_ms=deadline_ms, target=target, tier=tier,
                    decision=DECISION, cost_usd=1e-7, upstream_ms=upstream_ms)


def test_placements_fall_into_time_buckets_and_old_ones_leave_the_window() -> None:
    clock = FakeClock(1000.0)
    activity = Activity(bucket_s=10, buckets=3, clock=clock)
    served(activity, "edge-a")
    clock.advance(10)
    served(activity, "cloud", "cloud")
    served(activity, "cloud", "cloud")
    summary = activity.summary()
    assert [b["placements"] for b in summary["buckets"]] == [
        {}, {"edge-a": 1}, {"cloud": 2}]
    assert summary["totals"]["tiers"] == {"cloud": 2, "edge": 1}
    clock.advance(35)  # nothing since: both buckets are now older than 30 s
    summary = activity.summary()
    assert len(summary["buckets"]) == 3
    assert summary["totals"]["placements"] == {}
    assert summary["recent"] == []


def test_slo_attainment_counts_late_answers_and_failures_as_missed() -> None:
    clock = FakeClock()
    activity = Activity(clock=clock)
    served(activity, latency_ms=50, deadline_ms=100)
    served(activity, latency_ms=150, deadline_ms=100)
    activity.failed(status=503, latency_ms=1, deadline_ms=100, error="shed", shed=True)
    activity.failed(status=504, latency_ms=101, deadline_ms=100, error="deadline passed")
    totals = activity.summary()["totals"]
    assert totals["requests"] == 4
    assert totals["within_deadline"] == 1
    assert totals["slo_attainment"] == 0.25
    assert (totals["failed"], totals["shed"]) == (2, 1)


def test_an_empty_window_reports_no_attainment_rather_than_zero() -> None:
    summary = Activity(clock=FakeClock()).summary()
    assert summary["totals"]["slo_attainment"] is None
    assert all(b["slo_attainment"] is None for b in summary["buckets"])


def test_recent_outcomes_are_bounded_newest_first_and_the_newest_explained() -> None:
    clock = FakeClock()
    activity = Activity(recent=EXPLAINED + 4, clock=clock)
    for i in range(50):
        served(activity, latency_ms=float(i))
        clock.advance(0.1)
    recent = activity.summary()["recent"]
    assert len(recent) == EXPLAINED + 4
    assert [r["latency_ms"] for r in recent[:2]] == [49.0, 48.0]
    assert all("explanation" in r for r in recent[:EXPLAINED])
    assert not any("explanation" in r for r in recent[EXPLAINED:])
    assert recent[0]["plan"] == "edge-a, then cloud"
    assert recent[0]["explanation"]["candidates"][0]["verdict"] == "chosen"
    assert recent[0]["reason"] == "cheapest within risk budget"


def test_observed_quantiles_per_target_come_from_upstream_times_in_the_window() -> None:
    clock = FakeClock()
    activity = Activity(bucket_s=10, buckets=6, clock=clock)
    served(activity, "edge-a", upstream_ms=500.0)  # leaves the window below
    clock.advance(61)
    for ms in range(1, 101):
        served(activity, "edge-a", upstream_ms=float(ms))
    served(activity, "cloud", "cloud", upstream_ms=40.0)
    observed = activity.summary()["observed"]
    assert observed["edge-a"] == {"count": 100, "p50_ms": 50.0, "p99_ms": 99.0}
    assert observed["cloud"]["p50_ms"] == 40.0


def test_bad_sizes_fail_at_construction() -> None:
    with pytest.raises(ValueError):
        Activity(bucket_s=0)


def caller() -> Caller:
    return Caller("anonymous", "default", RoutingPolicy())


def edge_service(edge: FakeTransport) -> RoutingService:
    targets = TargetSet([fake_target(edge, tier="edge", quality="small", estimator=TargetEstimator(
        name=edge.name, tier="edge", quality="small"))])
    return RoutingService(targets, metrics=RouterMetrics(MemoryFactory()))


def test_the_routing_service_records_what_it_served_and_what_it_could_not() -> None:
    edge = FakeTransport("edge-a")
    svc = edge_service(edge)
    x = np.zeros((1, 64), dtype=np.float32)

    async def one() -> None:
        await svc.route(x, deadline_ms=500.0, received=time.monotonic(), quality="any",
                        caller=caller())

    run_async(one)
    edge.behaviour = fail_with(refused)
    with pytest.raises(NotServed):
        run_async(one)
    summary = svc.activity.summary()
    assert summary["totals"]["placements"] == {"edge-a": 1}
    assert [r["status"] for r in summary["recent"]] == [503, 200]
    assert summary["recent"][1]["within_deadline"]
    assert summary["observed"]["edge-a"]["count"] == 1


def test_the_status_page_is_self_contained() -> None:
    """Nothing here reaches the internet: no script, style, font or image from elsewhere."""
    html = PAGE.read_text()
    assert not re.search(r"<(script|link|img|iframe)[^>]*\b(src|href)=", html)
    assert not re.search(r"url\(|@import|https?://(?!www\.w3\.org/2000/svg)", html)
    for element in ('id="placement-chart"', 'id="slo-chart"', 'id="targets"', 'id="recent"'):
        assert element in html


class _Replica(StatusPage):
    def __init__(self, service: RoutingService, models: ModelServices | None = None) -> None:
        self.service = service
        self.models = models or ModelServices.digits_only(service)
        self.admin_token = "s3cret"
        self.replica = "r1"


def test_the_status_routes_answer_the_page_and_guard_the_summary() -> None:
    """The routes in-process, bound to one replica as Serve binds them."""
    svc = edge_service(FakeTransport("edge-a"))
    replica = _Replica(svc)
    app = FastAPI()  # (Serve moves the routes off ``router.ui.routes`` when it binds them)
    for path, endpoint in [("/", replica.root), ("/ui", replica.status_page),
                           ("/v1/metrics/summary", replica.metrics_summary)]:
        app.add_api_route(path, endpoint)

    async def main() -> list[httpx.Response]:
        await svc.route(np.zeros((1, 64), dtype=np.float32), deadline_ms=500.0,
                        received=time.monotonic(), quality="any", caller=caller())
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://router") as client:
            return [await client.get("/"), await client.get("/ui"),
                    await client.get("/v1/metrics/summary"),
                    await client.get("/v1/metrics/summary",
                                     headers={"authorization": "Bearer s3cret"})]

    root, page, refused, summary = run_async(main)
    assert root.status_code == 307 and root.headers["location"] == "ui"
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert refused.status_code == 401
    body = summary.json()
    assert body["replica"] == "r1"
    assert body["totals"]["placements"] == {"edge-a": 1}


def test_the_summary_shows_every_models_window() -> None:
    digits, wine = edge_service(FakeTransport("edge-a")), edge_service(FakeTransport("edge-w"))
    sensor = ServedModel("wine", Signature("wine", (), ()), None, None, None, None)
    replica = _Replica(digits, ModelServices([(ModelServices.digits_only(digits).first.model,
                                               digits), (sensor, wine)]))
    app = FastAPI()
    app.add_api_route("/v1/metrics/summary", replica.metrics_summary)

    async def main() -> httpx.Response:
        for _ in range(2):
            await wine.route(np.zeros((1, 64), dtype=np.float32), deadline_ms=500.0,
                             received=time.monotonic(), quality="any", caller=caller())
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://router") as client:
            return await client.get("/v1/metrics/summary",
                                    headers={"authorization": "Bearer s3cret"})

    body = run_async(main).json()
    assert body["model"] == "digits" and body["totals"]["requests"] == 0
    assert set(body["models"]) == {"digits", "wine"}
    assert body["models"]["wine"]["totals"]["placements"] == {"edge-w": 2}
    assert body["models"]["digits"]["totals"]["requests"] == 0


def test_a_counter_given_nothing_to_add_is_left_as_is() -> None:
    """Ray's counters refuse a non-positive increment; a free answer (zero cost, a price
    book at zero) must not make the request fail on its metrics."""
    from router.metrics import _RayInstrument

    class RayCounter:
        def __init__(self) -> None:
            self.total = 0.0

        def inc(self, value: float, tags: dict[str, str]) -> None:
            if value <= 0:
                raise ValueError(f"value must be >0, got {value}")
            self.total += value

    counter = RayCounter()
    instrument = _RayInstrument(counter, "inc")
    instrument.record(0.0, {})
    instrument.record(2.5, {})
    assert counter.total == 2.5

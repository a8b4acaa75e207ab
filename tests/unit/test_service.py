"""The routing service without Ray or HTTP: decide, execute, account, over fake targets."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from edgeroute.config import Quality, Tier
from router.decision import RequestQuality
from router.estimator import TargetEstimator
from router.metrics import NO_TIER, MemoryFactory, RouterMetrics
from router.policy import PolicyDocument, RoutingPolicy
from router.served import NotServed, Shed
from router.service import Rejected, Routed, RoutingService
from router.targets import TargetSet
from router.tenancy import Caller
from tests.unit.fakes import FakeTransport, fail_with, fake_target, refused, run_async

X = np.zeros((1, 64), dtype=np.float32)
DEFAULT = Caller("anonymous", "default", RoutingPolicy())
ALWAYS_EDGE = Caller("anonymous", "always-edge", RoutingPolicy(strategy="always-edge"))


def service(
    *transports: tuple[FakeTransport, Tier, Quality],
) -> tuple[RoutingService, MemoryFactory]:
    targets = TargetSet([
        fake_target(t, tier=tier, quality=quality,
                    estimator=TargetEstimator(name=t.name, tier=tier, quality=quality))
        for t, tier, quality in transports
    ])
    factory = MemoryFactory()
    return RoutingService(targets, metrics=RouterMetrics(factory)), factory


def route(svc: RoutingService, quality: RequestQuality = "any",
          caller: Caller = DEFAULT) -> Routed:
    async def main() -> Routed:
        return await svc.route(X, deadline_ms=500.0, received=time.monotonic(),
                               quality=quality, caller=caller)

    return run_async(main)


def test_a_request_is_served_priced_and_counted() -> None:
    svc, factory = service((FakeTransport("edge-a"), "edge", "small"),
                           (FakeTransport("cloud"), "cloud", "large"))
    routed = route(svc)
    params = routed.parameters(DEFAULT, 500.0, explain=True)
    # Both answer at once; the edge is far cheaper and its answers are confident.
    assert (params["target"], params["tier"], params["escalated"]) == ("edge-a", "edge", False)
    assert params["cost_usd"] > 0
    assert params["explanation"]["candidates"]
    assert factory.instruments["edgeroute_placements_total"].total() == 1
    assert factory.instruments["edgeroute_attempts_total"].total(outcome="success") >= 1
    assert factory.instruments["edgeroute_decision_us"].total() == 1
    assert svc.ledger.snapshot()["total"]["requests"] == 1


def test_quality_high_without_a_large_model_is_rejected_with_the_reason() -> None:
    svc, _ = service((FakeTransport("edge-a"), "edge", "small"))
    with pytest.raises(Rejected, match="quality"):
        route(svc, quality="high")


def test_a_failing_target_falls_back_and_its_breaker_hears_of_it() -> None:
    broken = FakeTransport("edge-a", fail_with(refused))
    svc, factory = service((broken, "edge", "small"), (FakeTransport("edge-b"), "edge", "small"))
    served = [route(svc).served.target.name for _ in range(8)]
    assert set(served) == {"edge-b"}
    assert factory.instruments["edgeroute_attempts_total"].total(target="edge-a") >= 1
    assert svc.snapshot()["targets"][0]["breaker"]["consecutive_failures"] >= 1


def test_everything_failing_is_not_served_fast() -> None:
    svc, _ = service((FakeTransport("edge-a", fail_with(refused)), "edge", "small"))
    with pytest.raises(NotServed) as failure:
        route(svc)
    assert not failure.value.deadline_passed and failure.value.retry_after_s >= 1 - 1e-9


def test_a_new_policy_takes_effect_and_keeps_what_was_learned() -> None:
    svc, _ = service((FakeTransport("edge-a"), "edge", "small"),
                     (FakeTransport("cloud"), "cloud", "large"))
    route(svc)
    learned = svc.targets.get("edge-a").estimator.successes  # type: ignore[union-attr]
    document = PolicyDocument.model_validate(
        {"policies": {"default": {}, "always-cloud": {"strategy": "always-cloud"}}})
    svc.apply_policy(document)
    caller = Caller("anonymous", "always-cloud", document.policies["always-cloud"])
    assert route(svc, caller=caller).served.target.name == "cloud"
    assert svc.targets.get("edge-a").estimator.successes == learned  # type: ignore[union-attr]


def test_the_prober_makes_the_trial_call_that_closes_a_restarted_targets_breaker() -> None:
    from router.breaker import Breakers
    from router.policy import BreakerSettings

    backup = FakeTransport("edge-b")
    targets = TargetSet([fake_target(backup)])
    breakers = Breakers(BreakerSettings())
    targets.breakers = breakers
    breaker = breakers["edge-b"]
    for _ in range(5):
        permit = breaker.acquire()
        assert permit is not None
        permit.failure("connection refused")
    breaker.probe_failed()  # down: killed or restarting
    assert breaker.state == "open"

    async def main() -> bool:
        return await targets.probe(targets.targets["edge-b"])

    assert run_async(main)
    assert breaker.state == "closed", "a target only ever used as fallback stayed half-open"
    assert backup.calls == 1


def test_a_target_that_leaves_and_joins_again_starts_with_a_closed_breaker() -> None:
    """A fleet worker that expired (or changed its document) and joins again is a new worker:
    fresh estimates come with its new target, and its old breaker state is forgotten."""
    svc, _ = service((FakeTransport("edge-a", fail_with(refused)), "edge", "small"),
                     (FakeTransport("cloud"), "cloud", "large"))
    for _ in range(30):
        route(svc)
    assert svc.breakers["edge-a"].snapshot()["state"] == "open"
    svc.remove_target("edge-a")
    svc.add_target(fake_target(FakeTransport("edge-a"), tier="edge", quality="small",
                               estimator=TargetEstimator(name="edge-a")))
    assert svc.breakers["edge-a"].snapshot()["state"] == "closed"
    assert svc.breakers["edge-a"].snapshot()["ejections"] == 0
    assert route(svc, caller=ALWAYS_EDGE).served.target.name == "edge-a"


def test_a_drained_target_gets_no_new_request_until_undrained() -> None:
    svc, _ = service((FakeTransport("edge-a"), "edge", "small"),
                     (FakeTransport("edge-b"), "edge", "small"))
    svc.drain("edge-a")
    served = {route(svc).served.target.name for _ in range(20)}
    assert served == {"edge-b"}
    view = {t["name"]: t for t in svc.snapshot()["targets"]}
    assert view["edge-a"]["drained"] is True and view["edge-b"]["drained"] is False
    svc.drain("edge-b")
    with pytest.raises(Rejected):
        route(svc)
    svc.drain("edge-a", drained=False)
    assert route(svc).served.target.name == "edge-a"


def test_reset_forgets_estimates_and_breaker_history() -> None:
    svc, _ = service((FakeTransport("edge-a"), "edge", "small"),
                     (FakeTransport("edge-b"), "edge", "small"))
    for _ in range(10):
        route(svc)
    learned = svc.targets.get("edge-a")
    assert learned is not None
    before = learned.estimator
    assert before.snapshot()["successes"] + svc.targets.get("edge-b").estimator.snapshot()[
        "successes"] == 10
    fresh = TargetEstimator(name="edge-a", tier="edge", quality="small")
    svc.reset("edge-a", fresh)
    assert learned.estimator is fresh and fresh.snapshot()["successes"] == 0
    assert svc.breakers["edge-a"].state == "closed"
    with pytest.raises(KeyError):
        svc.reset("nowhere", fresh)
    with pytest.raises(KeyError):
        svc.drain("nowhere")


def tallied(svc: RoutingService, quality: RequestQuality, caller: Caller = DEFAULT) -> None:
    """One request accounted as the ingress accounts it: the tier once served, the status
    of a refusal."""

    async def main() -> None:
        with svc.metrics.tally(time.monotonic()) as tally:
            tally.policy = caller.policy_name
            try:
                routed = await svc.route(X, deadline_ms=500.0, received=time.monotonic(),
                                         quality=quality, caller=caller)
                tally.tier = routed.served.target.tier
            except Rejected:
                tally.status = 503

    run_async(main)


def test_request_metrics_carry_the_tier_that_answered() -> None:
    svc, factory = service((FakeTransport("edge-a"), "edge", "small"),
                           (FakeTransport("cloud"), "cloud", "large"))
    tallied(svc, "any", ALWAYS_EDGE)
    tallied(svc, "high")
    tallied(svc, "high", ALWAYS_EDGE)  # no edge target may serve quality=high
    latency = factory.instruments["edgeroute_request_latency_ms"]
    assert latency.total(tier="edge", policy="always-edge") == 1
    assert latency.total(tier="cloud", policy="default") == 1
    assert latency.total(tier=NO_TIER) == 1
    requests = factory.instruments["edgeroute_requests_total"]
    assert requests.total(tier=NO_TIER, status="503") == 1
    assert requests.total(status="200") == 2


def test_a_request_that_raises_is_counted_as_a_server_error() -> None:
    svc, factory = service((FakeTransport("edge-a"), "edge", "small"))
    with pytest.raises(RuntimeError), svc.metrics.tally(time.monotonic()):
        raise RuntimeError("a bug")
    assert factory.instruments["edgeroute_requests_total"].total(status="500",
                                                                 tier=NO_TIER) == 1


def test_the_predicted_latency_gauge_shows_what_the_decision_read() -> None:
    svc, factory = service((FakeTransport("edge-a"), "edge", "small"),
                           (FakeTransport("cloud"), "cloud", "large"))
    route(svc)
    svc.publish_gauges()  # the prober does this once per probe interval
    gauge = factory.instruments["edgeroute_target_predicted_latency_ms"]
    priors = {name: t.estimator.latency.distribution(1, False).quantile(0.5)
              for name, t in svc.targets.targets.items()}
    assert {dict(k)["target"]: v for k, v in gauge.values.items()} == pytest.approx(priors)
    assert {dict(k)["model"] for k in gauge.values} == {"digits"}


def test_the_targets_table_shows_what_the_decision_reads() -> None:
    from rich.console import Console

    from edgeroute.tools.tables import targets_table

    svc, _ = service((FakeTransport("edge-a"), "edge", "small"))
    route(svc)
    console = Console(record=True, width=200)
    console.print(targets_table(svc.snapshot()["targets"]))
    shown = console.export_text()
    p50 = svc.targets.targets["edge-a"].estimator.distribution().quantile(0.5)
    assert f"{p50:.1f}" in shown and "closed" in shown
    assert "cooling" not in shown


def test_a_request_the_router_cannot_start_in_time_is_shed_before_any_call() -> None:
    """The router's loop is running 300 ms late: a 500 ms request would need that long to
    send its call and as long again to read the answer. It is refused at once with 503
    and Retry-After (a ``late`` shed), no target is called, and once the loop runs on time
    again the next request is served; /v1/targets shows the counts."""
    edge = FakeTransport("edge-a")
    svc, _ = service((edge, "edge", "small"))
    svc.lag.arm()
    time.sleep(0.3)
    with pytest.raises(Shed) as shed:
        route(svc)
    assert shed.value.scope == "late" and shed.value.retry_after_s > 0
    assert edge.calls == 0
    svc.lag.woke()
    svc.lag.arm()
    svc.lag.woke()
    assert route(svc).served.target.name == "edge-a"
    admission = svc.snapshot()["executor"]["admission"]
    assert (admission["shed_late"], admission["admitted"], admission["waiting_to_start"]) == (
        1, 1, 0)


def test_a_removed_target_is_forgotten_drain_included() -> None:
    import json
    from types import SimpleNamespace

    from router.admin import remove_target
    from router.models import ModelServices

    svc, _ = service((FakeTransport("edge-a"), "edge", "small"),
                     (FakeTransport("edge-b"), "edge", "small"),
                     (FakeTransport("cloud"), "cloud", "large"))
    models = ModelServices.digits_only(svc)
    sync: Any = SimpleNamespace(members={}, retired=[])
    svc.drain("edge-a")
    answer = remove_target(models, [sync], "edge-a", cloud="cloud", replica="r1")
    assert answer.status_code == 200 and [t.name for t in sync.retired] == ["edge-a"]
    assert json.loads(bytes(answer.body)) == {"target": "edge-a", "removed": True,
                                              "replica": "r1"}
    assert "edge-a" not in svc.drained and svc.targets.get("edge-a") is None
    assert {route(svc).served.target.name for _ in range(10)} <= {"edge-b", "cloud"}
    for name, members, status in (("edge-a", {}, 404), ("cloud", {}, 409),
                                  ("edge-b", {"edge-b": None}, 409)):
        sync.members = members
        refused = remove_target(models, [sync], name, cloud="cloud", replica="r1")
        assert refused.status_code == status, name
    assert len(sync.retired) == 1
    assert svc.targets.get("edge-b") is not None and svc.targets.get("cloud") is not None


def test_the_deadline_a_plan_gets_leaves_the_replicas_time_to_send_the_answer() -> None:
    """What the front door learned the replica takes to send an answer once it has one is
    reserved out of the deadline before the decision and the calls see it."""
    svc, _ = service((FakeTransport("edge-a"), "edge", "small"))
    svc.finish_ms = lambda: 30.0
    planned: list[float] = []
    decide = svc.decide

    def spy(rows: int, deadline_ms: float, quality: RequestQuality,
            caller: Caller) -> tuple[Any, float]:
        planned.append(deadline_ms)
        return decide(rows, deadline_ms, quality, caller)

    svc.decide = spy  # type: ignore[method-assign]
    route(svc)
    assert len(planned) == 1 and 465.0 < planned[0] <= 470.0

"""Hedged and cascaded plans, and a client that goes away: the loser of a hedge is cancelled
down to its transport, a confident answer is not escalated, and a cancelled request leaves
no task, slot or probe behind."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from router.executor import Executor, Served
from router.plan import Plan
from router.policy import RetrySettings
from router.targets import Target
from tests.unit.fakes import (
    FakeTransport,
    after,
    answer,
    executor_for,
    fail_with,
    fake_of,
    fake_target,
    hang,
    plan_of,
    refused,
    run_async,
)

X = np.zeros((2, 64), dtype=np.float32)


def run(executor: Executor, plan: Plan, deadline_s: float = 1.0) -> tuple[Served, float]:
    async def main() -> Served:
        return await executor.run(plan, X, time.monotonic() + deadline_s)

    started = time.monotonic()
    served = run_async(main)
    return served, time.monotonic() - started


def pair(primary: FakeTransport, hedge: FakeTransport) -> tuple[Target, Target]:
    return fake_target(primary), fake_target(hedge, tier="cloud", quality="large")


def test_a_hanging_primary_is_served_by_the_hedge_and_cancelled() -> None:
    edge, cloud = pair(FakeTransport("edge-a", hang), FakeTransport("cloud", label=4))
    executor = executor_for(edge, cloud)
    served, elapsed = run(executor, plan_of("edge-a", hedge="cloud", hedge_delay_ms=20))
    assert served.target is cloud
    assert served.reply.output("label").tolist() == [4, 4]
    assert served.hedged and served.hedge_won
    assert not served.fallback
    assert served.attempts == 2
    assert 0.02 <= elapsed < 0.3, "answered soon after the hedge delay, not at the deadline"
    assert fake_of(edge).cancelled == 1, "the cancellation reached the primary's transport"
    assert fake_of(edge).in_progress == 0
    assert edge.estimator.in_flight == 0
    assert executor.breakers["edge-a"].snapshot()["window_slow"] == 1, \
        "abandoned after 4x its predicted time: a slow call"


def test_the_hedge_is_not_launched_when_the_primary_answers_first() -> None:
    edge, cloud = pair(FakeTransport("edge-a", after(0.01, answer)), FakeTransport("cloud"))
    served, elapsed = run(executor_for(edge, cloud),
                          plan_of("edge-a", hedge="cloud", hedge_delay_ms=200))
    assert served.target is edge
    assert not served.hedged and not served.hedge_won
    assert served.attempts == 1
    assert fake_of(cloud).calls == 0
    assert elapsed < 0.15


def test_when_the_primary_wins_the_race_the_hedge_is_cancelled() -> None:
    edge, cloud = pair(FakeTransport("edge-a", after(0.05, answer)), FakeTransport("cloud", hang))
    served, _ = run(executor_for(edge, cloud), plan_of("edge-a", hedge="cloud", hedge_delay_ms=10))
    assert served.target is edge
    assert served.hedged and not served.hedge_won
    assert fake_of(cloud).cancelled == 1


def test_a_primary_failing_before_the_delay_hands_over_to_the_hedge_target_at_once() -> None:
    edge, cloud = pair(FakeTransport("edge-a", fail_with(refused)), FakeTransport("cloud"))
    served, elapsed = run(executor_for(edge, cloud),
                          plan_of("edge-a", hedge="cloud", hedge_delay_ms=200))
    assert served.target is cloud
    assert served.fallback and not served.hedged
    assert elapsed < 0.1


def test_a_failed_hedge_leaves_the_primary_to_answer() -> None:
    edge, cloud = pair(FakeTransport("edge-a", after(0.05, answer)),
                       FakeTransport("cloud", fail_with(refused)))
    served, _ = run(executor_for(edge, cloud), plan_of("edge-a", hedge="cloud", hedge_delay_ms=5))
    assert served.target is edge
    assert served.hedged and not served.hedge_won
    assert served.errors == ("cloud: connection refused",)


def test_no_hedge_once_the_retry_budget_is_spent() -> None:
    edge, cloud = pair(FakeTransport("edge-a", after(0.05, answer)), FakeTransport("cloud"))
    executor = executor_for(edge, cloud, retry=RetrySettings(budget_ratio=0, budget_min_per_s=0))
    served, _ = run(executor, plan_of("edge-a", hedge="cloud", hedge_delay_ms=5))
    assert served.target is edge
    assert not served.hedged
    assert fake_of(cloud).calls == 0


def cascade(edge_confidence: float, cloud: FakeTransport | None = None,
            deadline_s: float = 1.0, expected_ms: float = 5.0) -> tuple[Served, FakeTransport]:
    edge, big = pair(FakeTransport("edge-a", label=1, confidence=edge_confidence),
                     cloud or FakeTransport("cloud", label=8))
    plan = plan_of("edge-a", escalate_to="cloud", confidence_threshold=0.9,
                   upper_ms=expected_ms)
    served, _ = run(executor_for(edge, big), plan, deadline_s)
    return served, fake_of(big)


def test_an_unsure_small_model_escalates_to_the_large_one() -> None:
    served, cloud = cascade(edge_confidence=0.6)
    assert served.escalated
    assert served.target.name == "cloud"
    assert served.reply.output("label").tolist() == [8, 8]
    assert served.attempts == 2
    assert not served.fallback
    assert cloud.calls == 1


def test_a_confident_answer_is_not_escalated() -> None:
    served, cloud = cascade(edge_confidence=0.95)
    assert not served.escalated
    assert served.target.name == "edge-a"
    assert cloud.calls == 0


def test_no_escalation_without_the_time_the_large_model_needs() -> None:
    served, cloud = cascade(edge_confidence=0.6, deadline_s=0.05, expected_ms=80.0)
    assert not served.escalated
    assert served.target.name == "edge-a"
    assert cloud.calls == 0


def test_a_failed_escalation_returns_the_small_models_answer() -> None:
    served, cloud = cascade(edge_confidence=0.6, cloud=FakeTransport("cloud", fail_with(refused)))
    assert not served.escalated
    assert served.target.name == "edge-a"
    assert served.reply.output("label").tolist() == [1, 1]
    assert cloud.calls == 1
    assert "cloud: connection refused" in served.errors


def test_a_client_going_away_cancels_every_call_and_leaks_nothing() -> None:
    edge, cloud = pair(FakeTransport("edge-a", hang), FakeTransport("cloud", hang))
    executor = executor_for(edge, cloud)

    async def main() -> None:
        baseline = asyncio.all_tasks()
        request = asyncio.create_task(executor.run(
            plan_of("edge-a", hedge="cloud", hedge_delay_ms=5), X, time.monotonic() + 5.0))
        await asyncio.sleep(0.05)
        assert fake_of(cloud).in_progress == 1, "the hedge is in flight"
        request.cancel()
        done, _ = await asyncio.wait({request}, timeout=0.1)
        assert done and request.cancelled()
        assert asyncio.all_tasks() == baseline

    run_async(main)
    for target in (edge, cloud):
        transport = fake_of(target)
        assert (transport.cancelled, transport.in_progress) == (1, 0)
        assert target.estimator.in_flight == 0
        assert executor.breakers[target.name].snapshot()["probes_in_flight"] == 0
    assert executor.limits.snapshot()["in_flight"] == 0
    assert executor.limits.snapshot()["per_target"] == {"edge-a": 0, "cloud": 0}


def test_a_client_going_away_during_a_retry_wait_releases_the_reserved_target() -> None:
    pause = asyncio.Event()

    async def wait_forever(seconds: float) -> None:
        pause.set()
        await asyncio.Event().wait()

    edge = fake_target(FakeTransport("edge-a", fail_with(refused)))
    executor = executor_for(edge, sleep=wait_forever)

    async def main() -> None:
        request = asyncio.create_task(executor.run(plan_of("edge-a"), X, time.monotonic() + 5))
        await pause.wait()
        assert executor.limits.snapshot()["per_target"] == {"edge-a": 1}, "reserved for retry"
        request.cancel()
        await asyncio.wait({request})

    run_async(main)
    assert executor.limits.snapshot()["per_target"] == {"edge-a": 0}
    assert executor.breakers["edge-a"].snapshot()["probes_in_flight"] == 0
    assert executor.limits.in_flight == 0

"""Running a plan over fake transports: the primary, one fallback, every attempt bounded by
the deadline left, and which failures cool a target down.

Deadlines are real but short (50-300 ms); elapsed-time bounds are generous.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from edgeroute.config import LinkProfile
from router.estimator import TargetEstimator
from router.executor import Executor, NotServed, Served
from router.placement import Plan
from router.targets import Target, TargetSet
from router.transport import TargetRejected, TargetTimeout, TargetUnavailable
from tests.unit.fakes import (
    FakeTransport,
    after,
    answer,
    fail_with,
    fake_of,
    fake_target,
    hang,
    run_async,
)

X = np.zeros((3, 64), dtype=np.float32)
SLACK_S = 1.0
"""Generous bound on scheduling overhead past a deadline."""


def refused(name: str) -> TargetUnavailable:
    return TargetUnavailable(name, "connection refused")


def overloaded(name: str) -> TargetUnavailable:
    return TargetUnavailable(name, "HTTP 503", retry_after_s=3.0)


def timed_out(name: str) -> TargetTimeout:
    return TargetTimeout(name, "server gave up")


def rejected(name: str) -> TargetRejected:
    return TargetRejected(name, "HTTP 400")


def observed_fast() -> TargetEstimator:
    """An estimator that has seen the target answer in about a millisecond."""
    estimator = TargetEstimator()
    estimator.observe_success(total_ms=1.0, server_ms=0.5, queue_ms=0.0, batch_rows=1)
    return estimator


def setup(*targets: Target) -> tuple[Executor, Plan]:
    executor = Executor(TargetSet(targets))
    plan = Plan(tuple(t.candidate(len(X)) for t in targets), "test plan")
    return executor, plan


def run(executor: Executor, plan: Plan, deadline_s: float) -> tuple[Served, float]:
    async def main() -> Served:
        return await executor.run(plan, X, time.monotonic() + deadline_s)

    started = time.monotonic()
    served = run_async(main)
    return served, time.monotonic() - started


def run_failing(executor: Executor, plan: Plan, deadline_s: float) -> tuple[NotServed, float]:
    started = time.monotonic()
    with pytest.raises(NotServed) as caught:
        run(executor, plan, deadline_s)
    return caught.value, time.monotonic() - started


def test_a_healthy_primary_serves_in_one_attempt() -> None:
    primary = fake_target(FakeTransport("edge-a", answer, label=3))
    fallback = fake_target(FakeTransport("cloud"), quality="large", tier="cloud")
    executor, plan = setup(primary, fallback)
    served, _ = run(executor, plan, deadline_s=1.0)
    assert served.target is primary
    assert served.attempts == 1
    assert not served.fallback
    assert served.errors == ()
    assert served.reply.labels.tolist() == [3, 3, 3]
    assert served.upstream_ms >= 0
    assert fake_of(fallback).calls == 0
    assert primary.estimator.successes == 1
    assert primary.estimator.predict().observed
    assert primary.estimator.in_flight == 0


def test_an_unavailable_primary_hands_over_to_the_fallback() -> None:
    primary = fake_target(FakeTransport("edge-a", fail_with(refused)))
    fallback = fake_target(FakeTransport("cloud", label=5), quality="large", tier="cloud")
    executor, plan = setup(primary, fallback)
    served, _ = run(executor, plan, deadline_s=1.0)
    assert served.target is fallback
    assert served.attempts == 2
    assert served.fallback
    assert served.reply.labels.tolist() == [5, 5, 5]
    assert len(served.errors) == 1
    assert "connection refused" in served.errors[0]
    assert not primary.estimator.available, "the failed primary cools down"
    assert primary.estimator.last_error == "connection refused"
    assert fallback.estimator.available
    assert fallback.estimator.successes == 1


def test_a_hanging_primary_is_cut_at_the_deadline() -> None:
    primary = fake_target(FakeTransport("edge-a", hang))
    fallback = fake_target(FakeTransport("cloud"))
    executor, plan = setup(primary, fallback)
    error, elapsed = run_failing(executor, plan, deadline_s=0.1)
    assert error.deadline_passed
    assert error.attempts == 1
    assert "deadline exceeded" in str(error)
    assert elapsed < 0.1 + SLACK_S
    assert 0 < fake_of(primary).infer_timeouts[0] <= 0.1
    assert fake_of(fallback).calls == 0
    assert primary.estimator.in_flight == 0


def test_the_fallback_gets_the_time_a_failed_primary_left() -> None:
    primary = fake_target(FakeTransport("edge-a", after(0.05, fail_with(timed_out))))
    fallback = fake_target(FakeTransport("cloud", label=2))
    executor, plan = setup(primary, fallback)
    served, elapsed = run(executor, plan, deadline_s=0.3)
    assert served.target is fallback
    assert served.attempts == 2
    assert served.reply.labels.tolist() == [2, 2, 2]
    first = fake_of(primary).infer_timeouts[0]
    second = fake_of(fallback).infer_timeouts[0]
    assert 0.25 <= first <= 0.3
    assert 0 < second <= 0.3 - 0.05, "each attempt's timeout is only the deadline left"
    assert elapsed < 0.3 + SLACK_S


def test_no_attempt_starts_once_the_deadline_has_passed() -> None:
    primary = fake_target(FakeTransport("edge-a"))
    executor, plan = setup(primary)
    error, _ = run_failing(executor, plan, deadline_s=-0.01)
    assert error.attempts == 0
    assert error.deadline_passed
    assert fake_of(primary).calls == 0


def test_when_both_fail_fast_the_request_is_not_served_before_its_deadline() -> None:
    primary = fake_target(FakeTransport("edge-a", fail_with(refused)))
    fallback = fake_target(FakeTransport("cloud", fail_with(overloaded)))
    executor, plan = setup(primary, fallback)
    error, _ = run_failing(executor, plan, deadline_s=1.0)
    assert not error.deadline_passed, "503, not 504"
    assert error.attempts == 2
    assert error.retry_after_s == 3.0, "the longest Retry-After a target asked for"
    assert "edge-a" in str(error) and "cloud" in str(error)
    assert not primary.estimator.available
    assert not fallback.estimator.available


def test_a_rejected_request_cools_the_target_down() -> None:
    primary = fake_target(FakeTransport("edge-a", fail_with(rejected)))
    executor, plan = setup(primary)
    error, _ = run_failing(executor, plan, deadline_s=1.0)
    assert error.attempts == 1
    assert not error.deadline_passed
    assert "HTTP 400" in str(error)
    assert not primary.estimator.available


def test_only_the_primary_and_one_fallback_are_tried() -> None:
    targets = [fake_target(FakeTransport(f"edge-{i}", fail_with(refused))) for i in range(3)]
    executor, plan = setup(*targets)
    error, _ = run_failing(executor, plan, deadline_s=1.0)
    assert error.attempts == 2
    assert [fake_of(t).calls for t in targets] == [1, 1, 0]


def test_an_empty_plan_is_not_served_and_says_why() -> None:
    executor = Executor(TargetSet([]))
    error, _ = run_failing(executor, Plan((), "no target serves quality=high"), deadline_s=1.0)
    assert error.attempts == 0
    assert not error.deadline_passed
    assert "quality=high" in str(error)


def test_a_timeout_under_a_deadline_tighter_than_predicted_does_not_cool_down() -> None:
    """50 ms says nothing about the health of a target that takes 80 ms."""
    slow = TargetEstimator()
    slow.observe_success(total_ms=80.0, server_ms=20.0, queue_ms=0.0, batch_rows=len(X))
    primary = fake_target(FakeTransport("edge-a", hang), estimator=slow)
    executor, plan = setup(primary)
    error, elapsed = run_failing(executor, plan, deadline_s=0.05)
    assert error.deadline_passed
    assert elapsed < 0.05 + SLACK_S
    assert primary.estimator.available
    assert primary.estimator.failures == 0


def test_a_timeout_with_ample_time_cools_the_target_down() -> None:
    primary = fake_target(FakeTransport("edge-a", hang), estimator=observed_fast())
    executor, plan = setup(primary)
    error, _ = run_failing(executor, plan, deadline_s=0.05)
    assert error.deadline_passed
    assert not primary.estimator.available
    assert primary.estimator.failures == 1
    assert primary.estimator.in_flight == 0


def test_a_partitioned_link_times_out_within_the_deadline() -> None:
    primary = fake_target(FakeTransport("edge-a"), link=LinkProfile(partitioned=True))
    fallback = fake_target(FakeTransport("cloud"))
    executor, plan = setup(primary, fallback)
    error, elapsed = run_failing(executor, plan, deadline_s=0.1)
    assert error.deadline_passed
    assert error.attempts == 1
    assert elapsed < 0.1 + SLACK_S
    assert fake_of(primary).calls == 0, "nothing crossed the link"

"""Running a plan over fake transports: fallbacks in plan order, one retry layer, Retry-After
within the deadline, 4xx never retried, every call bounded by the deadline left, breakers.

Deadlines are real but short (50-300 ms); nothing sleeps for a retry (the sleep is a
recording fake); elapsed-time bounds are generous.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

import numpy as np
import pytest

from router.calls import Attempt
from router.executor import Executor, NotServed, Served
from router.plan import Plan, Timing
from router.policy import BreakerSettings, RetrySettings
from router.targets import Target
from router.transport import Reply, TargetTimeout
from tests.unit.fakes import (
    FakeClock,
    FakeTransport,
    RecordingSleep,
    after,
    answer,
    executor_for,
    fail_with,
    fake_of,
    fake_target,
    hang,
    overloaded,
    plan_of,
    refused,
    rejected,
    reply_for,
    run_async,
    run_virtual,
    sequence,
)

X = np.zeros((3, 64), dtype=np.float32)
LATE_S = 0.05
"""How far past its deadline a run may return (scheduling, cancellation)."""


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
    executor = executor_for(primary, fallback)
    served, _ = run(executor, plan_of("edge-a", "cloud"), deadline_s=1.0)
    assert served.target is primary
    assert (served.attempts, served.retries) == (1, 0)
    assert not (served.fallback or served.hedged or served.hedge_won or served.escalated)
    assert served.reply.output("label").tolist() == [3, 3, 3]
    assert served.errors == ()
    assert 0 <= served.upstream_ms <= served.elapsed_ms
    assert fake_of(fallback).calls == 0
    assert primary.estimator.successes == 1
    assert primary.estimator.in_flight == 0
    assert executor.breakers["edge-a"].snapshot()["window_calls"] == 1


def test_fallbacks_are_tried_in_plan_order_without_waiting() -> None:
    sleep = RecordingSleep()
    a = fake_target(FakeTransport("edge-a", fail_with(refused)))
    b = fake_target(FakeTransport("edge-b", label=2))
    cloud = fake_target(FakeTransport("cloud", fail_with(overloaded())), tier="cloud")
    executor = executor_for(a, b, cloud, sleep=sleep)
    served, _ = run(executor, plan_of("edge-a", "cloud", "edge-b"), deadline_s=1.0)
    assert served.target is b
    assert (served.attempts, served.retries) == (3, 2)
    assert served.fallback
    assert [fake_of(t).calls for t in (a, cloud, b)] == [1, 1, 1]
    assert "edge-a: connection refused" in served.errors[0]
    assert "cloud: HTTP 503" in served.errors[1]
    assert sleep.total == 0, "a fallback goes to a fresh target at once"


def test_every_call_is_reported_with_its_outcome() -> None:
    seen: list[Attempt] = []
    a = fake_target(FakeTransport("edge-a", fail_with(refused)))
    b = fake_target(FakeTransport("edge-b", fail_with(rejected)))
    cloud = fake_target(FakeTransport("cloud"), tier="cloud", quality="large")
    executor = executor_for(a, cloud, b, on_attempt=seen.append)
    run(executor, plan_of("edge-a", "cloud"), deadline_s=1.0)
    run_failing(executor, plan_of("edge-b", "cloud"), deadline_s=1.0)
    assert [(e.target, e.tier, e.outcome) for e in seen] == [
        ("edge-a", "edge", "failure"), ("cloud", "cloud", "success"),
        ("edge-b", "edge", "rejected"),
    ]
    assert all(e.elapsed_ms >= 0 for e in seen)


def test_a_4xx_is_never_retried_nor_counted_by_the_breaker() -> None:
    primary = fake_target(FakeTransport("edge-a", fail_with(rejected)))
    fallback = fake_target(FakeTransport("cloud"))
    executor = executor_for(primary, fallback)
    error, _ = run_failing(executor, plan_of("edge-a", "cloud"), deadline_s=1.0)
    assert error.attempts == 1
    assert not error.deadline_passed
    assert "HTTP 400" in str(error)
    assert fake_of(fallback).calls == 0
    assert executor.breakers["edge-a"].snapshot()["window_calls"] == 0
    assert primary.estimator.last_error == "HTTP 400"


def test_a_lone_target_is_retried_after_a_jittered_backoff() -> None:
    sleep = RecordingSleep()
    primary = fake_target(FakeTransport("edge-a", sequence(fail_with(refused), answer)))
    executor = executor_for(primary, sleep=sleep)
    served, _ = run(executor, plan_of("edge-a"), deadline_s=1.0)
    assert served.target is primary
    assert (served.attempts, served.retries) == (2, 1)
    assert not served.fallback
    assert len(sleep.calls) == 1 and 0 <= sleep.calls[0] <= 0.005


def test_retry_after_is_honoured_when_the_deadline_allows() -> None:
    sleep = RecordingSleep()
    primary = fake_target(FakeTransport("edge-a", sequence(fail_with(overloaded(0.05)), answer)))
    executor = executor_for(primary, sleep=sleep)
    served, _ = run(executor, plan_of("edge-a"), deadline_s=1.0)
    assert served.attempts == 2
    assert sleep.calls == [pytest.approx(0.05, abs=0.005)]


def test_retry_after_beyond_the_deadline_fails_fast_and_passes_it_on() -> None:
    sleep = RecordingSleep()
    primary = fake_target(FakeTransport("edge-a", fail_with(overloaded(0.5))))
    executor = executor_for(primary, sleep=sleep)
    error, elapsed = run_failing(executor, plan_of("edge-a"), deadline_s=0.2)
    assert error.attempts == 1
    assert not error.deadline_passed, "503, not 504"
    assert error.retry_after_s == pytest.approx(0.5, abs=0.05)
    assert sleep.calls == []
    assert elapsed < 0.05


def test_retry_after_beyond_the_configured_cap_is_not_waited_for() -> None:
    sleep = RecordingSleep()
    primary = fake_target(FakeTransport("edge-a", fail_with(overloaded(3.0))))
    executor = executor_for(primary, sleep=sleep, retry=RetrySettings(max_retry_after_ms=2000))
    error, _ = run_failing(executor, plan_of("edge-a"), deadline_s=10.0)
    assert error.attempts == 1
    assert sleep.calls == []
    assert error.retry_after_s == pytest.approx(3.0, abs=0.05)


def test_max_attempts_counts_every_target() -> None:
    targets = [fake_target(FakeTransport(f"edge-{i}", fail_with(refused))) for i in range(4)]
    executor = executor_for(*targets, retry=RetrySettings(max_attempts=3))
    error, _ = run_failing(executor, plan_of("edge-0", "edge-1", "edge-2", "edge-3"), 1.0)
    assert error.attempts == 3
    assert [fake_of(t).calls for t in targets] == [1, 1, 1, 0]
    assert not error.deadline_passed


def run_in_virtual_time(primary: Target, fallback: Target, plan: Plan,
                        deadline_s: float) -> tuple[Served | NotServed, float]:
    """``plan`` run on a virtual-time loop, so its timeouts are exact: what it served or the
    error it raised, and the time it took."""

    async def main() -> tuple[Served | NotServed, float]:
        clock = asyncio.get_running_loop().time
        executor = executor_for(primary, fallback, clock=clock, sleep=asyncio.sleep)
        started = clock()
        try:
            served: Served | NotServed = await executor.run(plan, X, started + deadline_s)
        except NotServed as error:
            served = error
        return served, clock() - started

    return run_virtual(main)


def test_a_hanging_primary_times_out_with_time_left_for_the_fallback() -> None:
    """The primary is cut 12 ms (the call's setup reserve) plus the fallback's 20 ms upper
    prediction before the deadline."""
    primary = fake_target(FakeTransport("edge-a", hang))
    fallback = fake_target(FakeTransport("cloud", label=2))
    served, elapsed = run_in_virtual_time(primary, fallback,
                                          plan_of("edge-a", "cloud", upper_ms=20.0), 0.3)
    assert isinstance(served, Served) and served.target is fallback
    assert served.reply.output("label").tolist() == [2, 2, 2]
    first = fake_of(primary).infer_timeouts[0]
    second = fake_of(fallback).infer_timeouts[0]
    assert 0.25 <= first <= 0.3 - 0.02, "the primary's timeout leaves the fallback its time"
    assert second == pytest.approx(0.3 - first)
    assert elapsed <= 0.3
    assert fake_of(primary).cancelled == 1, "the timeout cancelled the hanging call"
    assert primary.estimator.in_flight == 0


def test_a_primary_with_a_long_tail_is_cut_for_the_fallback_once_past_its_typical_time() -> None:
    """A call to a lost Ray node hangs: a primary whose upper prediction does not fit beside
    the fallback's reserve is still cut, as long as its typical time fits."""
    primary = fake_target(FakeTransport("cloud", hang))
    fallback = fake_target(FakeTransport("edge-a", label=4))
    executor = executor_for(primary, fallback)
    plan = plan_of("cloud", "edge-a", upper_ms=280.0, typical_ms=30.0)
    served, elapsed = run(executor, plan, deadline_s=0.6)
    assert served.target is fallback
    assert fake_of(primary).infer_timeouts[0] <= 0.6 - 0.28, "the fallback kept its time"
    assert elapsed < 0.6 + LATE_S


def test_a_primary_is_not_cut_before_its_typical_time() -> None:
    primary = fake_target(FakeTransport("edge-a", hang))
    fallback = fake_target(FakeTransport("cloud", label=2))
    plan = plan_of("edge-a", "cloud", upper_ms=80.0, typical_ms=60.0)
    error, _ = run_in_virtual_time(primary, fallback, plan, 0.1)
    # Cutting at 100 - 80 - 12 ms would leave the primary less than its typical 60 ms:
    # it gets the whole deadline, and no time is left for the fallback.
    assert isinstance(error, NotServed) and error.deadline_passed and error.attempts == 1
    assert fake_of(primary).infer_timeouts[0] == pytest.approx(0.1)


def test_a_hanging_lone_target_is_cut_at_the_deadline() -> None:
    primary = fake_target(FakeTransport("edge-a", hang))
    executor = executor_for(primary)
    error, elapsed = run_failing(executor, plan_of("edge-a"), deadline_s=0.1)
    assert error.deadline_passed
    assert error.attempts == 1
    assert "deadline exceeded" in str(error)
    assert 0.1 <= elapsed < 0.1 + LATE_S
    assert 0 < fake_of(primary).infer_timeouts[0] <= 0.1


def test_a_transport_that_ignores_cancellation_cannot_hold_the_request() -> None:
    async def stubborn(transport: FakeTransport, x: np.ndarray, timeout_s: float) -> Reply:
        """Swallows every cancellation and answers after 0.2 s whatever happens."""
        done_at = time.monotonic() + 0.2
        while time.monotonic() < done_at:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(done_at - time.monotonic())
        return reply_for(x)

    primary = fake_target(FakeTransport("edge-a", stubborn))
    executor = executor_for(primary)

    async def main() -> float:
        started = time.monotonic()
        with pytest.raises(NotServed):
            await executor.run(plan_of("edge-a"), X, started + 0.05)
        elapsed = time.monotonic() - started
        await after(0.25, answer)(fake_of(primary), X, 1.0)
        return elapsed

    assert run_async(main) < 0.05 + LATE_S


def test_no_attempt_starts_once_the_deadline_has_passed() -> None:
    primary = fake_target(FakeTransport("edge-a"))
    error, _ = run_failing(executor_for(primary), plan_of("edge-a"), deadline_s=-0.01)
    assert (error.attempts, error.deadline_passed) == (0, True)
    assert fake_of(primary).calls == 0


def test_a_plan_naming_unknown_targets_is_not_served_and_says_why() -> None:
    error, _ = run_failing(executor_for(), plan_of("nowhere"), deadline_s=1.0)
    assert error.attempts == 0
    assert not error.deadline_passed
    assert "nowhere: unknown target" in str(error)


def test_a_timeout_under_a_deadline_tighter_than_predicted_blames_nobody() -> None:
    """50 ms says nothing about the health of a target that takes 80 ms."""
    primary = fake_target(FakeTransport("edge-a", hang))
    executor = executor_for(primary)
    error, _ = run_failing(executor, plan_of("edge-a", upper_ms=80.0), deadline_s=0.05)
    assert error.deadline_passed
    assert primary.estimator.failures == 0
    assert executor.breakers["edge-a"].snapshot()["window_calls"] == 0


def test_a_timeout_with_ample_time_counts_as_a_failure() -> None:
    primary = fake_target(FakeTransport("edge-a", hang))
    executor = executor_for(primary)
    run_failing(executor, plan_of("edge-a", upper_ms=5.0), deadline_s=0.05)
    assert primary.estimator.failures == 1
    assert executor.breakers["edge-a"].snapshot()["window_failures"] == 1


def test_a_target_whose_breaker_is_open_is_skipped_then_probed_back() -> None:
    clock = FakeClock()
    primary = fake_target(FakeTransport("edge-a"))
    fallback = fake_target(FakeTransport("cloud"))
    executor = executor_for(primary, fallback, clock=clock,
                            breaker=BreakerSettings(consecutive_failures=1))
    plan = plan_of("edge-a", "cloud")
    permit = executor.breakers["edge-a"].acquire()
    assert permit is not None
    permit.failure("refused")
    assert not executor.allows("edge-a")

    async def main() -> tuple[Served, Served]:
        skipped = await executor.run(plan, X, clock() + 1.0)
        clock.advance(2.0)
        probed = await executor.run(plan, X, clock() + 1.0)
        return skipped, probed

    skipped, probed = run_async(main)
    assert skipped.target is fallback and skipped.fallback and skipped.attempts == 1
    assert probed.target is primary, "once the ejection is over a request probes it"
    assert executor.breakers["edge-a"].state == "closed"
    assert fake_of(primary).calls == 1


def test_every_target_ejected_fails_fast_with_retry_after_until_the_first_returns() -> None:
    clock = FakeClock()
    a, b = fake_target(FakeTransport("edge-a")), fake_target(FakeTransport("edge-b"))
    executor = executor_for(a, b, clock=clock, breaker=BreakerSettings(consecutive_failures=1))
    for name, wait_s in (("edge-a", 0.0), ("edge-b", 1.5)):
        clock.advance(wait_s)
        permit = executor.breakers[name].acquire()
        assert permit is not None
        permit.failure("refused")

    async def main() -> NotServed:
        with pytest.raises(NotServed) as caught:
            await executor.run(plan_of("edge-a", "edge-b"), X, clock() + 1.0)
        return caught.value

    error = run_async(main)
    assert error.attempts == 0
    assert not error.deadline_passed
    assert error.retry_after_s == pytest.approx(0.5), "edge-a half-opens first"
    assert "breaker open" in str(error)


def test_an_unexpected_transport_exception_is_a_retryable_failure() -> None:
    async def buggy(transport: FakeTransport, x: np.ndarray, timeout_s: float) -> Reply:
        raise KeyError("probabilities")

    primary = fake_target(FakeTransport("edge-a", buggy))
    fallback = fake_target(FakeTransport("cloud"))
    served, _ = run(executor_for(primary, fallback), plan_of("edge-a", "cloud"), 1.0)
    assert served.target is fallback
    assert "KeyError" in served.errors[0]


def test_a_timeout_error_from_the_transport_hands_over_to_the_fallback() -> None:
    primary = fake_target(FakeTransport("edge-a", fail_with(
        lambda name: TargetTimeout(name, "server gave up"))))
    fallback = fake_target(FakeTransport("cloud"))
    served, _ = run(executor_for(primary, fallback), plan_of("edge-a", "cloud"), 1.0)
    assert served.target is fallback
    assert served.fallback


def test_a_call_counts_in_flight_from_its_launch() -> None:
    """Decisions made between a call's launch and its task's first step see it in flight (the
    queue they predict includes it), and the count, the target's in-flight slot and the
    breaker permit are given back however the run ends, even if cancelled before its call
    ever ran."""
    primary = fake_target(FakeTransport("edge-a", after(0.05, answer)))
    executor = executor_for(primary)
    seen: list[int] = []

    async def main() -> None:
        run_task = asyncio.create_task(executor.run(plan_of("edge-a"), X, time.monotonic() + 1))
        await asyncio.sleep(0)
        # The run has decided and launched its call; the call's task has not run yet.
        assert fake_of(primary).calls == 0
        seen.append(primary.estimator.in_flight)
        await run_task
        seen.append(primary.estimator.in_flight)
        early = asyncio.create_task(executor.run(plan_of("edge-a"), X, time.monotonic() + 1))
        for _ in range(50):
            if primary.estimator.in_flight:
                break
            await asyncio.sleep(0)
        seen.append(primary.estimator.in_flight)
        early.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await early
        seen.append(primary.estimator.in_flight)

    run_async(main)
    assert seen == [1, 0, 1, 0]
    assert executor.snapshot()["admission"]["in_flight"] == 0
    assert executor.breakers["edge-a"].snapshot()["state"] == "closed"


def test_a_call_is_cut_for_its_fallback_only_if_it_keeps_its_typical_time() -> None:
    """One rule, the plan's, for the executor and the simulator: 300 ms left, a fallback
    priced at 100 ms (p99), a 5 ms least attempt and a 10 ms grace leave the call 185 ms, if
    its typical time fits in that; else the call gets all 300."""
    plan = Plan("single", "a", ("b",), timing={"a": Timing(50.0, 80.0), "b": Timing(20.0, 100.0),
                                               "slow": Timing(200.0, 400.0),
                                               "far": Timing(50.0, 290.0)})
    assert plan.timeout_ms("a", "b", 300.0, 5.0, 10.0) == pytest.approx(185.0)
    assert plan.timeout_ms("slow", "b", 300.0, 5.0, 10.0) == 300.0
    assert plan.timeout_ms("a", "far", 300.0, 5.0, 10.0) == 300.0, "no room left for the cut"
    assert plan.timeout_ms("a", None, 300.0, 5.0, 10.0) == 300.0, "no fallback: no cut"


def test_the_decision_writes_the_times_it_priced_into_the_plan() -> None:
    """The executor applies the p50 and p99 of the very distributions the plan was priced
    on, for every target the plan may call."""
    from router.decision import BaselineState, decide
    from router.policy import RoutingPolicy
    from tests.unit.views import view

    views = [view("edge-a", median=20.0, p_fail=0.05), view("edge-b", median=30.0),
             view("cloud", tier="cloud", quality="large", median=60.0)]
    plan = decide(views, deadline_ms=200.0, quality="any", rows=1, policy=RoutingPolicy(),
                  policy_name="default", rng=random.Random(1), state=BaselineState()).plan
    assert plan is not None and plan.fallbacks
    by_name = {v.name: v for v in views}
    assert set(plan.timing) == set(plan.targets)
    for name, timing in plan.timing.items():
        latency = by_name[name].latency
        assert timing == Timing(latency.quantile(0.5), latency.quantile(0.99))
    assert plan.overdue(plan.primary, plan.timing[plan.primary].upper_ms)
    assert not plan.overdue(plan.primary, 0.99 * plan.timing[plan.primary].upper_ms)

"""Admission by the router's own lateness (fake clock); a call's time counted only while
the router itself was not late (real loop stalls, no network); a call queued behind the
router's own calls never trips the target's breaker.

A herd must be refused at once with what the router cannot start in time; once it has
passed, requests are admitted again; and a call the router itself delayed is never held
against its target.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from router.admission import DeadlineAdmission, InFlightLimits
from router.estimator import TargetEstimator
from router.executor import NotServed
from router.lag import LoopLag
from router.latency import EstimatorSettings
from router.policy import AdmissionSettings
from router.served import Shed
from router.targets import Target, TargetSet
from router.transport import TargetTimeout
from tests.unit.fakes import (
    Behaviour,
    FakeClock,
    FakeTransport,
    executor_for,
    fail_with,
    fake_of,
    fake_target,
    gated,
    hang,
    overloaded,
    plan_of,
    run_async,
)

X = np.zeros((1, 64), dtype=np.float32)


def admission(clock: FakeClock, **settings: float) -> DeadlineAdmission:
    limits = InFlightLimits(AdmissionSettings(**settings))  # type: ignore[arg-type]
    return DeadlineAdmission(limits, lag=LoopLag(clock=clock), clock=clock)


def test_the_loop_lag_is_how_late_the_ticker_wakes_or_is_overdue() -> None:
    clock = FakeClock()
    lag = LoopLag(interval_s=0.005, clock=clock)
    lag.arm()
    clock.advance(0.005)
    assert lag.woke() == pytest.approx(0.0)
    lag.arm()
    clock.advance(0.105)
    assert lag.lag_s() == pytest.approx(0.1), "a stalled loop shows as the ticker overdue"
    assert lag.woke() == pytest.approx(0.1)
    since = clock()
    lag.arm()
    clock.advance(0.006)
    lag.woke()
    assert lag.lag_s() == pytest.approx(0.001), "the lag now, not the worst ever"
    assert lag.max_since(since) == pytest.approx(0.001)
    assert lag.max_since(since - 0.2) == pytest.approx(0.1)


def test_one_late_wake_is_not_a_lag_but_a_lasting_one_is() -> None:
    """A single late wake (the process descheduled once) is not a delay the next request
    meets: the lag is the median of the last samples, so one spike leaves it at zero and
    two in a row raise it."""
    clock = FakeClock()
    lag = LoopLag(interval_s=0.005, clock=clock)

    def tick(late_s: float) -> None:
        lag.arm()
        clock.advance(0.005 + late_s)
        lag.woke()

    tick(0.0)
    tick(0.0)
    tick(0.015)
    assert lag.lag_s() == pytest.approx(0.0)
    tick(0.015)
    assert lag.lag_s() == pytest.approx(0.015)


def test_an_idle_router_admits_a_request_and_plans_for_the_deadline_left() -> None:
    clock = FakeClock()
    gate = admission(clock)
    received = clock()
    clock.advance(0.01)
    ticket = gate.admit(received, deadline_ms=300)
    assert ticket.delay_s == pytest.approx(0.0)
    assert gate.waiting == 1
    ticket.started()
    ticket.done()
    assert gate.waiting == 0


def test_a_herd_is_admitted_while_it_can_start_in_time_and_the_rest_is_shed_at_once() -> None:
    """Each request admitted and not yet started delays the next by the loop time it still
    needs (1 ms): of 400 arriving within one turn of the loop with 300 ms deadlines and
    20 ms kept for the first call, 281 can start in time; the other 119 are refused on
    arrival with Retry-After, before any work. Once those started, the next is admitted."""
    clock = FakeClock()
    gate = admission(clock, shed_retry_after_s=2.0)
    received = clock()
    admitted, shed = [], []
    for _ in range(400):
        try:
            admitted.append(gate.admit(received, deadline_ms=300))
        except Shed as refused:
            shed.append(refused)
    assert len(admitted) == 281
    assert len(shed) == 119
    assert all(s.scope == "late" and s.retry_after_s == 2.0 and s.attempts == 0
               and not s.deadline_passed for s in shed)
    assert "281 waiting to start" in str(shed[0])
    assert gate.snapshot()["shed_late"] == 119
    clock.advance(0.01)
    for ticket in admitted:
        ticket.started()
    assert gate.admit(clock(), deadline_ms=300).delay_s == pytest.approx(0.0)
    assert gate.snapshot()["last_start_ms"] == pytest.approx(10.0)


def test_a_stalled_loop_sheds_what_cannot_start_and_admits_again_once_it_runs() -> None:
    """Lagging 145 ms, the router would take that long to send a call and as long again to
    read the answer: of a 300 ms deadline, less than 20 ms would be left."""
    clock = FakeClock()
    gate = admission(clock)
    gate.lag.arm()
    clock.advance(0.15)
    with pytest.raises(Shed, match=r"its own delay is 290 ms .* loop lag 145 ms"):
        gate.admit(clock(), deadline_ms=300)
    gate.lag.woke()
    gate.lag.arm()
    clock.advance(0.005)
    gate.lag.woke()
    assert gate.admit(clock(), deadline_ms=300).delay_s == pytest.approx(0.0)


def test_a_request_that_already_spent_its_deadline_is_shed_not_routed() -> None:
    clock = FakeClock()
    gate = admission(clock)
    received = clock()
    clock.advance(0.29)
    with pytest.raises(Shed):
        gate.admit(received, deadline_ms=300)


def test_a_request_that_ends_before_it_starts_stops_counting_as_waiting() -> None:
    clock = FakeClock()
    gate = admission(clock)
    ticket = gate.admit(clock(), deadline_ms=300)
    ticket.done()
    ticket.started()
    ticket.done()
    assert gate.waiting == 0


def test_min_start_left_comes_from_the_policy_in_force() -> None:
    clock = FakeClock()
    gate = admission(clock)
    gate.admit(clock(), deadline_ms=30)
    gate.limits.configure(AdmissionSettings(min_start_left_ms=50))
    with pytest.raises(Shed):
        gate.admit(clock(), deadline_ms=30)


async def _stall_loop(seconds: float) -> None:
    """Hold the event loop (a herd's worth of router work), then let it run again."""
    await asyncio.sleep(0.005)
    time.sleep(seconds)


def test_a_timeout_the_router_itself_caused_is_not_held_against_the_target() -> None:
    """The same hang as a timeout that counts as a failure, but the router's loop stalled
    for 60 ms while the call was out: neither breaker nor estimator hears of a failure."""
    primary = fake_target(FakeTransport("edge-a", hang))
    lag = LoopLag(interval_s=0.002)
    executor = executor_for(primary)
    executor._caller._lag = lag

    async def main() -> None:
        ticker = asyncio.create_task(lag.run())
        stall = asyncio.create_task(_stall_loop(0.06))
        try:
            with pytest.raises(NotServed):
                await executor.run(plan_of("edge-a"), X, time.monotonic() + 0.05)
        finally:
            ticker.cancel()
            await stall
            await asyncio.gather(ticker, return_exceptions=True)

    run_async(main)
    assert primary.estimator.failures == 0
    assert executor.breakers["edge-a"].snapshot()["window_calls"] == 0, "not even slow"


def test_an_answer_the_router_itself_delayed_teaches_no_latency() -> None:
    """The target answers at once, but the router's loop is stalled for 80 ms first: a
    success for the breaker (not a slow call), and no latency sample for the estimator."""
    gate = asyncio.Event()
    primary = fake_target(FakeTransport("edge-a", gated(gate)))
    lag = LoopLag(interval_s=0.002)
    executor = executor_for(primary)
    executor._caller._lag = lag
    started: list[bool] = []

    async def stall_then_answer() -> None:
        await _stall_loop(0.08)
        gate.set()

    async def main() -> None:
        ticker = asyncio.create_task(lag.run())
        stall = asyncio.create_task(stall_then_answer())
        try:
            await executor.run(plan_of("edge-a"), X, time.monotonic() + 1.0,
                               on_sent=lambda: started.append(True))
        finally:
            ticker.cancel()
            await stall
            await asyncio.gather(ticker, return_exceptions=True)

    run_async(main)
    assert started == [True]
    assert primary.estimator.successes == 1
    assert primary.estimator.latency_ewma.count == 0
    assert primary.estimator.latency.network_median_ms() is None
    breaker = executor.breakers["edge-a"].snapshot()
    assert breaker["window_calls"] == 1 and breaker["window_failures"] == 0


def _one_slot_target_with_a_call_of_ours_there(behaviour: Behaviour) -> Target:
    """A target that serves one call at a time, with one call of this router in flight."""
    target = fake_target(FakeTransport("edge-a", behaviour),
                         estimator=TargetEstimator(settings=EstimatorSettings(concurrency=1)))
    target.estimator.in_flight = 1
    return target


@pytest.mark.parametrize("behaviour", [hang, fail_with(overloaded(1.0))],
                         ids=["timeout", "503 with Retry-After"])
def test_a_call_queued_behind_the_router_s_own_calls_does_not_trip_the_breaker(
    behaviour: Behaviour,
) -> None:
    """A one-slot target already busy with this router's call: a call sent behind it that
    times out or is refused as full queued behind the router's own load. The estimator
    hears of it (the next decisions move load elsewhere); the breaker does not, so a herd
    the router let through cannot eject the target. The same failure with nothing of the
    router's ahead counts against the breaker."""
    busy = _one_slot_target_with_a_call_of_ours_there(behaviour)
    executor = executor_for(busy)
    with pytest.raises(NotServed):
        run_async(lambda: executor.run(plan_of("edge-a"), X, time.monotonic() + 0.05))
    assert busy.estimator.failures == 1
    assert executor.breakers["edge-a"].snapshot()["window_calls"] == 0

    idle = fake_target(FakeTransport("edge-a", behaviour),
                       estimator=TargetEstimator(settings=EstimatorSettings(concurrency=1)))
    executor = executor_for(idle)
    with pytest.raises(NotServed):
        run_async(lambda: executor.run(plan_of("edge-a"), X, time.monotonic() + 0.05))
    assert executor.breakers["edge-a"].snapshot()["window_failures"] == 1


def test_a_probe_the_router_itself_made_late_is_not_a_failure() -> None:
    """A probe that timed out while the router's loop stalled says nothing about the target;
    the same timeout on a running loop is a failure."""

    def probed(stall_s: float) -> int:
        target = fake_target(FakeTransport("edge-a"))

        async def probe_timing_out(timeout_s: float) -> None:
            await asyncio.sleep(0.02)
            raise TargetTimeout("edge-a", "no answer")

        fake_of(target).probe = probe_timing_out  # type: ignore[method-assign]
        targets = TargetSet([target])
        lag = targets.lag = LoopLag(interval_s=0.002)

        async def main() -> None:
            ticker = asyncio.create_task(lag.run())
            await asyncio.sleep(0.01)
            stall = asyncio.create_task(_stall_loop(stall_s))
            try:
                await targets.probe(target)
            finally:
                ticker.cancel()
                await stall
                await asyncio.gather(ticker, return_exceptions=True)

        run_async(main)
        return target.estimator.failures

    assert probed(0.0) == 1
    assert probed(0.05) == 0


def test_a_targets_calls_in_flight_are_counted_once_and_bounded_by_that_count() -> None:
    """With room for two calls at edge-a, two requests held there fill it: its estimator
    counts both (the queue the next decision predicts), the admission snapshot and
    ``/v1/targets`` show the same two, and a third request spills to the fallback.
    Once they answer, every count is back to zero."""
    gate = asyncio.Event()
    held = fake_target(FakeTransport("edge-a", gated(gate)))
    spare = fake_target(FakeTransport("cloud"), tier="cloud", quality="large")
    executor = executor_for(held, spare, admission=AdmissionSettings(max_in_flight_per_target=2))
    seen: dict[str, object] = {}

    async def main() -> list[str]:
        deadline = time.monotonic() + 5.0
        runs = [asyncio.create_task(executor.run(plan_of("edge-a", "cloud"), X, deadline))
                for _ in range(2)]
        for _ in range(100):
            if fake_of(held).in_progress == 2:
                break
            await asyncio.sleep(0)
        seen["counted"] = held.estimator.in_flight
        seen["shown"] = executor.snapshot()["admission"]["per_target"]["edge-a"]
        seen["room"] = executor.allows("edge-a")
        third = await executor.run(plan_of("edge-a", "cloud"), X, deadline)
        gate.set()
        served = await asyncio.gather(*runs)
        return [s.target.name for s in (*served, third)]

    assert run_async(main) == ["edge-a", "edge-a", "cloud"]
    assert seen == {"counted": 2, "shown": 2, "room": False}
    assert executor.limits.saturated == {"edge-a": 1}
    assert held.estimator.in_flight == spare.estimator.in_flight == 0
    assert executor.snapshot()["admission"]["per_target"] == {"edge-a": 0, "cloud": 0}

"""The per-target circuit breaker on a fake clock: when it trips, how long it ejects, how it
probes its way back, and that a flapping target is ejected for longer each time."""

from __future__ import annotations

import pytest

from router.breaker import Breakers, CircuitBreaker, Transition
from router.policy import BreakerSettings
from tests.unit.fakes import FakeClock

SETTINGS = BreakerSettings(
    window_s=10.0, min_calls=10, failure_rate=0.5, consecutive_failures=5, slow_call_ms=100.0,
    slow_call_rate=0.8, base_ejection_ms=2000.0, max_ejection_ms=10_000.0, half_open_probes=1,
    healthy_decay_ms=30_000.0,
)


def breaker(clock: FakeClock, settings: BreakerSettings = SETTINGS,
            seen: list[Transition] | None = None) -> CircuitBreaker:
    return CircuitBreaker("edge-a", settings, clock=clock,
                          on_transition=None if seen is None else seen.append)


def succeed(b: CircuitBreaker, n: int = 1, elapsed_ms: float = 5.0) -> None:
    for _ in range(n):
        permit = b.acquire()
        assert permit is not None
        permit.success(elapsed_ms)


def fail(b: CircuitBreaker, n: int = 1) -> None:
    for _ in range(n):
        permit = b.acquire()
        assert permit is not None
        permit.failure("HTTP 503")


def trip(b: CircuitBreaker) -> None:
    fail(b, SETTINGS.consecutive_failures)
    assert b.state == "open"


def test_a_new_breaker_is_closed_and_allows_calls() -> None:
    b = breaker(FakeClock())
    assert b.state == "closed"
    assert b.allows()
    assert b.snapshot()["state"] == "closed"
    assert b.snapshot()["ejections"] == 0


def test_failures_interleaved_with_successes_trip_only_past_min_calls_and_the_rate() -> None:
    b = breaker(FakeClock())
    for _ in range(4):
        fail(b)
        succeed(b)
    assert b.state == "closed", "8 calls: below min_calls"
    fail(b)
    assert b.state == "closed", "9 calls"
    fail(b)
    assert b.state == "open", "6 failures of 10 calls: over the 50% failure rate"
    assert "failure rate 60% over 10 calls" in b.snapshot()["last_transition"]["reason"]


def test_a_rate_below_the_threshold_keeps_it_closed() -> None:
    b = breaker(FakeClock())
    for _ in range(20):
        succeed(b, 2)
        fail(b)
    assert b.state == "closed"
    assert b.snapshot()["failure_rate"] == pytest.approx(1 / 3, abs=0.01)


def test_consecutive_failures_trip_at_once_whatever_the_window_holds() -> None:
    """A target that just died is ejected after 5 refusals, not once failures outnumber
    the hundreds of successes still in the window."""
    b = breaker(FakeClock())
    succeed(b, 500)
    fail(b, 4)
    assert b.state == "closed"
    fail(b)
    assert b.state == "open"
    assert "5 failures in a row" in b.snapshot()["last_transition"]["reason"]


def test_old_calls_leave_the_window() -> None:
    clock = FakeClock()
    b = breaker(clock, SETTINGS.model_copy(update={"consecutive_failures": 100}))
    fail(b, 9)
    clock.advance(11.0)
    succeed(b, 9)
    fail(b, 1)
    assert b.state == "closed", "the 9 old failures are out of the 10 s window"
    assert b.snapshot()["window_calls"] == 10


def test_slow_calls_trip_it() -> None:
    b = breaker(FakeClock())
    succeed(b, 2)
    succeed(b, 8, elapsed_ms=150.0)
    assert b.state == "open"
    assert "slow-call rate 80%" in b.snapshot()["last_transition"]["reason"]


def test_open_refuses_calls_until_the_ejection_is_over() -> None:
    clock = FakeClock()
    seen: list[Transition] = []
    b = breaker(clock, seen=seen)
    trip(b)
    assert not b.allows()
    assert b.acquire() is None
    assert b.retry_after_s() == pytest.approx(2.0)
    assert seen[-1].to_state == "open" and seen[-1].ejection_ms == 2000.0
    clock.advance(1.9)
    assert b.state == "open"
    assert b.snapshot()["ejected_for_ms"] == pytest.approx(100.0)
    clock.advance(0.1)
    assert b.state == "half_open"
    assert b.retry_after_s() == 0.0


def test_full_cycle_closed_open_half_open_closed() -> None:
    clock = FakeClock()
    seen: list[Transition] = []
    b = breaker(clock, seen=seen)
    trip(b)
    clock.advance(2.0)
    probe = b.acquire()
    assert probe is not None and probe.probe
    assert not b.allows(), "one probe at a time"
    assert b.acquire() is None
    probe.success(5.0)
    assert b.state == "closed"
    assert b.allows()
    assert [(t.from_state, t.to_state) for t in seen] == [
        ("closed", "open"), ("open", "half_open"), ("half_open", "closed"),
    ]
    snap = b.snapshot()
    assert snap["transitions"] == {"closed->open": 1, "open->half_open": 1, "half_open->closed": 1}
    assert snap["window_calls"] == 0, "closing starts a fresh window"


def test_half_open_allows_the_configured_number_of_concurrent_probes() -> None:
    clock = FakeClock()
    b = breaker(clock, SETTINGS.model_copy(update={"half_open_probes": 3}))
    trip(b)
    clock.advance(2.0)
    probes = [b.acquire() for _ in range(3)]
    assert all(p is not None for p in probes)
    assert b.acquire() is None
    assert b.snapshot()["probes_in_flight"] == 3


def test_a_released_probe_frees_its_slot_and_tells_nothing() -> None:
    clock = FakeClock()
    b = breaker(clock)
    trip(b)
    clock.advance(2.0)
    probe = b.acquire()
    assert probe is not None
    probe.release()
    assert b.state == "half_open"
    assert b.acquire() is not None


def test_a_failed_or_slow_probe_reopens_with_a_doubled_ejection_up_to_the_cap() -> None:
    clock = FakeClock()
    seen: list[Transition] = []
    b = breaker(clock, seen=seen)
    trip(b)
    for _ in range(5):
        clock.advance(b.retry_after_s())
        probe = b.acquire()
        assert probe is not None
        if len(seen) % 2:
            probe.success(500.0)
        else:
            probe.failure("refused")
        assert b.state == "open"
    ejections = [t.ejection_ms for t in seen if t.to_state == "open"]
    assert ejections == [2000.0, 4000.0, 8000.0, 10_000.0, 10_000.0, 10_000.0]
    assert b.ejections == 6


def test_ejections_shrink_again_after_healthy_periods() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(3):
        trip(b)
        clock.advance(b.retry_after_s())
        probe = b.acquire()
        assert probe is not None
        probe.success(5.0)
    assert b.next_ejection_ms() == 10_000.0, "2, 4, 8 s so far; next 16 s capped at 10"
    clock.advance(29.0)
    assert b.next_ejection_ms() == 10_000.0
    clock.advance(31.0)
    assert b.next_ejection_ms() == 4000.0, "two healthy 30 s periods: two levels down"
    clock.advance(600.0)
    assert b.next_ejection_ms() == 2000.0


def test_an_outcome_from_before_a_transition_is_ignored() -> None:
    clock = FakeClock()
    b = breaker(clock)
    early = b.acquire()
    assert early is not None
    trip(b)
    clock.advance(2.0)
    assert b.state == "half_open"
    early.success(5.0)
    assert b.state == "half_open", "only a probe may close it"
    early.failure("late")
    assert b.state == "half_open", "a permit reports once"


def test_a_flapping_target_is_ejected_for_longer_each_time_without_oscillating() -> None:
    """Scenario 7: healthy and unhealthy in turn every 5 s, called at 100 calls/s for 120 s."""
    clock = FakeClock(start=0.0)
    seen: list[Transition] = []
    b = breaker(clock, SETTINGS.model_copy(update={"max_ejection_ms": 60_000.0}), seen=seen)
    calls_while_sick = 0
    for tick in range(12_000):
        clock.now = tick / 100
        healthy = int(clock.now // 5) % 2 == 0
        permit = b.acquire()
        if permit is None:
            continue
        if healthy:
            permit.success(5.0)
        else:
            calls_while_sick += 1
            permit.failure("HTTP 503")
    ejections = [t.ejection_ms for t in seen if t.to_state == "open"]
    assert ejections == sorted(ejections), "ejections never shrink while it keeps relapsing"
    assert ejections[0] == 2000.0 and ejections[-1] >= 32_000.0
    relapses = sum(1 for t in seen if t.from_state == "closed" and t.to_state == "open")
    assert relapses <= 5, f"12 sick phases, but only {relapses} got the target back into use"
    assert calls_while_sick <= 5 * relapses + len(ejections), "a few calls per relapse"


def test_a_target_back_from_the_dead_is_probed_as_soon_as_a_health_check_passes() -> None:
    clock = FakeClock()
    b = breaker(clock)
    trip(b)
    for _ in range(3):
        clock.advance(b.retry_after_s())
        probe = b.acquire()
        assert probe is not None
        probe.failure("connection refused")
    assert b.retry_after_s() == 10.0, "down a while: a long ejection"
    b.probe_failed()
    clock.advance(1.0)
    b.probe_succeeded()
    assert b.state == "half_open", "the worker restarted: probe it now, not in 9 s"
    assert b.snapshot()["last_transition"]["reason"] == "active health check passed"


def test_a_target_down_for_long_gets_no_trial_calls_and_no_longer_ejection() -> None:
    """A hung or held-down worker fails its health checks for a minute: it is kept ejected
    without trial calls (each would cost a request its deadline) and its ejection level does
    not climb with the outage, so once a check passes it is tried at once, and a trial that
    fails then (a backlog draining) ejects it for the next level only, not for minutes."""
    clock = FakeClock()
    b = breaker(clock)
    trip(b)
    b.probe_failed()
    for _ in range(60):
        clock.advance(1.0)
        assert b.state == "open" and not b.allows() and b.acquire() is None
        assert b.snapshot()["down"]
        b.probe_failed()
    assert b.ejections == 1
    b.probe_succeeded()
    assert b.state == "half_open" and b.allows() and not b.snapshot()["down"]
    trial = b.acquire()
    assert trial is not None
    trial.failure("no answer within 86 ms")
    assert b.retry_after_s() == 4.0, "the second ejection, whatever the outage's length"


def test_a_failed_health_check_while_half_open_holds_the_trial() -> None:
    clock = FakeClock()
    b = breaker(clock)
    trip(b)
    clock.advance(2.0)
    assert b.state == "half_open"
    b.probe_failed()
    assert b.state == "open" and b.snapshot()["down"]
    assert not b.allows(), "known down: no request is spent on a trial"
    assert b.ejections == 1 and b.next_ejection_ms() == 4000.0, "no ejection added"
    b.probe_succeeded()
    assert b.state == "half_open"
    succeed(b)
    assert b.state == "closed"


def test_passing_health_checks_do_not_cut_short_the_ejection_of_a_failing_target() -> None:
    """A 503 storm or a flapping model answers health checks: it keeps its ejection."""
    clock = FakeClock()
    b = breaker(clock)
    trip(b)
    b.probe_succeeded()
    assert b.state == "open"
    clock.advance(2.0)
    probe = b.acquire()
    assert probe is not None
    probe.failure("HTTP 503")
    b.probe_succeeded()
    assert b.state == "open"
    assert b.retry_after_s() == 4.0


def test_a_health_check_failure_leaves_a_closed_breaker_alone() -> None:
    b = breaker(FakeClock())
    b.probe_failed()
    b.probe_succeeded()
    assert b.state == "closed"
    assert b.snapshot()["transitions"] == {}


def test_breakers_make_one_per_target_and_apply_new_settings_live() -> None:
    clock = FakeClock()
    seen: list[Transition] = []
    breakers = Breakers(SETTINGS, clock=clock, on_transition=seen.append)
    trip(breakers["edge-a"])
    assert not breakers.allows("edge-a")
    assert breakers.allows("edge-b")
    assert breakers["edge-a"] is breakers["edge-a"]
    assert seen[0].target == "edge-a"
    breakers.configure(SETTINGS.model_copy(update={"base_ejection_ms": 500.0}))
    assert breakers["edge-a"].state == "open", "state survives a reload"
    assert breakers["edge-b"].settings.base_ejection_ms == 500.0
    assert set(breakers.snapshot()) == {"edge-a", "edge-b"}


def test_a_failing_transition_callback_does_not_break_the_breaker() -> None:
    def explode(event: Transition) -> None:
        raise RuntimeError("metrics backend down")

    b = CircuitBreaker("edge-a", SETTINGS, clock=FakeClock(), on_transition=explode)
    trip(b)
    assert not b.allows()


def test_settings_reject_a_cap_below_the_base() -> None:
    with pytest.raises(ValueError, match="max_ejection_ms"):
        BreakerSettings(base_ejection_ms=5000.0, max_ejection_ms=1000.0)

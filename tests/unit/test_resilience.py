"""Many requests through one executor on a fake clock: everything failing, a flapping edge
and overload (the failure scenarios ``tests/chaos`` runs on the real stack), with the
figures a user would notice: attempts per request, errors, how fast excess is refused."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np
import pytest

from edgeroute.config import Tier
from router.breaker import Breakers, Transition
from router.executor import Executor, NotServed, Shed
from router.plan import Plan
from router.policy import AdmissionSettings, BreakerSettings
from router.targets import Target
from router.transport import Reply
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
    gated,
    overloaded,
    plan_of,
    run_async,
)

X = np.zeros((1, 64), dtype=np.float32)
NEVER_TRIPS = BreakerSettings(min_calls=1_000_000, consecutive_failures=1_000_000)


@dataclass
class Tally:
    requests: int = 0
    served: int = 0
    attempts: list[int] = field(default_factory=list)
    failures: list[NotServed] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)

    @property
    def attempts_per_request(self) -> float:
        return sum(self.attempts) / self.requests

    @property
    def p99_wall_s(self) -> float:
        return float(np.percentile(self.wall_s, 99))


def drive(executor: Executor, plan: Plan, clock: FakeClock, *, rate_per_s: float,
          seconds: float, deadline_s: float = 0.25) -> Tally:
    """Send requests one after another, ``1 / rate_per_s`` apart on the fake clock."""
    tally = Tally()

    async def main() -> None:
        for _ in range(int(rate_per_s * seconds)):
            started = time.perf_counter()
            tally.requests += 1
            try:
                served = await executor.run(plan, X, clock() + deadline_s)
            except NotServed as failure:
                tally.failures.append(failure)
                tally.attempts.append(failure.attempts)
            else:
                tally.served += 1
                tally.attempts.append(served.attempts)
            tally.wall_s.append(time.perf_counter() - started)
            clock.advance(1 / rate_per_s)

    run_async(main)
    return tally


def failing(name: str, tier: Tier = "edge") -> Target:
    return fake_target(FakeTransport(name, fail_with(overloaded())), tier=tier)


def test_when_everything_returns_503_attempts_stay_near_one_per_request() -> None:
    """Scenario 4: at most 1.10 upstream calls per request, none over 3, fast 503s."""
    clock = FakeClock()
    targets = [failing("edge-a"), failing("edge-b"), failing("cloud", "cloud")]
    executor = executor_for(*targets, clock=clock, sleep=RecordingSleep(clock))
    tally = drive(executor, plan_of("edge-a", "edge-b", "cloud"), clock,
                  rate_per_s=100, seconds=30)
    upstream = sum(fake_of(t).calls for t in targets)
    assert tally.served == 0
    assert upstream == sum(tally.attempts)
    assert tally.attempts_per_request <= 1.10, tally.attempts_per_request
    assert max(tally.attempts) <= 3
    assert all(not f.deadline_passed and f.retry_after_s > 0 for f in tally.failures)
    assert tally.p99_wall_s < 0.01, "refusals are fast"
    assert all(executor.breakers[t.name].ejections >= 3 for t in targets)


def test_the_retry_budget_alone_holds_retries_to_a_tenth_of_requests() -> None:
    """Breakers that never trip, one target, every call a 503: only the budget limits."""
    clock = FakeClock()
    target = failing("edge-a")
    executor = executor_for(target, clock=clock, sleep=RecordingSleep(clock), breaker=NEVER_TRIPS)
    tally = drive(executor, plan_of("edge-a"), clock, rate_per_s=100, seconds=30)
    assert tally.attempts_per_request <= 1.11, tally.attempts_per_request
    assert max(tally.attempts) <= 3
    assert executor.budget.denied > 2000, "most requests found the budget spent and failed fast"


def test_a_flapping_edge_costs_no_client_errors_and_is_ejected_for_longer_each_time() -> None:
    """Scenario 7: the edge is healthy and unhealthy in turn every 5 s; the cloud covers."""
    clock = FakeClock(start=0.0)

    async def flapping(transport: FakeTransport, x: np.ndarray, timeout_s: float) -> Reply:
        if int(clock() // 5) % 2:
            return await fail_with(overloaded())(transport, x, timeout_s)
        return await answer(transport, x, timeout_s)

    edge = fake_target(FakeTransport("edge-a", flapping))
    cloud = fake_target(FakeTransport("cloud"), tier="cloud")
    seen: list[Transition] = []
    breakers = Breakers(clock=clock, on_transition=seen.append)
    executor = executor_for(edge, cloud, clock=clock, sleep=RecordingSleep(clock),
                            breakers=breakers)
    tally = drive(executor, plan_of("edge-a", "cloud"), clock, rate_per_s=100, seconds=60)
    assert tally.failures == [], "no client errors"
    assert tally.attempts_per_request <= 1.01
    ejections = [t.ejection_ms for t in seen if t.to_state == "open"]
    assert ejections == sorted(ejections) and ejections[-1] >= 8 * ejections[0]
    back_in_use = sum(1 for t in seen if t.to_state == "closed")
    assert back_in_use <= 4, "no oscillation: 6 sick phases, few returns"


def test_a_replica_at_its_bound_sheds_at_once_and_serves_the_rest() -> None:
    gate = asyncio.Event()
    edge = fake_target(FakeTransport("edge-a", gated(gate)))
    executor = executor_for(edge, admission=AdmissionSettings(max_in_flight=2))

    async def main() -> None:
        deadline = time.monotonic() + 5.0
        held = [asyncio.create_task(executor.run(plan_of("edge-a"), X, deadline))
                for _ in range(2)]
        while fake_of(edge).in_progress < 2:
            await asyncio.sleep(0)
        started = time.perf_counter()
        with pytest.raises(Shed) as caught:
            await executor.run(plan_of("edge-a"), X, deadline)
        assert time.perf_counter() - started < 0.01
        assert caught.value.scope == "router"
        assert caught.value.retry_after_s == 1.0
        assert not caught.value.deadline_passed
        gate.set()
        assert [s.target for s in await asyncio.gather(*held)] == [edge, edge]

    run_async(main)
    assert executor.limits.snapshot()["shed"] == 1


def test_a_saturated_target_spills_to_the_fallback_or_sheds() -> None:
    gate = asyncio.Event()
    edge = fake_target(FakeTransport("edge-a", gated(gate)))
    cloud = fake_target(FakeTransport("cloud"), tier="cloud")
    executor = executor_for(edge, cloud, admission=AdmissionSettings(max_in_flight_per_target=1))

    async def main() -> None:
        deadline = time.monotonic() + 5.0
        holder = asyncio.create_task(executor.run(plan_of("edge-a"), X, deadline))
        while fake_of(edge).in_progress < 1:
            await asyncio.sleep(0)
        spilled = await executor.run(plan_of("edge-a", "cloud"), X, deadline)
        assert spilled.target is cloud and spilled.fallback and spilled.attempts == 1
        with pytest.raises(Shed) as caught:
            await executor.run(plan_of("edge-a"), X, deadline)
        assert caught.value.scope == "target"
        gate.set()
        await holder

    run_async(main)


def test_a_burst_five_times_the_bound_is_served_up_to_the_bound_and_shed_fast() -> None:
    """Scenario 6 in miniature: 250 requests at once against a bound of 50."""
    edge = fake_target(FakeTransport("edge-a", after(0.02, answer)))
    executor = executor_for(edge, admission=AdmissionSettings(max_in_flight=50))
    shed_after_s: list[float] = []

    async def one(deadline: float) -> bool:
        started = time.perf_counter()
        try:
            await executor.run(plan_of("edge-a"), X, deadline)
        except Shed:
            shed_after_s.append(time.perf_counter() - started)
            return False
        return True

    async def main() -> list[bool]:
        deadline = time.monotonic() + 2.0
        return await asyncio.gather(*(one(deadline) for _ in range(250)))

    results = run_async(main)
    assert sum(results) == 50
    assert len(shed_after_s) == 200
    assert max(shed_after_s) < 0.01
    assert fake_of(edge).calls == 50

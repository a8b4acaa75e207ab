"""In-memory stand-ins shared by the router's unit tests: a fake clock, a recording sleep,
a scripted fake :class:`~router.transport.Transport`, targets built over them, plans, and
an executor over them that never sleeps for real.

Nothing here opens a socket or sleeps on its own: a fake transport answers at once,
raises what it is told to, or hangs until it is cancelled.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import selectors
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import httpx
import numpy as np

from edgeroute.config import LinkProfile, Quality, Tier
from edgeroute.contract import OUTPUT_PROBABILITIES, output_tensors
from router.breaker import Breakers
from router.calls import OnAttempt
from router.estimator import TargetEstimator
from router.executor import Executor
from router.plan import Plan, PlanKind, Timing
from router.policy import AdmissionSettings, BreakerSettings, RetrySettings
from router.targets import Target, TargetSet, make_target
from router.transport import Reply, TargetError, TargetRejected, TargetUnavailable

T = TypeVar("T")


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock starts at 0 and moves only when nothing is ready to run: it
    then jumps to the next timer. ``asyncio.sleep``, ``wait_for`` and ``wait`` timeouts take
    no real time, and their order is exact. Nothing here may wait on real I/O."""

    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self.now


class _JumpingSelector(selectors.SelectSelector):
    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise RuntimeError("virtual time: nothing is scheduled and nothing is ready")
        self._loop.now += timeout
        return []


async def _leaving_no_task(main: Callable[[], Awaitable[T]]) -> T:
    """``main()``'s result; fails if it leaves tasks behind."""
    result = await main()
    leaked = asyncio.all_tasks() - {asyncio.current_task()}
    assert not leaked, f"leaked tasks: {leaked}"
    return result


def run_virtual(main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main()`` on a fresh :class:`VirtualTimeLoop`; fail if it leaves tasks behind."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(_leaving_no_task(main))
    finally:
        loop.close()


@dataclass
class RecordingSleep:
    """An injectable ``sleep`` that records each duration and returns at once.

    With a ``clock`` it also moves that clock, so code timing itself sees the
    time it slept.
    """

    clock: FakeClock | None = None
    calls: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        if self.clock is not None:
            self.clock.advance(seconds)

    @property
    def total(self) -> float:
        return sum(self.calls)


def reply_for(x: np.ndarray, *, server_ms: float = 1.0, queue_ms: float = 0.0,
              label: int = 7, version: str = "fake-1", confidence: float = 1.0) -> Reply:
    """A well-formed reply saying every row is ``label`` with probability ``confidence``."""
    rows = len(x)
    probabilities = np.full((rows, 10), (1.0 - confidence) / 9, dtype=np.float32)
    probabilities[:, label] = confidence
    return Reply(
        outputs=output_tensors(probabilities, np.full(rows, label, dtype=np.int64)),
        confidence_output=OUTPUT_PROBABILITIES,
        model_version=version,
        server_ms=server_ms,
        queue_ms=queue_ms,
        batch_rows=rows,
    )


Behaviour = Callable[["FakeTransport", np.ndarray, float], Awaitable[Reply]]


async def answer(transport: FakeTransport, x: np.ndarray, timeout_s: float) -> Reply:
    return reply_for(x, label=transport.label, confidence=transport.confidence)


async def hang(transport: FakeTransport, x: np.ndarray, timeout_s: float) -> Reply:
    """Never answers: what a Ray handle call to a replica on a dead node does."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def fail_with(error: Callable[[str], TargetError]) -> Behaviour:
    """Raise ``error(name)`` at once (a refused connection, a 503, a 4xx)."""

    async def behaviour(transport: FakeTransport, x: np.ndarray, timeout_s: float) -> Reply:
        raise error(transport.name)

    return behaviour


def after(seconds: float, then: Behaviour) -> Behaviour:
    """Wait ``seconds`` of real time, then behave as ``then``."""

    async def behaviour(transport: FakeTransport, x: np.ndarray, timeout_s: float) -> Reply:
        await asyncio.sleep(seconds)
        return await then(transport, x, timeout_s)

    return behaviour


def sequence(*behaviours: Behaviour) -> Behaviour:
    """Behave as each of ``behaviours`` in turn, one call each; the last one repeats."""
    calls = itertools.count()

    async def behaviour(transport: FakeTransport, x: np.ndarray, timeout_s: float) -> Reply:
        step = min(next(calls), len(behaviours) - 1)
        return await behaviours[step](transport, x, timeout_s)

    return behaviour


class FakeTransport:
    """A scripted :class:`~router.transport.Transport`; records every call's timeout, and
    how many calls are in progress and how many were cancelled while in progress."""

    def __init__(self, name: str, behaviour: Behaviour = answer, *, label: int = 7,
                 confidence: float = 1.0) -> None:
        self.name = name
        self.behaviour = behaviour
        self.label = label
        self.confidence = confidence
        self.infer_timeouts: list[float] = []
        self.probe_timeouts: list[float] = []
        self.probe_error: TargetError | None = None
        self.closed = False
        self.in_progress = 0
        self.cancelled = 0

    async def infer(self, x: np.ndarray, timeout_s: float) -> Reply:
        self.infer_timeouts.append(timeout_s)
        self.in_progress += 1
        try:
            return await self.behaviour(self, x, timeout_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_progress -= 1

    async def probe(self, timeout_s: float) -> None:
        self.probe_timeouts.append(timeout_s)
        if self.probe_error is not None:
            raise self.probe_error

    async def aclose(self) -> None:
        self.closed = True

    @property
    def calls(self) -> int:
        return len(self.infer_timeouts)


def fake_target(
    transport: FakeTransport,
    *,
    tier: Tier = "edge",
    quality: Quality = "small",
    link: LinkProfile | None = None,
    estimator: TargetEstimator | None = None,
) -> Target:
    """A router target over ``transport`` behind a zero-delay link (unless one is given)."""
    return make_target(
        transport.name,
        tier,
        quality,
        link or LinkProfile(),
        transport,
        f"fake:{transport.name}",
        estimator or TargetEstimator(),
    )


def run_async(main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main()`` on a fresh event loop and fail if it leaves tasks behind."""
    return asyncio.run(_leaving_no_task(main))


def fake_of(target: Target) -> FakeTransport:
    """The fake transport behind a target's link."""
    inner = target.transport.inner
    assert isinstance(inner, FakeTransport)
    return inner


def refused(name: str) -> TargetUnavailable:
    return TargetUnavailable(name, "connection refused")


def overloaded(retry_after_s: float | None = None) -> Callable[[str], TargetError]:
    """A 503, with a ``Retry-After`` if given."""

    def error(name: str) -> TargetError:
        return TargetUnavailable(name, "HTTP 503", retry_after_s=retry_after_s)

    return error


def rejected(name: str) -> TargetRejected:
    return TargetRejected(name, "HTTP 400")


def gated(gate: asyncio.Event, then: Behaviour = answer) -> Behaviour:
    """Wait until ``gate`` is set, then behave as ``then``."""

    async def behaviour(transport: FakeTransport, x: np.ndarray, timeout_s: float) -> Reply:
        await gate.wait()
        return await then(transport, x, timeout_s)

    return behaviour


def plan_of(primary: str, *fallbacks: str, hedge: str | None = None,
            hedge_delay_ms: float | None = None, escalate_to: str | None = None,
            confidence_threshold: float | None = None, upper_ms: float = 5.0,
            typical_ms: float | None = None) -> Plan:
    """A plan that prices every target it names at ``upper_ms`` (p99) and ``typical_ms``
    (median; default the same)."""
    kind: PlanKind = "hedged" if hedge else "cascade" if escalate_to else "single"
    times = Timing(upper_ms if typical_ms is None else typical_ms, upper_ms)
    names = (primary, *fallbacks, hedge, escalate_to)
    return Plan(kind, primary, tuple(fallbacks), hedge, hedge_delay_ms, escalate_to,
                confidence_threshold, timing={n: times for n in names if n})


def executor_for(
    *targets: Target,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    retry: RetrySettings | None = None,
    breaker: BreakerSettings | None = None,
    admission: AdmissionSettings | None = None,
    breakers: Breakers | None = None,
    on_attempt: OnAttempt | None = None,
) -> Executor:
    """An executor over ``targets`` that never sleeps for real."""
    return Executor(
        TargetSet(targets), retry=retry, breaker=breaker, admission=admission,
        breakers=breakers, clock=clock,
        sleep=sleep or RecordingSleep(), rng=random.Random(7),
        on_attempt=on_attempt,
    )


def call_router(main: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    """Run ``main`` with an httpx client of the router's ASGI app, in process."""
    from router import app as router_app

    async def run() -> T:
        transport = httpx.ASGITransport(app=router_app.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
            return await main(client)

    return run_async(run)

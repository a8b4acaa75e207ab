"""In-memory stand-ins shared by the router's unit tests: a fake clock, a recording sleep,
a scripted fake :class:`~router.transport.Transport`, and targets built over them.

Nothing here opens a socket or sleeps on its own: a fake transport answers at once,
raises what it is told to, or hangs until it is cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from edgeroute.config import LinkProfile, Prices, Quality, Tier
from router.estimator import TargetEstimator
from router.targets import Target, make_target
from router.transport import Reply, TargetError

T = TypeVar("T")


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


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
              label: int = 7, version: str = "fake-1") -> Reply:
    """A well-formed reply saying every row is ``label``."""
    rows = len(x)
    probabilities = np.zeros((rows, 10), dtype=np.float32)
    probabilities[:, label] = 1.0
    return Reply(
        probabilities=probabilities,
        labels=np.full(rows, label, dtype=np.int64),
        model_version=version,
        server_ms=server_ms,
        queue_ms=queue_ms,
        batch_rows=rows,
    )


Behaviour = Callable[["FakeTransport", np.ndarray, float], Awaitable[Reply]]


async def answer(transport: FakeTransport, x: np.ndarray, timeout_s: float) -> Reply:
    return reply_for(x, label=transport.label)


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


class FakeTransport:
    """A scripted :class:`~router.transport.Transport`; records every call's timeout."""

    def __init__(self, name: str, behaviour: Behaviour = answer, *, label: int = 7) -> None:
        self.name = name
        self.behaviour = behaviour
        self.label = label
        self.infer_timeouts: list[float] = []
        self.probe_timeouts: list[float] = []
        self.probe_error: TargetError | None = None
        self.closed = False

    async def infer(self, x: np.ndarray, timeout_s: float) -> Reply:
        self.infer_timeouts.append(timeout_s)
        return await self.behaviour(self, x, timeout_s)

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
    prices: Prices | None = None,
    link: LinkProfile | None = None,
    estimator: TargetEstimator | None = None,
) -> Target:
    """A router target over ``transport`` behind a zero-delay link (unless one is given)."""
    return make_target(
        transport.name,
        tier,
        quality,
        prices or Prices(),
        link or LinkProfile(),
        transport,
        f"fake:{transport.name}",
        estimator or TargetEstimator(),
    )


def run_async(main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main()`` on a fresh event loop and fail if it leaves tasks behind."""

    async def checked() -> T:
        result = await main()
        leaked = asyncio.all_tasks() - {asyncio.current_task()}
        assert not leaked, f"leaked tasks: {leaked}"
        return result

    return asyncio.run(checked())


def fake_of(target: Target) -> FakeTransport:
    """The fake transport behind a target's link."""
    inner = target.transport.inner
    assert isinstance(inner, FakeTransport)
    return inner

"""The router's own lateness: how late its event loop runs what is due (pure logic + a ticker).

A router replica runs every request on one event loop. When the loop has more
ready work than it can run at once (a herd of arrivals, many calls answering
together), everything on it runs late: a request waits before its first call
is sent, and an answer waits before it is read. That time is the router's,
never the target's: :func:`late` says when a call's time is too polluted by
it to judge the target (:mod:`router.calls`, :mod:`router.targets`), and
admission refuses what the router cannot start in time
(:mod:`router.admission`).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

TICK_S = 0.005
"""How often :class:`LoopLag` asks to be woken."""
LAG_SAMPLES = 512
"""Lag samples kept (at one per tick, a few seconds' worth: longer than any call)."""
RECENT_SAMPLES = 3
""":meth:`LoopLag.lag_s` reads the median of this many last samples: a lag that lasts, not
one late wake (a descheduled process, a collection pause) that the next request will not
meet."""
LATE_MIN_MS = 5.0
LATE_SHARE = 0.1
"""The router ran late during a call when its loop lag then reached both ``LATE_MIN_MS``
and this share of the call's time."""


def late(own_ms: float, elapsed_ms: float) -> bool:
    """Whether the router's own delay ``own_ms`` during a call of ``elapsed_ms`` makes the
    call's time meaningless for its target."""
    return own_ms >= max(LATE_MIN_MS, LATE_SHARE * elapsed_ms)


class LoopLag:
    """How late the event loop runs what is due, measured by a ticker that asks to be woken
    every ``interval_s`` and notes how late it woke (the lag every callback sees).

    :meth:`lag_s` is the lag now: the median of the last ``RECENT_SAMPLES`` samples, or,
    while the ticker itself is overdue, how overdue it is (a stalled loop cannot run the
    ticker, but a handler that does run can see how long the ticker has waited).
    :meth:`max_since` is the worst lag since a moment: the router's own delay over a
    call's lifetime.
    """

    def __init__(self, *, interval_s: float = TICK_S, clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._sleep = sleep
        self._samples: deque[tuple[float, float]] = deque(maxlen=LAG_SAMPLES)
        self._due: float | None = None

    def arm(self) -> float:
        """Expect the next wake ``interval_s`` from now; returns the time to sleep."""
        self._due = self._clock() + self.interval_s
        return self.interval_s

    def woke(self) -> float:
        """The ticker woke: note how late; returns the lag sampled."""
        now = self._clock()
        lag = max(now - self._due, 0.0) if self._due is not None else 0.0
        self._due = None
        self._samples.append((now, lag))
        return lag

    def _overdue_s(self) -> float:
        return max(self._clock() - self._due, 0.0) if self._due is not None else 0.0

    def lag_s(self) -> float:
        recent = sorted(lag for _, lag in itertools.islice(reversed(self._samples),
                                                           RECENT_SAMPLES))
        lasting = recent[(len(recent) - 1) // 2] if recent else 0.0
        return max(lasting, self._overdue_s())

    def max_since(self, since: float) -> float:
        """The worst lag sampled after ``since``, or overdue now."""
        worst = self._overdue_s()
        for at, lag in reversed(self._samples):
            if at <= since:
                break
            worst = max(worst, lag)
        return worst

    async def run(self) -> None:
        """Tick forever (a background task of the replica)."""
        while True:
            await self._sleep(self.arm())
            self.woke()

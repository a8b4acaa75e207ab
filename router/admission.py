"""Admission control of one router replica: its own lateness, and in-flight bounds (pure logic).

Overload must turn into fast refusals, not into queues: a refused request costs
microseconds and tells the client when to come back, a queued one holds memory
and misses its deadline anyway (SRE book, "Handling Overload": reject early and
cheaply). Nothing here waits; every check answers at once.

* :class:`LoopLag` measures how late the replica's event loop runs what is due.
  Every request handled on the loop waits that long at each step, before its
  first call is sent and again when the answer comes back.
* :class:`DeadlineAdmission` admits a request only if the router can send its
  first call in time: its remaining deadline must cover the loop's lag plus the
  router's own time for each request admitted before it and not yet started
  (``START_COST_S`` each), and still leave ``min_start_left_ms``. What cannot
  start in time is refused at once with 503 and ``Retry-After``, instead of being
  queued until its deadline has passed (a herd otherwise makes every request
  late: the metastable failure of Bronson et al., "Metastable Failures in
  Distributed Systems", HotOS 2021).
* The replica bound caps requests the executor runs at once; beyond it a
  request is shed before any work is done.
* The per-target bound caps calls from this replica to one target (Envoy's
  per-cluster ``max_requests`` circuit breaker); a saturated target is skipped
  like an ejected one, so load spills to the plan's other targets first.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from router.policy import AdmissionSettings
from router.served import Shed

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

TICK_S = 0.005
"""How often :class:`LoopLag` asks to be woken."""
LAG_SAMPLES = 512
"""Lag samples kept (at one per tick, a few seconds' worth: longer than any call)."""
START_COST_S = 0.001
"""Event-loop time a request admitted and not yet started still costs before its first call
is sent: its decision, encoding the tensor, building and writing the request (0.3-1 ms on
a 2-core machine). A request queued behind it waits that long more."""


class LoopLag:
    """How late the event loop runs what is due, measured by a ticker that asks to be woken
    every ``interval_s`` and notes how late it woke (the lag every callback sees).

    :meth:`lag_s` is the lag now: the last sample, or, while the ticker itself is overdue,
    how overdue it is (a stalled loop cannot run the ticker, but a handler that does run can
    see how long the ticker has waited). :meth:`max_since` is the worst lag since a moment:
    the router's own delay over a call's lifetime.
    """

    def __init__(self, *, interval_s: float = TICK_S, clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._sleep = sleep
        self._samples: deque[tuple[float, float]] = deque(maxlen=LAG_SAMPLES)
        self._due: float | None = None
        self.last_s = 0.0

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
        self.last_s = lag
        return lag

    def _overdue_s(self) -> float:
        return max(self._clock() - self._due, 0.0) if self._due is not None else 0.0

    def lag_s(self) -> float:
        return max(self.last_s, self._overdue_s())

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


class Ticket:
    """An admitted request: waiting to start until its first call is sent, then started."""

    __slots__ = ("admission", "admitted_at", "delay_s", "pending")

    def __init__(self, admission: DeadlineAdmission, admitted_at: float, delay_s: float) -> None:
        self.admission, self.admitted_at = admission, admitted_at
        self.delay_s = delay_s
        """The router's own delay predicted for it when admitted."""
        self.pending = True

    def started(self) -> None:
        """Its first call was sent (idempotent)."""
        if self.pending:
            self.pending = False
            self.admission._started(self)

    def done(self) -> None:
        """It ended; if it never started, it stops counting as waiting."""
        if self.pending:
            self.pending = False
            self.admission.waiting = max(self.admission.waiting - 1, 0)


class DeadlineAdmission:
    """Admit a request only if the router can send its first call with time left.

    The router's own delay for a request arriving now is predicted as the loop's lag plus,
    for each request admitted before it and not yet started, the loop time that request
    still needs (``start_cost_s``). The lag covers the work the loop has queued for any
    reason (other requests' steps, arrivals being parsed); the count covers a burst that
    arrives within one turn of the loop, before the lag can show it. A request is refused
    (:class:`Shed`, scope ``late``) unless its deadline left after that delay is at least
    ``min_start_left_ms``. Refusing costs one check, so a herd is answered at the rate the
    router can refuse, not at the rate it can route.
    """

    def __init__(self, limits: InFlightLimits, *, lag: LoopLag | None = None,
                 clock: Clock = time.monotonic, start_cost_s: float = START_COST_S) -> None:
        self.limits = limits
        self.lag = lag or LoopLag(clock=clock)
        self._clock = clock
        self.waiting = 0
        self.start_cost_s = start_cost_s
        self.shed = 0
        self.admitted = 0
        self.last_start_s = 0.0
        """How long the last request that started waited for its first call to go."""

    @property
    def settings(self) -> AdmissionSettings:
        """The in-flight bounds' settings: one policy section configures both."""
        return self.limits.settings

    def delay_s(self) -> float:
        """The router's own delay before a request arriving now could send its first call."""
        return self.lag.lag_s() + self.waiting * self.start_cost_s

    def admit(self, received: float, deadline_ms: float) -> Ticket:
        """A ticket for a request that arrived at ``received`` with ``deadline_ms``, or
        :class:`Shed` when it cannot start in time."""
        now = self._clock()
        delay = self.delay_s()
        left_ms = deadline_ms - (now - received + delay) * 1000
        if left_ms < self.settings.min_start_left_ms:
            self.shed += 1
            age_ms = (now - received) * 1000
            raise Shed(f"the router cannot start the request in time: its own delay is "
                       f"{delay * 1000:.0f} ms ({self.waiting} waiting to start, loop lag "
                       f"{self.lag.lag_s() * 1000:.0f} ms), {deadline_ms - age_ms:.0f} ms of "
                       f"the deadline left", retry_after_s=self.settings.shed_retry_after_s,
                       scope="late")
        self.admitted += 1
        ticket = Ticket(self, now, delay)
        self.waiting += 1
        return ticket

    def _started(self, ticket: Ticket) -> None:
        self.waiting = max(self.waiting - 1, 0)
        self.last_start_s = self._clock() - ticket.admitted_at

    def snapshot(self) -> dict[str, Any]:
        return {
            "waiting_to_start": self.waiting,
            "loop_lag_ms": round(self.lag.lag_s() * 1000, 2),
            "last_start_ms": round(self.last_start_s * 1000, 2),
            "admitted": self.admitted,
            "shed_late": self.shed,
        }


class InFlightLimits:
    def __init__(self, settings: AdmissionSettings | None = None) -> None:
        self.settings = settings or AdmissionSettings()
        self.in_flight = 0
        self.per_target: dict[str, int] = {}
        self.shed = 0
        self.saturated: dict[str, int] = {}
        """Times each target was skipped for being at its bound."""

    def configure(self, settings: AdmissionSettings) -> None:
        self.settings = settings

    def try_enter(self) -> bool:
        if self.in_flight >= self.settings.max_in_flight:
            self.shed += 1
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight = max(self.in_flight - 1, 0)

    def has_room(self, target: str) -> bool:
        return self.per_target.get(target, 0) < self.settings.max_in_flight_per_target

    def try_claim(self, target: str) -> bool:
        if not self.has_room(target):
            self.saturated[target] = self.saturated.get(target, 0) + 1
            return False
        self.per_target[target] = self.per_target.get(target, 0) + 1
        return True

    def release(self, target: str) -> None:
        self.per_target[target] = max(self.per_target.get(target, 0) - 1, 0)

    def snapshot(self) -> dict[str, Any]:
        return {
            "in_flight": self.in_flight,
            "max_in_flight": self.settings.max_in_flight,
            "shed": self.shed,
            "per_target": dict(self.per_target),
            "max_in_flight_per_target": self.settings.max_in_flight_per_target,
            "saturated": dict(self.saturated),
        }

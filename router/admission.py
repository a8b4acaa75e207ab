"""Admission control of one router replica: its own lateness, and in-flight bounds (pure logic).

Overload must turn into fast refusals, not into queues: a refused request costs
microseconds and tells the client when to come back, a queued one holds memory
and misses its deadline anyway (SRE book, "Handling Overload": reject early and
cheaply). Nothing here waits; every check answers at once.

* :class:`~router.lag.LoopLag` measures how late the replica's event loop runs
  what is due. Every request handled on the loop waits that long at each step,
  before its first call is sent and again when the answer comes back.
* :class:`DeadlineAdmission` admits a request only if the router can send its
  first call in time: its remaining deadline must cover the loop's lag twice (to
  send the call and to read its answer) plus the router's own time for each
  request admitted before it and not yet started (``START_COST_S`` each), and
  still leave ``min_start_left_ms``. What cannot
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

import time
from collections.abc import Callable
from typing import Any, Protocol

from router.lag import LoopLag
from router.policy import AdmissionSettings
from router.served import Shed

Clock = Callable[[], float]

START_COST_S = 0.001
"""Event-loop time a request admitted and not yet started still costs before its first call
is sent: its decision, encoding the tensor, building and writing the request (0.3-1 ms on
a 2-core machine). A request queued behind it waits that long more."""


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

    The router's own delay for a request arriving now is predicted as the loop's lag twice
    (to send its first call, and to read the answer) plus, for each request admitted before
    it and not yet started, the loop time that request still needs (``start_cost_s``). The
    lag covers the work the loop has queued for any reason (other requests' steps, arrivals
    being parsed); the count covers a burst that arrives within one turn of the loop, before
    the lag can show it. A request is refused (:class:`Shed`, scope ``late``) unless its
    deadline left after that delay is at least ``min_start_left_ms``. Refusing costs one
    check, so a herd is answered at the rate the router can refuse, not at the rate it can
    route.
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
        """The router's own delay in a request arriving now: until its first call is sent
        (the lag, and the requests waiting to start ahead of it), then reading its answer
        (the lag again)."""
        return 2 * self.lag.lag_s() + self.waiting * self.start_cost_s

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


class InFlightCounts(Protocol):
    """Where the calls in flight at each target are counted (one count per target)."""

    def in_flight(self, target: str) -> int: ...
    def in_flight_counts(self) -> dict[str, int]: ...


class _Uncounted:
    def in_flight(self, target: str) -> int:
        return 0

    def in_flight_counts(self) -> dict[str, int]:
        return {}


class InFlightLimits:
    """The replica's bound on requests it runs at once, and the bound on its calls to each
    target. The calls in flight at a target are counted once, by ``counts`` (the target's
    estimator, :meth:`router.targets.TargetSet.in_flight`): this reads that count and keeps
    none of its own."""

    def __init__(self, settings: AdmissionSettings | None = None,
                 counts: InFlightCounts | None = None) -> None:
        self.settings = settings or AdmissionSettings()
        self.counts = counts or _Uncounted()
        self.in_flight = 0
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
        return self.counts.in_flight(target) < self.settings.max_in_flight_per_target

    def try_claim(self, target: str) -> bool:
        """Whether a call to ``target`` is within its bound (counted as saturated if not); the
        claim itself is counted where the calls in flight are."""
        if not self.has_room(target):
            self.saturated[target] = self.saturated.get(target, 0) + 1
            return False
        return True

    def snapshot(self) -> dict[str, Any]:
        return {
            "in_flight": self.in_flight,
            "max_in_flight": self.settings.max_in_flight,
            "shed": self.shed,
            "per_target": self.counts.in_flight_counts(),
            "max_in_flight_per_target": self.settings.max_in_flight_per_target,
            "saturated": dict(self.saturated),
        }

"""Per-target circuit breaker with outlier ejection (pure logic, injected clock).

A breaker guards the router against spending a request's deadline on a target
that is failing or hanging, and guards a sick target against being kept down
by traffic. Its states follow resilience4j's ``CircuitBreaker``:

* ``closed``: calls flow and their outcomes go into a sliding time window
  (:class:`~router.window.RollingCounts`). Once the window holds ``min_calls``
  calls, a failure rate >= ``failure_rate`` or a slow-call rate >=
  ``slow_call_rate`` trips the breaker; so do ``consecutive_failures``
  failures in a row (Envoy's ``consecutive_5xx``), which catches a target that
  just died long before its failures dominate the window.
* ``open``: the target is ejected; :meth:`CircuitBreaker.allows` is false.
  The ejection lasts ``base_ejection_ms * 2**level``, capped at
  ``max_ejection_ms``, where ``level`` counts the ejections in a row. Envoy's
  outlier detection grows ejections the same way (base ejection time times the
  number of ejections, capped at ``max_ejection_time``) and lowers the
  multiplier again while a host stays healthy: here each ``healthy_decay_ms``
  spent closed without tripping lowers ``level`` by one.
* ``half_open``: once the ejection is over, up to ``half_open_probes`` calls
  at a time are let through. The first probe that succeeds in time closes the
  breaker with a fresh window; a probe that fails or is slow re-opens it for
  the next, longer ejection.
* **down**: an ejected target whose active health check failed (killed, hung,
  held down, cut off) is known to be down. It stays ejected past the end of its
  ejection, with no trial call and no longer next ejection, until a health
  check passes; then it goes half-open at once (Envoy's
  ``successful_active_health_check_uneject_host``). So an outage of any length
  costs one ejection level, and the target is tried again within a probe
  interval of its return rather than after an ejection grown during the outage.

What this guarantees: a target that is failing calls receives at most
``half_open_probes`` calls per ejection, and the ejections get longer; one that
fails its health checks receives none until a check passes; a
flapping target is ejected for longer each time it relapses, so traffic does
not swing back and forth with it.

Outcomes are reported through the :class:`Permit` that :meth:`CircuitBreaker.acquire`
hands out. A permit from before a transition (a call that started while the
breaker was closed and ends after it opened) is counted nowhere: only the
state's own calls move it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from router.policy import BreakerSettings
from router.window import RollingCounts

log = logging.getLogger(__name__)

State = Literal["closed", "open", "half_open"]
MAX_LEVEL = 30
"""Doubling stops long before this; it only keeps ``2**level`` a small number."""


@dataclass(frozen=True)
class Transition:
    """One change of a breaker's state, as handed to ``on_transition`` (for metrics, logs)."""

    target: str
    from_state: State
    to_state: State
    reason: str
    at: float
    ejections: int
    """Ejections of this target so far, this one included."""
    ejection_ms: float
    """How long this ejection lasts; 0 unless ``to_state`` is ``open``."""


OnTransition = Callable[[Transition], None]


class Permit:
    """The right to make one call; report its outcome exactly once (later reports are ignored)."""

    __slots__ = ("_breaker", "_settled", "generation", "probe")

    def __init__(self, breaker: CircuitBreaker, generation: int, probe: bool) -> None:
        self._breaker = breaker
        self.generation = generation
        self.probe = probe
        self._settled = False

    def success(self, elapsed_ms: float) -> None:
        """The call answered; slower than ``slow_call_ms`` it counts as slow."""
        slow = elapsed_ms >= self._breaker.settings.slow_call_ms
        self._settle("slow" if slow else "success", f"slow call: {elapsed_ms:.0f} ms")

    def failure(self, reason: str) -> None:
        self._settle("failure", reason)

    def slow(self, reason: str) -> None:
        """The call was abandoned after running far longer than the target normally takes."""
        self._settle("slow", reason)

    def release(self) -> None:
        """The call ended without telling anything about the target (cancelled, not sent)."""
        self._settle(None, "")

    @property
    def settled(self) -> bool:
        return self._settled

    def _settle(self, outcome: str | None, reason: str) -> None:
        if not self._settled:
            self._settled = True
            self._breaker._settle(self, outcome, reason)


class CircuitBreaker:
    """The breaker of one target in one router replica. Not thread-safe (one event loop)."""

    def __init__(
        self,
        target: str,
        settings: BreakerSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_transition: OnTransition | None = None,
    ) -> None:
        self.target = target
        self.settings = settings or BreakerSettings()
        self._clock = clock
        self._on_transition = on_transition
        self._window = self._new_window()
        self._state: State = "closed"
        self._generation = 0
        self._open_until = 0.0
        self._level = 0
        self._healthy_since = clock()
        self._probes = 0
        self._streak = 0
        self._down = False
        self.ejections = 0
        self.transitions: dict[str, int] = {}
        self.last_transition: Transition | None = None

    def _new_window(self) -> RollingCounts:
        return RollingCounts(self.settings.window_s, ("calls", "failures", "slow"),
                             clock=self._clock)

    def configure(self, settings: BreakerSettings) -> None:
        """Apply new settings live; the state and the ejection level are kept."""
        resize = settings.window_s != self.settings.window_s
        self.settings = settings
        if resize:
            self._window = self._new_window()

    @property
    def state(self) -> State:
        self._tick()
        return self._state

    def allows(self) -> bool:
        """Whether a call may go to the target now (the decision skips it otherwise)."""
        self._tick()
        if self._state == "closed":
            return True
        return (self._state == "half_open" and not self._down
                and self._probes < self.settings.half_open_probes)

    def acquire(self) -> Permit | None:
        """Claim a call (a probe slot while half-open); ``None`` when not allowed."""
        if not self.allows():
            return None
        probe = self._state == "half_open"
        if probe:
            self._probes += 1
        return Permit(self, self._generation, probe)

    def probe_failed(self) -> None:
        """An active health check failed: if ejected, the target is down, not just erroring.
        A half-open one is ejected again (no trial is spent on it; no longer ejection either)
        and held until a check passes."""
        state = self.state
        if state == "half_open":
            self._move("open", "active health check failed")
            self._open_until = self._clock()
        if state != "closed":
            self._down = True

    def probe_succeeded(self) -> None:
        """An active health check passed. An ejected target that failed one since it was
        ejected (it was down: killed, hung, restarting) goes half-open at once, as with Envoy's
        ``successful_active_health_check_uneject_host``, so a restarted worker is probed
        within a probe interval of its return. A target that kept passing health checks
        while failing calls (a 503 storm, a flapping model) keeps its growing ejection."""
        state = self.state
        if state == "open" and self._down:
            self._move("half_open", "active health check passed")
        if state != "closed":
            self._down = False

    @property
    def down(self) -> bool:
        """Ejected, and its last health check failed: no trial call until one passes."""
        return self._down and self.state != "closed"

    def retry_after_s(self) -> float:
        """Seconds until the target may be tried again; 0 unless open."""
        self._tick()
        return max(self._open_until - self._clock(), 0.0) if self._state == "open" else 0.0

    def next_ejection_ms(self) -> float:
        """How long the next ejection would last."""
        self._tick()
        level = min(self._level, MAX_LEVEL)
        return min(self.settings.base_ejection_ms * 2.0**level, self.settings.max_ejection_ms)

    def _tick(self) -> None:
        now = self._clock()
        if self._state == "open" and now >= self._open_until and not self._down:
            self._move("half_open", "ejection over")
        elif self._state == "closed" and self._level:
            decay_s = self.settings.healthy_decay_ms / 1000
            periods = int((now - self._healthy_since) // decay_s)
            if periods > 0:
                self._level = max(self._level - periods, 0)
                self._healthy_since += periods * decay_s

    def _settle(self, permit: Permit, outcome: str | None, reason: str) -> None:
        self._tick()
        if permit.generation != self._generation:
            return
        if permit.probe:
            self._probes = max(self._probes - 1, 0)
            if outcome == "success":
                self._move("closed", "probe succeeded")
            elif outcome is not None:
                self._open(f"probe failed: {reason}")
            return
        if outcome is None or self._state != "closed":
            return
        self._window.add("calls")
        self._streak = self._streak + 1 if outcome == "failure" else 0
        if outcome != "success":
            self._window.add("failures" if outcome == "failure" else "slow")
        self._check(reason)

    def _check(self, reason: str) -> None:
        if self._streak >= self.settings.consecutive_failures:
            self._open(f"{self._streak} failures in a row, the last: {reason}")
            return
        counts = self._window.totals()
        calls = counts["calls"]
        if calls < self.settings.min_calls:
            return
        if counts["failures"] >= self.settings.failure_rate * calls:
            self._open(f"failure rate {counts['failures'] / calls:.0%} over {calls} calls")
        elif counts["slow"] >= self.settings.slow_call_rate * calls:
            self._open(f"slow-call rate {counts['slow'] / calls:.0%} over {calls} calls")

    def _open(self, reason: str) -> None:
        ejection_ms = self.next_ejection_ms()
        self._level = min(self._level + 1, MAX_LEVEL)
        self._open_until = self._clock() + ejection_ms / 1000
        self.ejections += 1
        self._move("open", reason, ejection_ms)

    def _move(self, to_state: State, reason: str, ejection_ms: float = 0.0) -> None:
        from_state, self._state = self._state, to_state
        self._generation += 1
        self._probes = 0
        self._streak = 0
        self._window.reset()
        if to_state != "half_open":
            self._down = False
        if to_state == "closed":
            self._healthy_since = self._clock()
        key = f"{from_state}->{to_state}"
        self.transitions[key] = self.transitions.get(key, 0) + 1
        event = Transition(self.target, from_state, to_state, reason, self._clock(),
                           self.ejections, ejection_ms)
        self.last_transition = event
        if self._on_transition is not None:
            try:
                self._on_transition(event)
            except Exception:
                log.exception("on_transition callback failed for %s", self.target)

    def snapshot(self) -> dict[str, Any]:
        """The breaker as ``GET /v1/targets`` shows it."""
        state = self.state
        counts = self._window.totals()
        calls = counts["calls"]
        last = self.last_transition
        return {
            "state": state,
            "allows": self.allows(),
            "window_calls": calls,
            "window_failures": counts["failures"],
            "window_slow": counts["slow"],
            "consecutive_failures": self._streak,
            "failure_rate": round(counts["failures"] / calls, 4) if calls else 0.0,
            "slow_call_rate": round(counts["slow"] / calls, 4) if calls else 0.0,
            "ejections": self.ejections,
            "ejection_level": self._level,
            "next_ejection_ms": self.next_ejection_ms(),
            "ejected_for_ms": round(self.retry_after_s() * 1000, 1),
            "down": self.down,
            "probes_in_flight": self._probes,
            "transitions": dict(self.transitions),
            "last_transition": None if last is None else {
                "from": last.from_state, "to": last.to_state, "reason": last.reason,
                "ago_s": round(self._clock() - last.at, 3),
            },
        }


class Breakers:
    """The breakers of one router replica, one per target name, made on first use."""

    def __init__(
        self,
        settings: BreakerSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_transition: OnTransition | None = None,
    ) -> None:
        self.settings = settings or BreakerSettings()
        self._clock = clock
        self._on_transition = on_transition
        self._breakers: dict[str, CircuitBreaker] = {}

    def __getitem__(self, target: str) -> CircuitBreaker:
        breaker = self._breakers.get(target)
        if breaker is None:
            breaker = CircuitBreaker(target, self.settings, clock=self._clock,
                                     on_transition=self._on_transition)
            self._breakers[target] = breaker
        return breaker

    def allows(self, target: str) -> bool:
        return self[target].allows()

    def forget(self, target: str) -> None:
        """Drop ``target``'s breaker (a worker that left the fleet): if a target of that name
        comes back, it starts closed, with no ejection history. Calls still in flight report
        to the breaker that gave them their permit."""
        self._breakers.pop(target, None)

    def configure(self, settings: BreakerSettings) -> None:
        self.settings = settings
        for breaker in self._breakers.values():
            breaker.configure(settings)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {name: breaker.snapshot() for name, breaker in self._breakers.items()}

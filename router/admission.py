"""In-flight bounds of one router replica: requests in progress, and calls per target (pure logic).

Overload must turn into fast refusals, not into queues: a refused request costs
microseconds and tells the client when to come back, a queued one holds memory
and misses its deadline anyway (SRE book, "Handling Overload": reject early and
cheaply). Nothing here waits; every check answers at once.

* The replica bound caps requests the executor runs at once; beyond it a
  request is shed before any work is done.
* The per-target bound caps calls from this replica to one target (Envoy's
  per-cluster ``max_requests`` circuit breaker); a saturated target is skipped
  like an ejected one, so load spills to the plan's other targets first.
"""

from __future__ import annotations

from typing import Any

from router.policy import AdmissionSettings


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

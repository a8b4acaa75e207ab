"""A retry budget: retries may add at most a fixed share of load (pure logic, injected clock).

Retries multiply load exactly when a service can least afford it. The SRE
book ("Addressing Cascading Failures") caps them per client at a share of
requests; Envoy's retry budget (``budget_percent`` of active requests, with
``min_retry_concurrency`` always allowed) and Finagle's ``RetryBudget``
(``percentCanRetry`` plus ``minRetriesPerSec`` over a ``ttl``) do the same.
Here, over the last ``budget_window_s``::

    retries <= max(budget_ratio * requests, budget_min_per_s * budget_window_s)

so that under heavy traffic retries add at most ``budget_ratio`` upstream
calls per request, and under light traffic a few retries per second are
always allowed.

Two ways to count a retry: :meth:`RetryBudget.try_spend` for a discretionary
one (another try at the same target, a hedge) that is refused once the budget
is spent; :meth:`RetryBudget.record_retry` for one the plan requires (a fallback
to the next target) that always goes ahead but still uses up budget, so that
discretionary retries stop first when fallbacks already add load.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from router.policy import RetrySettings
from router.window import RollingCounts


class RetryBudget:
    """The retry budget of one router replica, over all targets."""

    def __init__(
        self, settings: RetrySettings | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings or RetrySettings()
        self._clock = clock
        self._window = self._new_window()
        self.denied = 0

    def _new_window(self) -> RollingCounts:
        return RollingCounts(self.settings.budget_window_s, ("requests", "retries"),
                             clock=self._clock)

    def configure(self, settings: RetrySettings) -> None:
        resize = settings.budget_window_s != self.settings.budget_window_s
        self.settings = settings
        if resize:
            self._window = self._new_window()

    def allowance(self) -> float:
        """Retries the window may hold now."""
        s = self.settings
        floor = s.budget_min_per_s * s.budget_window_s
        return max(s.budget_ratio * self._window.total("requests"), floor)

    def record_request(self) -> None:
        self._window.add("requests")

    def record_retry(self) -> None:
        """Count a retry that goes ahead regardless (a fallback the plan asks for)."""
        self._window.add("retries")

    def try_spend(self) -> bool:
        """Take one discretionary retry from the budget; false (and nothing taken) when spent."""
        if self._window.total("retries") + 1 > self.allowance():
            self.denied += 1
            return False
        self._window.add("retries")
        return True

    def snapshot(self) -> dict[str, Any]:
        counts = self._window.totals()
        return {
            "window_s": self.settings.budget_window_s,
            "requests": counts["requests"],
            "retries": counts["retries"],
            "allowance": round(self.allowance(), 2),
            "denied": self.denied,
        }

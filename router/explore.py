"""Exploration: every target a policy may use keeps a small, bounded share of traffic.

The decision prices a target from what this replica learned of it: its latency,
its failures and, for a small model, how often its answers are unsure (the
cascade's escalation probability). A target that gets no traffic learns
nothing, so an estimate that is pessimistic or stale (the prior, never
corrected; the figures of an outage) can keep a target out of use for good: a
recovered, faster edge worker whose unsure-answer rate sat at the prior lost
every cascade to a neighbour whose rate had been learned, and never got the
traffic that would have corrected it. Bandit routers explore for this reason
(an epsilon share of traffic goes to the arms not chosen); this is a bounded
version that never spends the risk budget on it.

The rule: a target the request's policy allows for its quality, whose breaker
lets calls through, and that this replica has not called for ``idle_s`` gets
the request, when the best plan that starts on it (the other targets of its
quality set aside) is within the risk budget. Explorations stay within
``max_share`` of the requests of the last ``window_s`` (plus one per window,
so that a quiet router explores too; 0 turns exploring off); a target whose plan was not within
budget is not looked at again for ``idle_s``; a deployment scaled to zero is
never explored (a call would start a replica, and a GPU node with it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Sequence

from router.policy import RoutingPolicy
from router.view import TargetView
from router.viewset import exclusion
from router.window import RollingCounts

EXPLORE_IDLE_S = 2.0
"""A target not called for this long is due for an exploration call."""
EXPLORE_MAX_SHARE = 0.05
"""At most this share of requests explores (plus one per window)."""
EXPLORE_WINDOW_S = 10.0


class Explorer:
    """Which target, if any, a request should explore (pure logic, injected clock)."""

    def __init__(
        self,
        *,
        idle_s: float = EXPLORE_IDLE_S,
        max_share: float = EXPLORE_MAX_SHARE,
        window_s: float = EXPLORE_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if idle_s <= 0 or not 0 <= max_share <= 1:
            raise ValueError("idle_s must be > 0 and max_share within [0, 1]")
        self.idle_s = idle_s
        self.max_share = max_share
        self._clock = clock
        self._last: dict[str, float] = {}
        self._counts = RollingCounts(window_s, ("requests", "explored"), clock=clock)

    def called(self, target: str) -> None:
        """A call went to ``target`` (any call: primary, hedge, escalation, fallback)."""
        self._last[target] = self._clock()

    def due(self, views: Sequence[TargetView], policy: RoutingPolicy, quality: str,
            in_plan: Collection[str], skip: Collection[str] = ()) -> TargetView | None:
        """The target this request should explore: the one idle longest among those due but
        ``in_plan`` (the chosen plan's primary) and ``skip``, or ``None`` (nothing due, or the
        share is spent). Counts the request."""
        self._counts.add("requests")
        totals = self._counts.totals()
        if not self.max_share or totals["explored"] >= self.max_share * totals["requests"] + 1:
            return None
        now = self._clock()
        due = [v for v in views
               if v.name not in in_plan and v.name not in skip
               and now - self._last.get(v.name, -math.inf) >= self.idle_s
               and exclusion(v, policy, quality) is None]
        if not due:
            return None
        target = min(due, key=lambda v: self._last.get(v.name, -math.inf))
        self._last[target.name] = now
        return target

    def explored(self) -> None:
        """The request explores (its plan starts on the target :meth:`due` named)."""
        self._counts.add("explored")

    def snapshot(self) -> dict[str, float]:
        totals = self._counts.totals()
        return {"idle_s": self.idle_s, "max_share": self.max_share,
                "requests": totals["requests"], "explored": totals["explored"]}

"""What one router replica did lately, for the status page: bounded, in memory, pure.

:class:`Activity` keeps the last few minutes of routed requests in fixed time
buckets (placements per target and tier, requests answered within their
deadline, failures, shed), the upstream times of each target's recent answers
(its observed quantiles, beside what its estimator predicts) and a ring of the
most recent outcomes with the decision that placed each. Memory is bounded
whatever the traffic: a fixed number of buckets, each a few counters per
target, fixed-length rings, and at most ``MAX_TARGETS`` targets sampled.
``GET /v1/metrics/summary`` (:mod:`router.ui`) serves :meth:`Activity.summary`.

Like every other view of a replica (``GET /v1/targets``), it covers the
traffic this replica routed; Prometheus (:mod:`router.metrics`) sums over
replicas.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from router.plan import Decision

BUCKET_S = 10.0
BUCKETS = 30
RECENT = 40
SAMPLES = 256
"""Upstream times kept per target for its observed quantiles (the newest)."""
MAX_TARGETS = 256
EXPLAINED = 8
"""Recent outcomes whose whole decision table the summary carries (the newest)."""


@dataclass(frozen=True)
class Outcome:
    """One finished request as the router saw it."""

    at_s: float
    """When it finished, on the activity's clock."""
    status: int
    latency_ms: float
    deadline_ms: float
    target: str | None = None
    tier: str | None = None
    decision: Decision | None = None
    cost_usd: float = 0.0
    upstream_ms: float | None = None
    """The call that produced the answer: what the target's estimator predicts."""
    error: str | None = None

    @property
    def within_deadline(self) -> bool:
        return self.status == 200 and self.latency_ms <= self.deadline_ms

    def as_dict(self, now_s: float, explained: bool) -> dict[str, Any]:
        plan = self.decision.plan if self.decision else None
        view: dict[str, Any] = {
            "age_s": round(now_s - self.at_s, 3),
            "status": self.status,
            "target": self.target,
            "tier": self.tier,
            "latency_ms": round(self.latency_ms, 3),
            "deadline_ms": self.deadline_ms,
            "within_deadline": self.within_deadline,
            "plan": plan.describe() if plan else None,
            "predicted_p50_ms": round(plan.predicted_p50_ms, 3) if plan else None,
            "predicted_p_miss": round(plan.p_miss, 5) if plan else None,
            "cost_usd": self.cost_usd,
            "reason": self.decision.reason if self.decision else self.error,
            "policy": self.decision.policy if self.decision else None,
        }
        if explained and self.decision is not None:
            view["explanation"] = self.decision.explain()
        return view


@dataclass
class Bucket:
    start_s: float
    requests: int = 0
    within_deadline: int = 0
    failed: int = 0
    shed: int = 0
    placements: Counter[str] = field(default_factory=Counter)
    tiers: Counter[str] = field(default_factory=Counter)

    def add(self, outcome: Outcome, shed: bool) -> None:
        self.requests += 1
        self.within_deadline += outcome.within_deadline
        if outcome.status != 200:
            self.failed += 1
            self.shed += shed
        if outcome.target is not None:
            self.placements[outcome.target] += 1
        if outcome.tier is not None:
            self.tiers[outcome.tier] += 1

    def as_dict(self, now_s: float) -> dict[str, Any]:
        return {
            "age_s": round(now_s - self.start_s, 3),
            "requests": self.requests,
            "within_deadline": self.within_deadline,
            "slo_attainment": round(self.within_deadline / self.requests, 5)
            if self.requests else None,
            "failed": self.failed,
            "shed": self.shed,
            "placements": dict(sorted(self.placements.items())),
            "tiers": dict(sorted(self.tiers.items())),
        }


class Activity:
    """The recent past of one router replica, in ``buckets`` buckets of ``bucket_s``.

    A bucket starts at a multiple of ``bucket_s`` on the clock (outcomes come in clock
    order); buckets older than the window are dropped as new ones open, and a summary
    never reports one older than the window even if no request came since.
    """

    def __init__(self, *, bucket_s: float = BUCKET_S, buckets: int = BUCKETS,
                 recent: int = RECENT, clock: Callable[[], float] = time.monotonic) -> None:
        if bucket_s <= 0 or buckets < 1 or recent < 0:
            raise ValueError("bucket_s must be positive, buckets at least 1, recent >= 0")
        self.bucket_s = bucket_s
        self.window = buckets
        self._buckets: deque[Bucket] = deque(maxlen=buckets)
        self._recent: deque[Outcome] = deque(maxlen=recent)
        self._samples: dict[str, deque[tuple[float, float]]] = {}
        self._clock = clock

    def record(self, outcome: Outcome, *, shed: bool = False) -> None:
        start = (outcome.at_s // self.bucket_s) * self.bucket_s
        if not self._buckets or self._buckets[-1].start_s < start:
            self._buckets.append(Bucket(start))
        self._buckets[-1].add(outcome, shed)
        self._recent.append(outcome)
        if outcome.target is not None and outcome.upstream_ms is not None:
            self._sample(outcome.target, outcome.at_s, outcome.upstream_ms)

    def _sample(self, target: str, at_s: float, upstream_ms: float) -> None:
        samples = self._samples.get(target)
        if samples is None:
            if len(self._samples) >= MAX_TARGETS:  # targets come and go (the fleet)
                stalest = min(self._samples, key=lambda name: self._samples[name][-1][0])
                del self._samples[stalest]
            samples = self._samples[target] = deque(maxlen=SAMPLES)
        samples.append((at_s, upstream_ms))

    def observed(self, since_s: float) -> dict[str, dict[str, float | int]]:
        """Per target, p50 and p99 of the upstream times of its answers since ``since_s``."""
        views: dict[str, dict[str, float | int]] = {}
        for name, samples in sorted(self._samples.items()):
            values = sorted(ms for at, ms in samples if at >= since_s)
            if values:
                views[name] = {"count": len(values), "p50_ms": round(_quantile(values, 0.5), 3),
                               "p99_ms": round(_quantile(values, 0.99), 3)}
        return views

    def served(self, *, latency_ms: float, deadline_ms: float, target: str, tier: str,
               decision: Decision, cost_usd: float, upstream_ms: float) -> None:
        self.record(Outcome(self._clock(), 200, latency_ms, deadline_ms, target, tier,
                            decision, cost_usd, upstream_ms))

    def failed(self, *, status: int, latency_ms: float, deadline_ms: float, error: str,
               decision: Decision | None = None, shed: bool = False) -> None:
        self.record(Outcome(self._clock(), status, latency_ms, deadline_ms, decision=decision,
                            error=error), shed=shed)

    def summary(self) -> dict[str, Any]:
        """The window's buckets oldest first (empty ones included, so they chart evenly),
        totals over the window, and the recent outcomes newest first."""
        now = self._clock()
        current = (now // self.bucket_s) * self.bucket_s
        starts = [current - self.bucket_s * k for k in range(self.window - 1, -1, -1)]
        held = {b.start_s: b for b in self._buckets}
        buckets = [held.get(start) or Bucket(start) for start in starts]
        total = Bucket(starts[0])
        for b in buckets:
            total.requests += b.requests
            total.within_deadline += b.within_deadline
            total.failed += b.failed
            total.shed += b.shed
            total.placements.update(b.placements)
            total.tiers.update(b.tiers)
        recent = [o.as_dict(now, i < EXPLAINED) for i, o in enumerate(reversed(self._recent))
                  if o.at_s >= starts[0]]
        return {
            "bucket_s": self.bucket_s,
            "window_s": self.bucket_s * self.window,
            "buckets": [b.as_dict(now) for b in buckets],
            "totals": total.as_dict(now),
            "observed": self.observed(starts[0]),
            "recent": recent,
        }


def _quantile(ordered: list[float], q: float) -> float:
    """The nearest-rank quantile of a sorted, non-empty list."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

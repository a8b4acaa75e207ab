"""What the decision knows about one target at one instant (pure data).

A :class:`TargetView` is built by
:meth:`~router.estimator.TargetEstimator.view` for each request (or at a
bounded rate, for many targets) and read by :func:`router.decision.decide`;
it holds nothing mutable, so a decision is a pure function of its views.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

import numpy as np

from edgeroute.config import Quality, Tier
from router.distribution import Distribution

THRESHOLDS: np.ndarray = np.linspace(0.0, 1.0, 101)
"""Confidence thresholds at which an escalation table is given."""
THRESHOLDS.setflags(write=False)
_THRESHOLDS_T = tuple(THRESHOLDS.tolist())


@dataclass(frozen=True, eq=False)
class TargetView:
    name: str
    tier: Tier
    quality: Quality
    allowed: bool
    """False while the target's breaker is open (or it is otherwise out of rotation)."""
    latency: Distribution
    """Latency of a successful call, cold start included while no replica runs."""
    p_fail: float
    """Probability that a call fails (refused, 5xx, timeout with ample time)."""
    fail_fast_ms: float
    """Typical time until a failing call is known to have failed."""
    cost_usd: float
    """Marginal dollars of serving the request here."""
    ewma_latency_ms: float
    """Exponentially weighted mean of observed latency (the least-latency baseline's input)."""
    escalation: tuple[float, ...] = (0.0,) * len(THRESHOLDS)
    """P(top probability < t) at each of :data:`THRESHOLDS`: how often a cascade escalates."""
    in_flight: int = 0
    rows: int = 1
    observed: bool = True
    """False while the figures are priors: the target has not answered yet."""

    def escalation_probability(self, threshold: float) -> float:
        """Probability that this target's answer is less confident than ``threshold``."""
        return escalation_at(self.escalation, threshold)

    def meet_alone(self, remaining_ms: float) -> float:
        """Probability that a call started with ``remaining_ms`` left answers in time."""
        if remaining_ms <= 0.0:
            return 0.0
        return (1.0 - self.p_fail) * (1.0 - self.latency.p_exceed(remaining_ms))


def escalation_at(table: tuple[float, ...], threshold: float) -> float:
    """Linear interpolation of an escalation table (one value per :data:`THRESHOLDS`)."""
    if threshold <= 0.0:
        return table[0]
    if threshold >= 1.0:
        return table[-1]
    j = bisect_right(_THRESHOLDS_T, threshold)
    lo, hi = _THRESHOLDS_T[j - 1], _THRESHOLDS_T[j]
    a, b = table[j - 1], table[j]
    return a + (b - a) * (threshold - lo) / (hi - lo)

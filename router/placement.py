"""The placement decision: which target first, and in what order to fall back (pure logic).

Rule: among the allowed targets that are not cooling down, take the cheapest
whose predicted upper latency fits the remaining deadline; when none fits,
the one with the lowest predicted latency. ``quality="high"`` allows only
targets serving the large model. The remaining targets follow as fallbacks,
available ones first, those that fit first, then by predicted latency.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from edgeroute.config import Quality, Tier
from router.estimator import Prediction

RequestQuality = Literal["any", "high"]


@dataclass(frozen=True)
class Candidate:
    name: str
    tier: Tier
    quality: Quality
    available: bool
    prediction: Prediction
    cost_usd: float


@dataclass(frozen=True)
class Plan:
    order: tuple[Candidate, ...]
    """Primary first, then fallbacks; empty when no target is allowed."""
    reason: str

    @property
    def primary(self) -> Candidate | None:
        return self.order[0] if self.order else None


def allowed(candidate: Candidate, quality: RequestQuality) -> bool:
    return quality == "any" or candidate.quality == "large"


def choose(candidates: Sequence[Candidate], deadline_ms: float, quality: RequestQuality) -> Plan:
    eligible = [c for c in candidates if allowed(c, quality)]
    if not eligible:
        return Plan((), f"no target serves quality={quality}")

    def fits(c: Candidate) -> bool:
        return c.available and c.prediction.upper_ms() <= deadline_ms

    fitting = [c for c in eligible if fits(c)]
    if fitting:
        primary = min(fitting, key=lambda c: (c.cost_usd, c.prediction.mean_ms))
        reason = "cheapest target predicted to meet the deadline"
    else:
        pool = [c for c in eligible if c.available] or eligible
        primary = min(pool, key=lambda c: c.prediction.mean_ms)
        reason = "no target predicted to meet the deadline: fastest predicted"
    rest = sorted(
        (c for c in eligible if c is not primary),
        key=lambda c: (not c.available, not fits(c), c.prediction.mean_ms),
    )
    return Plan((primary, *rest), reason)

"""What the decision hands to the executor, and what an explanation shows (pure data).

A :class:`Plan` is a primary target, an optional hedge launched after a delay
if the primary has not answered, an optional cascade escalation when the
primary's answer is not confident enough, and ordered fallbacks for when
attempts fail. A :class:`Decision` is the chosen plan plus the table of every
candidate considered, for ``parameters.explain=true`` and ``edgeroute policy explain``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

PlanKind = Literal["single", "hedged", "cascade"]


@dataclass(frozen=True)
class Plan:
    kind: PlanKind
    primary: str
    fallbacks: tuple[str, ...] = ()
    hedge: str | None = None
    hedge_delay_ms: float | None = None
    escalate_to: str | None = None
    confidence_threshold: float | None = None
    p_miss: float = 0.0
    """Predicted probability of missing the deadline, fallbacks and hedge included."""
    expected_cost_usd: float = 0.0
    predicted_p50_ms: float = 0.0
    predicted_p99_ms: float = 0.0
    within_budget: bool = True
    expected_extra_ratio: float = 0.0
    """Expected extra requests a hedge adds, per request (0 without a hedge)."""

    @property
    def targets(self) -> tuple[str, ...]:
        """Every target the plan may call, in the order it may call them."""
        extra = tuple(t for t in (self.hedge, self.escalate_to) if t)
        return tuple(dict.fromkeys((self.primary, *extra, *self.fallbacks)))

    def describe(self) -> str:
        text = self.primary
        if self.hedge:
            text += f" hedged by {self.hedge} after {self.hedge_delay_ms:.1f} ms"
        if self.escalate_to:
            text += f", escalating to {self.escalate_to} below confidence " \
                    f"{self.confidence_threshold:.2f}"
        if self.fallbacks:
            text += f", then {', '.join(self.fallbacks)}"
        return text


@dataclass(frozen=True)
class CandidateRow:
    """One line of an explanation: a plan considered and why it won or lost."""

    plan: str
    p50_ms: float
    p99_ms: float
    p_miss: float
    cost_usd: float
    verdict: str
    """``chosen``, or why it lost: ``over risk budget``, ``dearer``, ``breaker open`` ..."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan, "p50_ms": round(self.p50_ms, 3), "p99_ms": round(self.p99_ms, 3),
            "p_miss": round(self.p_miss, 5), "cost_usd": self.cost_usd, "verdict": self.verdict,
        }


@dataclass(frozen=True)
class Decision:
    plan: Plan | None
    """``None``: rejected (no allowed target, or nothing within budget and the policy rejects)."""
    reason: str
    policy: str
    candidates: Sequence[CandidateRow] = field(default=())
    """Every plan considered; may be built lazily on first read (many targets)."""

    def explain(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "reason": self.reason,
            "plan": self.plan.describe() if self.plan else None,
            "candidates": [row.as_dict() for row in self.candidates],
        }

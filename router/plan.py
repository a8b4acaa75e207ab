"""What the decision hands to the executor, and what an explanation shows (pure data).

A :class:`Plan` is a primary target, an optional hedge launched after a delay
if the primary has not answered, an optional cascade escalation when the
primary's answer is not confident enough, and ordered fallbacks for when
attempts fail. It also carries the times the decision priced each of its
targets at (:class:`Timing`, from the latency distributions of the views), and
the rules that turn them into an attempt's timeout, the verdict on a call that
timed out, and whether an escalation still fits: the executor and the
simulator apply these, and derive no time of their own.
A :class:`Decision` is the chosen plan plus the table of every
candidate considered, for ``parameters.explain=true`` and ``edgeroute policy explain``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

PlanKind = Literal["single", "hedged", "cascade"]
TYPICAL_LEVEL = 0.5
UPPER_LEVEL = 0.99
"""The levels of a target's latency distribution a :class:`Timing` holds."""


class Timing(NamedTuple):
    """One target's latency as the decision priced it (ms, from its distribution)."""

    typical_ms: float
    """The median: a call is never cut before it had this long."""
    upper_ms: float
    """The p99: the time a fallback is left when the call before it is cut, the time left
    an escalation needs, and past which a call without an answer is the target's failure."""


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
    timing: Mapping[str, Timing] = field(default_factory=dict, compare=False)
    """The priced times of every target the plan may call (:attr:`targets`)."""

    def timeout_ms(self, target: str, following: str | None, left_ms: float,
                   min_attempt_ms: float, grace_ms: float) -> float:
        """The timeout of a call to ``target`` with ``left_ms`` of the deadline left, when
        ``following`` is the next target a failure would go to (``None``: none is).

        The deadline left, less ``following``'s upper time, a least attempt and the grace a
        timed-out call gets to finish cancelling, if that still gives the call its own
        typical time; else all of ``left_ms``. A call that runs past the cut is in the tail
        of its own distribution or hung (a call to a lost Ray node hangs rather than
        fails): the fallback, given its upper time, is then the better bet."""
        mine, then = self.timing.get(target), self.timing.get(following or "")
        if mine is None or then is None:
            return left_ms
        cut = left_ms - then.upper_ms - min_attempt_ms - grace_ms
        return cut if cut >= max(mine.typical_ms, min_attempt_ms) else left_ms

    def overdue(self, target: str, elapsed_ms: float) -> bool:
        """Whether a call to ``target`` that ran ``elapsed_ms`` unanswered is the target's
        failure: it had its upper time, which a healthy target exceeds one call in a
        hundred (always, without one). A tighter timeout says nothing of its health."""
        timing = self.timing.get(target)
        return timing is None or elapsed_ms >= timing.upper_ms

    def escalation_fits(self, left_ms: float) -> bool:
        """Whether ``left_ms`` still gives the escalation target its upper time."""
        timing = self.timing.get(self.escalate_to or "")
        return left_ms >= (timing.upper_ms if timing is not None else 0.0)

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

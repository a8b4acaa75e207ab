"""Candidate plans while a decision is made, and the explanation table it leaves behind.

A :class:`Scored` plan is cheap to enumerate: its risk and cost are computed
only when the decision needs them, in two steps (a lower bound on ``P_miss``
from the plan's own targets, :meth:`Scored.least_p_miss`, which rules most
plans out; then the fallbacks, :meth:`Scored.evaluate`), and its p50/p99 only
when the explanation is read. :class:`CandidateTable` is that
explanation: a lazy sequence of :class:`~router.plan.CandidateRow`, so a
decision over a thousand targets does not build a thousand rows nobody reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, overload

from router import risk
from router.plan import TYPICAL_LEVEL, UPPER_LEVEL, CandidateRow, Plan, PlanKind, Timing
from router.view import TargetView

CHOSEN = "chosen"
OVER_BUDGET = "over risk budget"
DEARER = "dearer"
SLOWER = "slower"
"""A faster plan won (``min-latency``), or one as cheap within ``cost_tie_ratio`` and faster."""
BREAKER_OPEN = "breaker open"
QUALITY = "quality"
NOT_ALLOWED = "not allowed by policy"
HEDGE_TOO_COSTLY = "hedge too costly"
CASCADE_PREFERRED = "cascade preferred"
"""A small model alone lost to a cascade or a large model that also meets the budget."""
FAILING = "failing"
"""Certain to fail (``p_fail`` 1): no plan starts on it or falls back to it."""
NOT_DRAWN = "not drawn"
"""A random or round-robin baseline drew another target."""
OTHER_TIER = "other tier"
"""An always-edge or always-cloud baseline does not start on this target's tier."""
NOT_SHORTLISTED = "not shortlisted"
"""Among many targets, a plan the shortlist left out that would have won: a pruning miss."""


class Judge(Protocol):
    """What prices a plan for one decision (the decision's context)."""

    def base(self, plan: Scored) -> risk.Base:
        """The plan's own targets: everything but its fallbacks."""

    def rest(self, plan: Scored) -> risk.Rest:
        """The plan's fallbacks, ordered."""


class Scored:
    """One candidate plan; ``evaluate`` fills in ``fallbacks``, ``p_miss`` and ``cost_usd``."""

    __slots__ = (
        "_figures",
        "_judge",
        "base",
        "cost_usd",
        "delay_ms",
        "escalate",
        "extra",
        "fallbacks",
        "floor",
        "kind",
        "klass",
        "p_miss",
        "partner",
        "place",
        "primary",
        "threshold",
        "verdict",
    )

    def __init__(self, kind: PlanKind, primary: TargetView, partner: TargetView | None,
                 klass: int, floor: float, judge: Judge | None = None,
                 place: tuple[int, ...] = (), threshold: float | None = None,
                 escalate: float = 0.0, delay_ms: float | None = None,
                 extra: float = 0.0) -> None:
        self.kind, self.primary, self.partner = kind, primary, partner
        self.klass = klass
        """0 or 1: a plan of class 1 wins only when no plan of class 0 meets the budget."""
        self.floor = floor
        """A lower bound on ``cost_usd``, known without evaluating (see :func:`cost_floor`)."""
        self.threshold, self.escalate, self.delay_ms = threshold, escalate, delay_ms
        self.place = place
        """Where the plan comes in the enumeration (the table's order)."""
        self.extra = extra
        """Expected extra requests per request (a hedge that fires)."""
        self.fallbacks: tuple[TargetView, ...] = ()
        self.p_miss = self.cost_usd = 0.0
        self.verdict: str | None = None
        self.base: risk.Base | None = None
        self._judge = judge
        """Prices the plan on the first :meth:`evaluate`, then is dropped."""
        self._figures: tuple[float, float] | None = None

    def least_p_miss(self) -> float:
        """A lower bound on ``P_miss``, known before the fallbacks are ordered."""
        if self._judge is None:
            return self.p_miss
        return self._own(self._judge).least_p_miss()

    def evaluate(self) -> Scored:
        judge = self._judge
        if judge is not None:
            self._judge = None
            rest = judge.rest(self)
            self.fallbacks = rest.targets
            self.p_miss, self.cost_usd = self._own(judge).with_rest(rest)
        return self

    def _own(self, judge: Judge) -> risk.Base:
        """The plan's own targets priced (once)."""
        if self.base is None:
            self.base = judge.base(self)
        return self.base

    def figures(self) -> tuple[float, float]:
        """Predicted p50 and p99 when the primary answers (failures left out)."""
        if self._figures is None:
            self._figures = (self._quantile(0.5), self._quantile(0.99))
        return self._figures

    def p50(self) -> float:
        return self.figures()[0]

    def _quantile(self, q: float) -> float:
        partner = self.partner
        if self.kind == "hedged" and partner is not None and self.delay_ms is not None:
            return risk.hedged_quantile(self.primary, partner, self.delay_ms, q)
        if self.kind == "cascade" and partner is not None:
            return risk.cascade_quantile(self.primary, partner, self.escalate, q)
        return self.primary.latency.quantile(q)

    def plan(self, within_budget: bool) -> Plan:
        self.evaluate()
        p50, p99 = self.figures()
        hedge = self.partner.name if self.kind == "hedged" and self.partner else None
        escalate_to = self.partner.name if self.kind == "cascade" and self.partner else None
        return Plan(
            kind=self.kind, primary=self.primary.name,
            fallbacks=tuple(v.name for v in self.fallbacks), hedge=hedge,
            hedge_delay_ms=self.delay_ms if hedge else None, escalate_to=escalate_to,
            confidence_threshold=self.threshold if escalate_to else None, p_miss=self.p_miss,
            expected_cost_usd=self.cost_usd, predicted_p50_ms=p50, predicted_p99_ms=p99,
            within_budget=within_budget, expected_extra_ratio=self.extra,
            timing={v.name: timing(v) for v in (self.primary, self.partner, *self.fallbacks)
                    if v is not None},
        )

    def row(self, verdict: str) -> CandidateRow:
        self.evaluate()
        p50, p99 = self.figures()
        return CandidateRow(self.plan(True).describe(), p50, p99, self.p_miss, self.cost_usd,
                            verdict)


_TYPICAL_KEY = ("quantile", TYPICAL_LEVEL)
_UPPER_KEY = ("quantile", UPPER_LEVEL)


def timing(view: TargetView) -> Timing:
    """The times of ``view``'s latency distribution a plan's executor applies (memoised on
    the distribution, which many decisions share)."""
    latency = view.latency
    return Timing(latency.derived(_TYPICAL_KEY, latency.quantile, TYPICAL_LEVEL),
                  latency.derived(_UPPER_KEY, latency.quantile, UPPER_LEVEL))


def cost_floor(primary: TargetView, partner: TargetView | None, share: float) -> float:
    """A lower bound on a plan's expected cost: its primary's price, plus the partner's times
    ``share``, the least probability that the partner is called (a cascade escalates, a hedge
    fires); fallbacks can only add to it."""
    if partner is None:
        return primary.cost_usd
    return primary.cost_usd + share * partner.cost_usd


def excluded_row(view: TargetView, verdict: str, deadline_ms: float) -> CandidateRow:
    """The row of a target no plan may start on."""
    latency = view.latency
    return CandidateRow(view.name, latency.quantile(0.5), latency.quantile(0.99),
                        1.0 - view.meet_alone(deadline_ms), view.cost_usd, verdict)


class CandidateTable(Sequence[CandidateRow]):
    """The rows of a decision, built on first read."""

    def __init__(self, build: Callable[[], list[CandidateRow]]) -> None:
        self._build: Callable[[], list[CandidateRow]] | None = build
        self._rows: tuple[CandidateRow, ...] = ()

    def _all(self) -> tuple[CandidateRow, ...]:
        if self._build is not None:
            self._rows = tuple(self._build())
            self._build = None
        return self._rows

    @overload
    def __getitem__(self, index: int) -> CandidateRow: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[CandidateRow]: ...

    def __getitem__(self, index: int | slice) -> CandidateRow | Sequence[CandidateRow]:
        return self._all()[index]

    def __len__(self) -> int:
        return len(self._all())

    def __iter__(self) -> Iterator[CandidateRow]:
        return iter(self._all())

    def __repr__(self) -> str:
        return f"CandidateTable({list(self._all())!r})"

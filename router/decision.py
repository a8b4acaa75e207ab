"""The placement decision: which plan serves a request, and why (pure logic).

:func:`decide` is one engine for every named policy (RouteLLM keeps a random
router beside every clever one; the benchmarks compare arms in one run):

* ``risk-optimal`` (``docs/policies.md``): enumerate plans over the
  targets a plan may start on (policy, quality, breaker not open): each
  target alone with ordered fallbacks, each hedged by another target, and
  each small model cascading to a large one (``quality=any``). Take the
  least expected cost, a miss counted at ``miss_penalty_usd`` (or the least
  p50, for ``min-latency``), among plans
  whose ``P_miss`` is within the risk budget; with a cascade preferred
  (:attr:`~router.policy.CascadeSettings.prefer_over_small`), plans answered
  by a small model alone come second (verdict ``cascade preferred``). If no
  plan is within budget, run the least risky one flagged
  ``within_budget=False``, or reject (``plan=None``), as the policy says.
  The risk and cost of each shape are in :mod:`router.risk`.
* baselines keep their one criterion for the primary and get the same
  ordered fallbacks, so that comparisons are about placement:
  ``always-edge`` / ``always-cloud`` (the fastest predicted target of that
  tier, never the other tier), ``random``, ``round-robin``,
  ``least-latency`` (lowest EWMA of observed latency, as LiteLLM's
  latency-based routing) and ``least-cost`` (as LiteLLM's cost-based routing).

Fallbacks: up to ``max_fallbacks`` other targets, in the order likeliest to
answer in time once the primary failed (:func:`router.risk.fallbacks`).
Plans are cheap to enumerate and priced only as far as the choice needs:
the search visits them by a lower bound on cost, passes over a plan whose own
targets already miss too often before ordering its fallbacks, and stops once
no remaining plan can win (:func:`_cheapest`, :func:`_least_risky`). Every
decision carries its candidate table (built when read), each row with its
verdict.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from router import risk
from router.candidates import (
    CASCADE_PREFERRED,
    CHOSEN,
    DEARER,
    HEDGE_TOO_COSTLY,
    NOT_DRAWN,
    NOT_SHORTLISTED,
    OTHER_TIER,
    OVER_BUDGET,
    SLOWER,
    CandidateTable,
    Scored,
    cost_floor,
    excluded_row,
)
from router.plan import CandidateRow, Decision
from router.policy import RoutingPolicy
from router.view import TargetView
from router.viewset import Eligibility, Shortlist, ViewSet

RequestQuality = Literal["any", "high"]
TOLERANCE = 1e-12


@dataclass
class BaselineState:
    """What the baselines carry from one decision to the next (round-robin's turn)."""

    turn: int = 0

    def next_turn(self) -> int:
        self.turn += 1
        return self.turn - 1


class _Context:
    """One decision's inputs; prices its plans (:class:`~router.candidates.Judge`), and keeps
    what several plans share: the fallbacks after each primary."""

    __slots__ = ("_rests", "cascading", "deadline_ms", "limit", "policy", "pool",
                 "prefer", "short")

    def __init__(self, deadline_ms: float, policy: RoutingPolicy, short: Shortlist,
                 cascading: bool = False) -> None:
        self.deadline_ms, self.policy, self.short = deadline_ms, policy, short
        self.pool = short.pool
        self.limit = policy.max_fallbacks
        self.cascading = cascading
        """Cascades are enumerated: enabled, ``quality=any``, small and large targets allowed."""
        self.prefer = cascading and policy.cascade.prefer_over_small
        self._rests: dict[int, risk.Rest] = {}

    def klass(self, view: TargetView) -> int:
        """1 for a plan answered by a small model alone while a cascade is preferred."""
        return 1 if self.prefer and view.quality == "small" else 0

    def single(self, view: TargetView) -> Scored:
        return Scored("single", view, None, self.klass(view), view.cost_usd, self)

    def after(self, primary: TargetView) -> risk.Rest:
        """Fallbacks after ``primary`` failed (shared by its single plan and its cascades).

        A failure is learned after ``fail_fast_ms``; when failures are hangs (a lost Ray
        node), ``fail_fast_ms`` grows to the timeouts. The plan's timeout rule
        (:meth:`~router.plan.Plan.timeout_ms`) cuts a call that runs past its typical time
        when the next fallback would otherwise lose its upper (p99) time, and both times are
        the ones written into the plan from these views: the fallbacks are planned as if the
        failure were known by the primary's p99 at the latest. Without that bound, a target
        whose failures are timeouts would be planned with no fallback at all."""
        found = self._rests.get(id(primary))
        if found is None:
            detect_ms = min(primary.fail_fast_ms, primary.latency.quantile(0.99))
            found = self._rests[id(primary)] = risk.fallbacks(
                self.pool, (primary,), self.deadline_ms - detect_ms, self.limit)
        return found

    def base(self, plan: Scored) -> risk.Base:
        kind, partner, deadline_ms = plan.kind, plan.partner, self.deadline_ms
        if kind == "single" or partner is None:
            return risk.single_base(plan.primary, deadline_ms)
        if kind == "cascade":
            return risk.cascade_base(plan.primary, partner, plan.escalate, deadline_ms)
        assert plan.delay_ms is not None
        return risk.hedged_base(plan.primary, partner, plan.delay_ms, deadline_ms, plan.extra)

    def rest(self, plan: Scored) -> risk.Rest:
        a, b = plan.primary, plan.partner
        if plan.kind != "hedged" or b is None or plan.delay_ms is None:
            return self.after(a)
        left = risk.hedge_rest_ms(a, b, plan.delay_ms, self.deadline_ms)
        return risk.fallbacks(self.pool, (a, b), left, self.limit)


def decide(
    views: Sequence[TargetView] | ViewSet,
    *,
    deadline_ms: float,
    quality: RequestQuality,
    rows: int,
    policy: RoutingPolicy,
    policy_name: str,
    rng: random.Random,
    state: BaselineState,
) -> Decision:
    """The plan for a request of ``rows`` rows with ``deadline_ms`` left (see the module doc)."""
    view_set = views if isinstance(views, ViewSet) else ViewSet(views)
    if view_set.rows is not None and view_set.rows != rows:
        raise ValueError(f"views were built for {view_set.rows} rows, not {rows}")
    elig = view_set.eligibility(policy, quality)
    if not elig.eligible:
        why = {verdict for _, verdict in elig.excluded} or {"no targets"}
        reason = f"no target may serve quality={quality} ({', '.join(sorted(why))})"
        return Decision(None, reason, policy_name, _table(elig, deadline_ms))
    short = view_set.shortlist(policy, quality, deadline_ms)
    if policy.strategy != "risk-optimal":
        return _baseline(_Context(deadline_ms, policy, short), elig, policy_name, rng, state)
    cascading = policy.cascade.enabled and quality == "any" and bool(short.small and short.large)
    return _risk_optimal(_Context(deadline_ms, policy, short, cascading), elig, policy_name)


def _enumerate(ctx: _Context) -> list[Scored]:
    """Every plan over the shortlist, unevaluated, in enumeration order (singles, cascades,
    hedges), each with its class, its cost floor and its place in that order."""
    short, policy, prefer = ctx.short, ctx.policy, ctx.prefer
    plans = [Scored("single", t, None, ctx.klass(t), t.cost_usd, ctx, (0, i))
             for i, t in enumerate(short.primaries)]
    if ctx.cascading:
        threshold = policy.cascade.confidence_threshold
        for i, s in enumerate(short.small):
            escalate = s.escalation_probability(threshold)
            share = (1 - s.p_fail) * escalate
            plans += [Scored("cascade", s, e, 0, cost_floor(s, e, share), ctx, (1, i, j),
                             threshold, escalate)
                      for j, e in enumerate(short.large) if e is not s]
    hedge = policy.hedge
    if hedge.enabled:
        most = hedge.max_extra_ratio + TOLERANCE
        for i, a in enumerate(short.hedged):
            delay = max(hedge.min_delay_ms, a.latency.quantile(hedge.delay_quantile))
            if delay >= ctx.deadline_ms:
                continue
            extra = risk.hedge_extra(a, delay)
            small = prefer and a.quality == "small"
            for j, b in enumerate(short.partners):
                if b is a:
                    continue
                klass = 1 if small or (prefer and b.quality == "small") else 0
                plan = Scored("hedged", a, b, klass, cost_floor(a, b, extra), ctx, (2, i, j),
                              None, 0.0, delay, extra)
                if extra > most:
                    plan.verdict = HEDGE_TOO_COSTLY
                plans.append(plan)
    return plans


def _feasible(plan: Scored, budget: float) -> bool:
    return plan.verdict is None and plan.p_miss <= budget + TOLERANCE


def _floor(plan: Scored) -> float:
    return plan.floor


def _ruled_out(plan: Scored, budget: float) -> bool:
    """Not within ``budget`` whatever its fallbacks (decided before ordering them)."""
    return plan.verdict is not None or plan.least_p_miss() > budget + 2 * TOLERANCE


def _select(policy: RoutingPolicy, plans: list[Scored]) -> Scored | None:
    """The best plan within budget: of class 0 if one qualifies, else of class 1."""
    for klass in (0, 1):
        of_class = [p for p in plans if p.klass == klass]
        if policy.objective == "min-latency":
            best = _fastest(of_class, policy.risk_budget)
        else:
            best = _cheapest(of_class, policy)
        if best is not None:
            return best
    return None


def _fastest(plans: list[Scored], budget: float) -> Scored | None:
    feasible = [p for p in plans if not _ruled_out(p, budget) and _feasible(p.evaluate(), budget)]
    return min(feasible, key=lambda p: (p.p50(), p.cost_usd), default=None)


def _cheapest(plans: list[Scored], policy: RoutingPolicy) -> Scored | None:
    """The least expected cost within budget, by branch and bound: plans are visited in order
    of their lower bound on cost; once the best so far beats the next bound, the rest cannot
    win and stay unevaluated (the table evaluates them if it is read). A plan whose own targets
    already miss too often is passed over before its fallbacks are ordered."""
    budget, penalty, tie = policy.risk_budget, policy.miss_penalty_usd, policy.cost_tie_ratio
    best: Scored | None = None
    best_cost = 0.0
    for plan in sorted(plans, key=_floor):
        if best is not None and plan.floor > best_cost * (1 + tie):
            break
        if _ruled_out(plan, budget):
            continue
        plan.evaluate()
        if not _feasible(plan, budget):
            continue
        cost = plan.cost_usd + penalty * plan.p_miss
        if best is None or _cheaper(cost, plan, best_cost, best, tie):
            best, best_cost = plan, cost
    return best


def _least_risky(plans: list[Scored]) -> Scored:
    """The plan least likely to miss (then the cheaper, then the first enumerated), among those
    with no verdict against them if any: by branch and bound on :meth:`Scored.least_p_miss`."""
    best: Scored | None = None
    for plan in sorted(plans, key=Scored.least_p_miss):
        if best is not None and plan.least_p_miss() > best.p_miss:
            break
        if plan.verdict is not None:
            continue
        plan.evaluate()
        if best is None or _risk_order(plan) < _risk_order(best):
            best = plan
    if best is None:
        return min((p.evaluate() for p in plans), key=_risk_order)
    return best


def _risk_order(plan: Scored) -> tuple[float, float, tuple[int, ...]]:
    return plan.p_miss, plan.cost_usd, plan.place


def _cheaper(cost: float, plan: Scored, best_cost: float, best: Scored, tie: float) -> bool:
    """Clearly cheaper, or as cheap within ``tie`` and faster (then less risky)."""
    if cost < best_cost * (1 - tie):
        return True
    if cost > best_cost * (1 + tie):
        return False
    return (plan.p50(), plan.p_miss, cost) < (best.p50(), best.p_miss, best_cost)


def _risk_optimal(ctx: _Context, elig: Eligibility, policy_name: str) -> Decision:
    policy, plans = ctx.policy, _enumerate(ctx)
    chosen = _select(policy, plans)
    within = chosen is not None
    what = "fastest p50" if policy.objective == "min-latency" else "least expected cost"
    if chosen is not None:
        reason = f"{what} within risk budget {policy.risk_budget:g}"
        if chosen.klass == 0 and any(p.klass for p in plans):
            reason += " (small models alone rank below a cascade)"
        elif chosen.klass:
            reason += ": no cascade or large-model plan met it, small model alone"
    else:
        chosen = _least_risky(plans)
        reason = f"no plan meets risk budget {policy.risk_budget:g}"
        if policy.on_infeasible == "reject":
            chosen = None
            reason += ": rejected"
        else:
            reason += f": least risky plan (P_miss {chosen.p_miss:.4f})"
    table = _table(elig, ctx.deadline_ms, _judged(ctx, plans, elig),
                   functools.partial(_verdict, chosen=chosen, policy=policy))
    return Decision(chosen.plan(within) if chosen else None, reason, policy_name, table)


def _verdict(plan: Scored, chosen: Scored | None, policy: RoutingPolicy) -> str:
    if plan is chosen:
        return CHOSEN
    plan.evaluate()
    if plan.verdict is not None:
        return plan.verdict
    if chosen is None or not _feasible(plan, policy.risk_budget):
        return OVER_BUDGET
    if plan.klass > chosen.klass:
        return CASCADE_PREFERRED
    if policy.objective == "min-latency":
        lost = (plan.klass, plan.p50(), plan.cost_usd) >= (chosen.klass, chosen.p50(),
                                                           chosen.cost_usd)
        return SLOWER if lost else NOT_SHORTLISTED
    penalty, tie = policy.miss_penalty_usd, policy.cost_tie_ratio
    cost = plan.cost_usd + penalty * plan.p_miss
    chosen_cost = chosen.cost_usd + penalty * chosen.p_miss
    if plan.klass < chosen.klass or _cheaper(cost, plan, chosen_cost, chosen, tie):
        return NOT_SHORTLISTED
    return DEARER if cost > chosen_cost * (1 + tie) else SLOWER


def _table(elig: Eligibility, deadline_ms: float,
           judged: Callable[[], Iterable[Scored]] = tuple,
           verdict: Callable[[Scored], str] = lambda plan: CHOSEN) -> CandidateTable:
    """The lazy explanation: the chosen plan, every other plan judged, then the targets no plan
    may start on."""

    def build() -> list[CandidateRow]:
        rows = [plan.row(verdict(plan)) for plan in judged()]
        rows.sort(key=lambda r: r.verdict != CHOSEN)
        return rows + [excluded_row(v, why, deadline_ms) for v, why in elig.excluded]

    return CandidateTable(build)


def _judged(ctx: _Context, plans: list[Scored],
            elig: Eligibility) -> Callable[[], Iterable[Scored]]:
    """The plans enumerated, then single plans of the targets the shortlist left out."""

    def judged() -> Iterable[Scored]:
        yield from plans
        if not ctx.short.complete:
            seen = {p.primary.name for p in plans if p.kind == "single"}
            yield from (ctx.single(v) for v in elig.eligible if v.name not in seen)

    return judged


def _baseline(ctx: _Context, elig: Eligibility, policy_name: str, rng: random.Random,
              state: BaselineState) -> Decision:
    strategy, eligible = ctx.policy.strategy, elig.eligible
    loser = NOT_DRAWN
    if strategy in ("always-edge", "always-cloud"):
        tier = "edge" if strategy == "always-edge" else "cloud"
        tiered = [v for v in eligible if v.tier == tier]
        if not tiered:
            return Decision(None, f"{strategy}: no {tier} target may serve this request",
                            policy_name, _table(elig, ctx.deadline_ms))
        primary = min(tiered, key=lambda v: (v.latency.quantile(0.5), v.cost_usd))
        loser, why = SLOWER, f"fastest predicted {tier} target"
    elif strategy == "random":
        primary, why = eligible[rng.randrange(len(eligible))], "drawn at random"
    elif strategy == "round-robin":
        primary, why = eligible[state.next_turn() % len(eligible)], "next in turn"
    elif strategy == "least-latency":
        primary = min(eligible, key=lambda v: v.ewma_latency_ms)
        loser, why = SLOWER, "lowest EWMA latency"
    else:
        primary = min(eligible, key=lambda v: (v.cost_usd, v.ewma_latency_ms))
        loser, why = DEARER, "lowest marginal cost"
    chosen = ctx.single(primary).evaluate()
    within = chosen.p_miss <= ctx.policy.risk_budget + TOLERANCE

    def verdict(plan: Scored) -> str:
        if plan.primary is primary:
            return CHOSEN
        if strategy in ("always-edge", "always-cloud") and plan.primary.tier != primary.tier:
            return OTHER_TIER
        return loser

    def judged() -> Iterable[Scored]:
        yield chosen
        yield from (ctx.single(v) for v in eligible if v is not primary)

    return Decision(chosen.plan(within), f"{strategy} baseline: {why}", policy_name,
                    _table(elig, ctx.deadline_ms, judged, verdict))

"""Probability of missing the deadline, and expected cost, of each kind of plan (pure math).

All three shapes share one model of a call to target ``t`` with ``r`` ms left:
it fails with ``p_fail``, learned after ``fail_fast_ms``, and otherwise
answers in time with ``1 - P(L_t > r)``. Targets are taken as independent.

* **single with fallbacks** ``t0, f1, f2 ...``: a failed call hands over to
  the next target with what is left after ``fail_fast_ms``; a slow call is
  cut at the deadline (every attempt's timeout is the time left).
* **hedged** (Dean and Barroso, "The Tail at Scale", CACM 2013): the hedge
  ``b`` starts at ``h`` if the primary ``a`` has not answered, so
  ``P_miss = P(L_a > D) * P(L_b > D - h)`` when neither fails; a failed
  primary starts ``b`` at once (at ``min(fail_fast_ms, h)``). Extra requests:
  ``(1 - p_fail_a) * P(L_a > h)``.
* **cascade**: the small model ``s`` answers; with the escalation
  probability ``pi`` its answer is unsure and the large model ``e`` is asked
  with what is left, so the escalated path meets the deadline when
  ``L_s + L_e <= D`` (the convolution, memoised per pair of tables). A late
  escalation counts as a miss; an executor that escalates only when enough
  time is left, or returns the small answer at the deadline, does no worse,
  so the figure is an upper bound.

Each shape is priced in two steps: its own targets (:class:`Base`), then its
fallbacks, which only add ``weight * rest.meet`` (``weight``: the probability
that the plan's own targets all failed). The first step alone bounds
``P_miss`` from below, which lets the decision pass over a plan before ordering
its fallbacks.

Every ``P_miss`` here is non-increasing in the deadline for a fixed plan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from router.distribution import Distribution
from router.view import TargetView


def chain(targets: Sequence[TargetView], remaining_ms: float) -> tuple[float, float]:
    """``(P(answered in time), expected cost)`` of trying ``targets`` in order, each after the
    previous one failed, while time is left."""
    meet = cost = 0.0
    reach = 1.0
    for view in targets:
        if remaining_ms <= 0.0 or reach == 0.0:
            break
        meet += reach * (1.0 - view.p_fail) * (1.0 - view.latency.p_exceed(remaining_ms))
        cost += reach * view.cost_usd
        reach *= view.p_fail
        remaining_ms -= view.fail_fast_ms
    return meet, cost


def single(primary: TargetView, rest: Rest, deadline_ms: float) -> tuple[float, float]:
    """``(P_miss, expected cost)`` of ``primary`` then the fallbacks summarised by ``rest``."""
    return single_base(primary, deadline_ms).with_rest(rest)


def single_base(primary: TargetView, deadline_ms: float) -> Base:
    """The :class:`Base` of ``primary`` alone."""
    if deadline_ms <= 0.0:
        return Base(0.0, 0.0, 0.0)
    pf = primary.p_fail
    return Base((1.0 - pf) * (1.0 - primary.latency.p_exceed(deadline_ms)), primary.cost_usd, pf)


def hedged(
    a: TargetView, b: TargetView, delay_ms: float, rest: Rest, deadline_ms: float
) -> tuple[float, float, float]:
    """``(P_miss, expected cost, expected extra requests)`` of ``a`` hedged by ``b`` after
    ``delay_ms``; the fallbacks of ``rest`` (started at :func:`hedge_rest_ms`) follow once
    both failed."""
    extra = hedge_extra(a, delay_ms)
    p_miss, cost = hedged_base(a, b, delay_ms, deadline_ms, extra).with_rest(rest)
    return p_miss, cost, extra


def hedge_extra(a: TargetView, delay_ms: float) -> float:
    """Expected extra requests of hedging ``a`` after ``delay_ms``: ``a`` answered, but late."""
    return (1.0 - a.p_fail) * a.latency.p_exceed(delay_ms)


def hedged_base(a: TargetView, b: TargetView, delay_ms: float, deadline_ms: float,
                extra: float) -> Base:
    """The :class:`Base` of ``a`` hedged by ``b`` (``extra``: :func:`hedge_extra`)."""
    pa, pb = a.p_fail, b.p_fail
    late_a = a.latency.p_exceed(deadline_ms)
    meet_ok = (1.0 - late_a) + late_a * b.meet_alone(deadline_ms - delay_ms)
    rescued = b.meet_alone(deadline_ms - min(a.fail_fast_ms, delay_ms))
    return Base((1.0 - pa) * meet_ok + pa * rescued,
                a.cost_usd + (extra + pa) * b.cost_usd, pa * pb)


def hedge_rest_ms(a: TargetView, b: TargetView, delay_ms: float, deadline_ms: float) -> float:
    """Time left for the fallbacks of a hedged plan once both ``a`` and ``b`` failed."""
    return deadline_ms - min(a.fail_fast_ms, delay_ms) - b.fail_fast_ms


def cascade(
    small: TargetView, large: TargetView, escalate: float, rest: Rest, deadline_ms: float
) -> tuple[float, float]:
    """``(P_miss, expected cost)`` of ``small`` escalating to ``large`` with probability
    ``escalate``; the fallbacks of ``rest`` follow when ``small`` fails."""
    return cascade_base(small, large, escalate, deadline_ms).with_rest(rest)


def cascade_base(small: TargetView, large: TargetView, escalate: float,
                 deadline_ms: float) -> Base:
    """The :class:`Base` of ``small`` escalating to ``large``."""
    ps = small.p_fail
    both, offset = small.latency.sum_with(large.latency)
    escalated = (1.0 - large.p_fail) * (1.0 - both.p_exceed(deadline_ms - offset))
    meet_ok = (1.0 - escalate) * (1.0 - small.latency.p_exceed(deadline_ms)) + escalate * escalated
    return Base((1.0 - ps) * meet_ok, small.cost_usd + (1.0 - ps) * escalate * large.cost_usd, ps)


def _invert(survival: Callable[[float], float], lo: float, hi: float, level: float) -> float:
    """The least ``x`` in ``[lo, hi]`` with ``survival(x) <= level`` (``survival``
    non-increasing), by regula falsi with the Illinois step, to 1% of the bracket."""
    above, below = survival(lo) - level, survival(hi) - level
    if above <= 0.0:
        return lo
    if below > 0.0:
        return hi
    tolerance, side = (hi - lo) * 1e-2, 0
    for _ in range(12):
        x = hi - below * (hi - lo) / (below - above)
        fx = survival(x) - level
        if fx > 0.0:
            lo, above = x, fx
            if side < 0:
                below *= 0.5
            side = -1
        else:
            hi, below = x, fx
            if side > 0:
                above *= 0.5
            side = 1
        if hi - lo <= tolerance:
            break
    return hi


def hedged_quantile(a: TargetView, b: TargetView, delay_ms: float, q: float) -> float:
    """Latency quantile of ``min(L_a, delay + L_b)`` (failures left out; memoised on the
    primary's unshifted table)."""
    la, lb = a.latency, b.latency
    if la.p_exceed(delay_ms) <= 1.0 - q:
        return la.quantile(q)
    key = ("hedged", q, delay_ms, la.offset, lb.origin, lb.offset)
    return la.origin.derived(key, _hedged_quantile, la, lb, delay_ms, q)


def _hedged_quantile(la: Distribution, lb: Distribution, delay_ms: float, q: float) -> float:
    top = min(la.quantile(q), delay_ms + lb.quantile(q))
    return _invert(lambda x: la.p_exceed(x) * lb.p_exceed(x - delay_ms), delay_ms, top, 1.0 - q)


def cascade_quantile(small: TargetView, large: TargetView, escalate: float, q: float) -> float:
    """Latency quantile of ``L_s`` plus, with probability ``escalate``, ``L_e`` (memoised on
    the pair's sum table, so a cascade chosen again costs a lookup)."""
    ls = small.latency
    both, offset = ls.sum_with(large.latency)
    key = ("cascade", q, escalate, ls.offset, offset)
    return both.derived(key, _cascade_quantile, ls, both, offset, escalate, q)


def _cascade_quantile(ls: Distribution, both: Distribution, offset: float, escalate: float,
                      q: float) -> float:
    def survival(x: float) -> float:
        return (1.0 - escalate) * ls.p_exceed(x) + escalate * both.p_exceed(x - offset)

    return _invert(survival, ls.quantile(q), both.quantile(q) + offset, 1.0 - q)


class Rest(NamedTuple):
    """Ordered fallbacks and what they add: ``P(answered in time)`` and expected cost, given
    that they start (after the plan's own targets failed) with the time they were ordered for."""

    targets: tuple[TargetView, ...] = ()
    meet: float = 0.0
    cost_usd: float = 0.0


class Base(NamedTuple):
    """A plan before its fallbacks: ``P(answered in time)`` and expected cost from its own
    targets, and ``weight``, the probability that they all failed and the fallbacks run. Every
    shape is then ``meet + weight * rest.meet`` and ``cost + weight * rest.cost``."""

    meet: float
    cost_usd: float
    weight: float

    def with_rest(self, rest: Rest) -> tuple[float, float]:
        """``(P_miss, expected cost)`` with the fallbacks of ``rest``."""
        return (max(1.0 - (self.meet + self.weight * rest.meet), 0.0),
                self.cost_usd + self.weight * rest.cost_usd)

    def least_p_miss(self) -> float:
        """A lower bound on ``P_miss`` whatever the fallbacks (they answer at most always)."""
        return max(1.0 - (self.meet + self.weight), 0.0)


NO_REST = Rest()
EXACT_UP_TO = 5
"""Fallback candidates (after the plan's own targets) up to which their best order is searched
for; beyond, the greedy order stands (a longer deadline may then raise P_miss slightly)."""
IMPROVEMENT = 1e-12
"""How much likelier to answer in time another order must be to replace the greedy one."""


def fallbacks(
    pool: Sequence[TargetView], exclude: Sequence[TargetView], remaining_ms: float, limit: int
) -> Rest:
    """Up to ``limit`` targets of ``pool`` (less ``exclude``) to try in turn with
    ``remaining_ms`` left, with their chained risk and cost.

    The order is greedy, least likely to miss alone first, then the cheaper, unless another
    order is likelier to answer in time: greedy is not always best (a target that fails less
    often leaves the next one more time), and ranking by it alone let a longer deadline raise
    a plan's P_miss. Up to :data:`EXACT_UP_TO` candidates the best order is found (branch and
    bound), so the chain's ``meet`` never falls as ``remaining_ms`` grows: it is within
    :data:`IMPROVEMENT` of a maximum over fixed orders, each non-decreasing in the time left.
    """
    if limit <= 0 or remaining_ms <= 0.0:
        return NO_REST
    ranked = [((v.p_fail - 1.0) * (1.0 - v.latency.p_exceed(remaining_ms)), v.cost_usd, i)
              for i, v in enumerate(pool) if v not in exclude]
    if not ranked:
        return NO_REST
    if len(ranked) > 1:
        ranked.sort()
    greedy = _rest(tuple(pool[i] for _, _, i in ranked[:limit]), -ranked[0][0], remaining_ms)
    if limit == 1 or len(ranked) == 1 or len(ranked) > EXACT_UP_TO:
        return greedy
    floor = greedy.meet + IMPROVEMENT
    if len(ranked) == 2:
        (first, _, i), (second, _, j) = ranked
        if -second + pool[j].p_fail * -first <= floor:
            return greedy
        better = _rest((pool[j], pool[i]), -second, remaining_ms)
        return better if better.meet > floor else greedy
    candidates = [(-key, pool[i]) for key, _, i in ranked]
    found = _better_order(candidates, remaining_ms, limit, floor)
    if found is None:
        return greedy
    order = found[1]
    order += tuple(v for _, v in candidates if v not in order)[:limit - len(order)]
    better = _rest(order, next(m for m, v in candidates if v is order[0]), remaining_ms)
    return better if better.meet > floor else greedy


def _rest(chosen: tuple[TargetView, ...], first_meet: float, remaining_ms: float) -> Rest:
    """The :class:`Rest` of trying ``chosen`` in turn; ``first_meet``: the first one's
    ``P(answered in time)`` with ``remaining_ms`` left."""
    first = chosen[0]
    rest_meet, rest_cost = chain(chosen[1:], remaining_ms - first.fail_fast_ms)
    pf = first.p_fail
    return Rest(chosen, first_meet + pf * rest_meet, first.cost_usd + pf * rest_cost)


def _better_order(
    candidates: Sequence[tuple[float, TargetView]], left_ms: float, depth: int, floor: float
) -> tuple[float, tuple[TargetView, ...]] | None:
    """``(P(answered in time), order)`` of the likeliest chain of up to ``depth`` of
    ``candidates`` (each with its own ``P(answered in time)`` with ``left_ms`` left) if it is
    above ``floor``, else ``None``. Depth first; a first target is skipped when even the best
    conceivable rest (:func:`_chain_bound`) cannot lift it above the best found."""
    best: tuple[float, tuple[TargetView, ...]] | None = None
    worst = max(v.p_fail for _, v in candidates)
    meets = sorted((m for m, _ in candidates), reverse=True)
    for k, (meet, view) in enumerate(candidates):
        pf = view.p_fail
        tail: tuple[TargetView, ...] = ()
        if depth > 1 and pf > 0.0 and len(meets) > 1:
            top = meets[1] if meet == meets[0] else meets[0]
            if meet + pf * _chain_bound(top, worst, depth - 1) <= floor:
                continue
            left = left_ms - view.fail_fast_ms
            inner = [((1.0 - w.p_fail) * (1.0 - w.latency.p_exceed(left)) if left > 0.0 else 0.0,
                      w) for i, (_, w) in enumerate(candidates) if i != k]
            found = _better_order(inner, left, depth - 1, (floor - meet) / pf)
            if found is not None:
                meet, tail = meet + pf * found[0], found[1]
        if meet > floor:
            best, floor = (meet, (view, *tail)), meet
    return best


def _chain_bound(top: float, worst: float, depth: int) -> float:
    """An upper bound on ``P(answered in time)`` of any chain of ``depth`` targets, each
    answering alone with at most ``top`` and failing with at most ``worst``."""
    bound = 0.0
    for _ in range(depth):
        bound = min(1.0, top + worst * bound)
    return bound

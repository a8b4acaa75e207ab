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

Every ``P_miss`` here is non-increasing in the deadline for a fixed plan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

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
    if deadline_ms <= 0.0:
        return 1.0, 0.0
    pf = primary.p_fail
    meet = (1.0 - pf) * (1.0 - primary.latency.p_exceed(deadline_ms)) + pf * rest.meet
    return max(1.0 - meet, 0.0), primary.cost_usd + pf * rest.cost_usd


def hedged(
    a: TargetView, b: TargetView, delay_ms: float, rest: Rest, deadline_ms: float
) -> tuple[float, float, float]:
    """``(P_miss, expected cost, expected extra requests)`` of ``a`` hedged by ``b`` after
    ``delay_ms``; the fallbacks of ``rest`` (started at :func:`hedge_rest_ms`) follow once
    both failed."""
    pa, pb = a.p_fail, b.p_fail
    late_a = a.latency.p_exceed(deadline_ms)
    meet_ok = (1.0 - late_a) + late_a * b.meet_alone(deadline_ms - delay_ms)
    meet_failed = b.meet_alone(deadline_ms - min(a.fail_fast_ms, delay_ms)) + pb * rest.meet
    meet = (1.0 - pa) * meet_ok + pa * meet_failed
    extra = (1.0 - pa) * a.latency.p_exceed(delay_ms)
    cost = a.cost_usd + (extra + pa) * b.cost_usd + pa * pb * rest.cost_usd
    return max(1.0 - meet, 0.0), cost, extra


def hedge_rest_ms(a: TargetView, b: TargetView, delay_ms: float, deadline_ms: float) -> float:
    """Time left for the fallbacks of a hedged plan once both ``a`` and ``b`` failed."""
    return deadline_ms - min(a.fail_fast_ms, delay_ms) - b.fail_fast_ms


def cascade(
    small: TargetView, large: TargetView, escalate: float, rest: Rest, deadline_ms: float
) -> tuple[float, float]:
    """``(P_miss, expected cost)`` of ``small`` escalating to ``large`` with probability
    ``escalate``; the fallbacks of ``rest`` follow when ``small`` fails."""
    ps = small.p_fail
    both, offset = small.latency.sum_with(large.latency)
    escalated = (1.0 - large.p_fail) * (1.0 - both.p_exceed(deadline_ms - offset))
    meet_ok = (1.0 - escalate) * (1.0 - small.latency.p_exceed(deadline_ms)) + escalate * escalated
    meet = (1.0 - ps) * meet_ok + ps * rest.meet
    cost = small.cost_usd + (1.0 - ps) * escalate * large.cost_usd + ps * rest.cost_usd
    return max(1.0 - meet, 0.0), cost


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

    def compute() -> float:
        top = min(la.quantile(q), delay_ms + lb.quantile(q))
        return _invert(lambda x: la.p_exceed(x) * lb.p_exceed(x - delay_ms), delay_ms, top,
                       1.0 - q)

    key = ("hedged", q, delay_ms, la.offset, lb.origin, lb.offset)
    return la.origin.derived(key, compute)


def cascade_quantile(small: TargetView, large: TargetView, escalate: float, q: float) -> float:
    """Latency quantile of ``L_s`` plus, with probability ``escalate``, ``L_e`` (memoised on
    the pair's sum table, so a cascade chosen again costs a lookup)."""
    ls = small.latency
    both, offset = ls.sum_with(large.latency)

    def survival(x: float) -> float:
        return (1.0 - escalate) * ls.p_exceed(x) + escalate * both.p_exceed(x - offset)

    def compute() -> float:
        return _invert(survival, ls.quantile(q), both.quantile(q) + offset, 1.0 - q)

    return both.derived(("cascade", q, escalate, ls.offset, offset), compute)


class Rest(NamedTuple):
    """Ordered fallbacks and what they add: ``P(answered in time)`` and expected cost, given
    that they start (after the plan's own targets failed) with the time they were ordered for."""

    targets: tuple[TargetView, ...] = ()
    meet: float = 0.0
    cost_usd: float = 0.0


NO_REST = Rest()


def fallbacks(
    pool: Sequence[TargetView], exclude: Sequence[TargetView], remaining_ms: float, limit: int
) -> Rest:
    """Up to ``limit`` targets of ``pool`` (less ``exclude``), least likely to miss when started
    with ``remaining_ms`` left first, then the cheaper; with their chained risk and cost."""
    if limit <= 0 or remaining_ms <= 0.0:
        return NO_REST
    ranked = [((v.p_fail - 1.0) * (1.0 - v.latency.p_exceed(remaining_ms)), v.cost_usd, i)
              for i, v in enumerate(pool) if v not in exclude]
    if not ranked:
        return NO_REST
    if len(ranked) > 1:
        ranked.sort()
        del ranked[limit:]
    chosen = tuple(pool[i] for _, _, i in ranked)
    first = chosen[0]
    rest_meet, rest_cost = chain(chosen[1:], remaining_ms - first.fail_fast_ms)
    pf = first.p_fail
    return Rest(chosen, -ranked[0][0] + pf * rest_meet, first.cost_usd + pf * rest_cost)

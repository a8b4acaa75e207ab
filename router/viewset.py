"""The targets a decision may use, and the shortlist it enumerates plans over (numpy).

With a handful of targets every plan is enumerated. With many (more than
:data:`SHORTLIST_ABOVE`), enumerating every pair for hedges and cascades
would cost too much per request, so a vectorised pass over the stacked
quantile tables (:func:`~router.distribution.p_exceed_rows`) keeps:

* primaries: the cheapest (or fastest, for ``min-latency``) targets that an
  approximate risk (alone, plus the best of a few fallbacks) puts within the
  budget, and the least risky ones;
* fallbacks, hedge partners and escalation targets: the least risky alone;
* hedged primaries: the first few primaries;
* cascade primaries: the cheapest small-model targets.

Ranks by risk break ties by position, never by price, so raising a price
can only take a target off a list of primaries, never put it on one.
The exact evaluation (:mod:`router.risk`) then runs on the shortlist only.
A :class:`ViewSet` built once can serve many decisions (its eligibility and
arrays are cached per policy); the app rebuilds it when the views change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from router.candidates import BREAKER_OPEN, FAILING, NOT_ALLOWED, QUALITY
from router.distribution import LEVELS, p_exceed_rows
from router.policy import RoutingPolicy
from router.view import TargetView

SHORTLIST_ABOVE = 16
PRIMARIES_CHEAP = 8
PRIMARIES_SAFE = 4
FALLBACK_POOL = 8
PARTNERS = 4
HEDGED = 4
CASCADE_SMALL = 3
CASCADE_LARGE = 2
_MEDIAN = int(np.searchsorted(LEVELS, 0.5))


class Eligibility(NamedTuple):
    eligible: tuple[TargetView, ...]
    excluded: tuple[tuple[TargetView, str], ...]
    """Targets no plan may start on, each with the verdict saying why."""


class Shortlist(NamedTuple):
    primaries: tuple[TargetView, ...]
    pool: tuple[TargetView, ...]
    """Fallback candidates."""
    partners: tuple[TargetView, ...]
    small: tuple[TargetView, ...]
    large: tuple[TargetView, ...]
    hedged: tuple[TargetView, ...]
    """Primaries of hedged plans."""
    complete: bool
    """True when nothing was left out."""


def exclusion(view: TargetView, policy: RoutingPolicy, quality: str) -> str | None:
    """Why no plan may use ``view`` (policy, quality, breaker, certain failure), or ``None``."""
    if view.tier not in policy.allowed_tiers or (
        policy.allowed_targets is not None and view.name not in policy.allowed_targets
    ):
        return NOT_ALLOWED
    if quality == "high" and not (
        view.quality == "large" and view.tier in policy.high_quality_tiers
    ):
        return QUALITY
    if not view.allowed:
        return BREAKER_OPEN
    return FAILING if view.p_fail >= 1.0 else None


@dataclass(frozen=True)
class _Arrays:
    values: np.ndarray
    p_fail: np.ndarray
    fail_fast: np.ndarray
    cost: np.ndarray
    small: np.ndarray


class ViewSet:
    """The views of one decision (or of many, when built once and reused)."""

    def __init__(self, views: Sequence[TargetView]) -> None:
        self.views = tuple(views)
        rows = {v.rows for v in self.views}
        if len(rows) > 1:
            raise ValueError("every view of a decision must be built for the same rows")
        self.rows: int | None = rows.pop() if rows else None
        self._cache: dict[tuple[int, str], tuple[RoutingPolicy, Eligibility, _Arrays | None]] = {}

    def __len__(self) -> int:
        return len(self.views)

    def _entry(
        self, policy: RoutingPolicy, quality: str
    ) -> tuple[RoutingPolicy, Eligibility, _Arrays | None]:
        key = (id(policy), quality)
        entry = self._cache.get(key)
        if entry is None or entry[0] is not policy:
            eligible, excluded = [], []
            for view in self.views:
                why = exclusion(view, policy, quality)
                if why is None:
                    eligible.append(view)
                else:
                    excluded.append((view, why))
            arrays = _arrays(eligible) if len(eligible) > SHORTLIST_ABOVE else None
            entry = (policy, Eligibility(tuple(eligible), tuple(excluded)), arrays)
            self._cache[key] = entry
        return entry

    def eligibility(self, policy: RoutingPolicy, quality: str) -> Eligibility:
        return self._entry(policy, quality)[1]

    def shortlist(self, policy: RoutingPolicy, quality: str, deadline_ms: float) -> Shortlist:
        _, elig, arrays = self._entry(policy, quality)
        eligible = elig.eligible
        if arrays is None:
            return _everything(eligible, deadline_ms)
        return _vectorised(eligible, arrays, policy, deadline_ms)


def _arrays(eligible: Sequence[TargetView]) -> _Arrays:
    return _Arrays(
        values=np.stack([v.latency.values for v in eligible]),
        p_fail=np.array([v.p_fail for v in eligible]),
        fail_fast=np.array([v.fail_fast_ms for v in eligible]),
        cost=np.array([v.cost_usd for v in eligible]),
        small=np.array([v.quality == "small" for v in eligible]),
    )


def _least_risky(views: Sequence[TargetView], deadline_ms: float, k: int) -> tuple[TargetView, ...]:
    if len(views) <= k:
        return tuple(views)
    ranked = sorted(range(len(views)), key=lambda i: (1.0 - views[i].meet_alone(deadline_ms), i))
    return tuple(views[i] for i in ranked[:k])


def _everything(eligible: tuple[TargetView, ...], deadline_ms: float) -> Shortlist:
    small = tuple(v for v in eligible if v.quality == "small")
    large = tuple(v for v in eligible if v.quality == "large")
    return Shortlist(
        primaries=eligible, pool=eligible, partners=_least_risky(eligible, deadline_ms, PARTNERS),
        small=small, large=_least_risky(large, deadline_ms, PARTNERS), hedged=eligible,
        complete=len(eligible) <= PARTNERS and len(large) <= PARTNERS,
    )


def _smallest(key: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` of ``candidates`` (indices) with the smallest ``key``, by (key, index);
    a partition, not a sort, of all of them."""
    if len(candidates) > k:
        candidates = candidates[np.argpartition(key[candidates], k - 1)[:k]]
    return candidates[np.lexsort((candidates, key[candidates]))]


def _vectorised(
    eligible: tuple[TargetView, ...], a: _Arrays, policy: RoutingPolicy, deadline_ms: float
) -> Shortlist:
    n = len(eligible)
    everyone = np.arange(n)
    meet = (1.0 - a.p_fail) * (1.0 - p_exceed_rows(a.values, np.full(n, deadline_ms)))
    pool = _smallest(-meet, everyone, FALLBACK_POOL).tolist()
    left = deadline_ms - a.fail_fast
    best = eligible[pool[0]]
    rescue = (1.0 - best.p_fail) * (1.0 - best.latency.p_exceed_many(left))
    rescue[left <= 0] = 0.0
    rescue[pool[0]] = eligible[pool[1]].meet_alone(float(left[pool[0]])) if n > 1 else 0.0
    risk = 1.0 - (meet + a.p_fail * rescue)
    key = a.values[:, _MEDIAN] if policy.objective == "min-latency" else a.cost
    within = _smallest(key, np.flatnonzero(risk <= policy.risk_budget), PRIMARIES_CHEAP)
    safest = _smallest(risk, everyone, PRIMARIES_SAFE)
    primaries = tuple(eligible[i] for i in dict.fromkeys(within.tolist() + safest.tolist()))
    small = _smallest(a.cost, np.flatnonzero(a.small), CASCADE_SMALL)
    large = _smallest(-meet, np.flatnonzero(~a.small), CASCADE_LARGE)
    return Shortlist(
        primaries=primaries,
        pool=tuple(eligible[i] for i in pool),
        partners=tuple(eligible[i] for i in pool[:PARTNERS]),
        small=tuple(eligible[i] for i in small.tolist()),
        large=tuple(eligible[i] for i in large.tolist()),
        hedged=primaries[:HEDGED],
        complete=False,
    )

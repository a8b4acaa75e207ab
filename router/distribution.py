"""Latency distributions as quantile tables at fixed levels (pure logic, numpy only).

A :class:`Distribution` stores the latency at every level of :data:`LEVELS`:
the minimum (level 0), every percentile, a denser tail (99.5, 99.8, 99.9,
99.95, 99.98, 99.99) and the maximum (level 1). Between two levels the log of
the survival ``P(L > x)`` is linear in ``x`` (exact for an exponential tail;
linear interpolation of the quantile function overstates a lognormal tail
between knots by up to 17%), and linear in the last interval, up to the
maximum. ``P(L > x)`` is 1 below the minimum and 0 at or above the maximum. A
step in the table (many equal values, a constant latency) is an atom:
``P(L > x)`` jumps there, as it should.

The decision evaluates these tables thousands of times a second: the scalar
path bisects a tuple (no numpy call), and :func:`p_exceed_rows` evaluates one
deadline per row of a stacked ``(targets, levels)`` matrix in one pass.

Sums of independent parts (network + queue + service + cold start) are
computed by :meth:`Distribution.plus` (a convolution, ~0.5 ms), so callers
cache the result: :meth:`Distribution.sum_with` memoises it per pair.
"""

from __future__ import annotations

import math
import weakref
from bisect import bisect_right
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LEVELS: np.ndarray = np.array(
    [0.0, *(i / 100 for i in range(1, 100)), 0.995, 0.998, 0.999, 0.9995, 0.9998, 0.9999, 1.0]
)
"""Quantile levels of every table: min, each percentile, a denser tail, max."""
LEVELS.setflags(write=False)

MASS: np.ndarray = np.diff(LEVELS)
"""Probability mass of each interval between consecutive levels."""
MASS.setflags(write=False)

_LEVELS_T: tuple[float, ...] = tuple(LEVELS.tolist())
_SURVIVAL = 1.0 - LEVELS
_LOG_RATIO = np.log(_SURVIVAL[1:-1] / _SURVIVAL[:-2])
"""Per interval, log of the ratio of survival at its two ends (all but the last interval)."""
_LOG_RATIO_T: tuple[float, ...] = tuple(_LOG_RATIO.tolist())
_LAST = len(LEVELS) - 1
MAX_DERIVED = 64
_GRID_LEVELS = np.array([0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0])
_COARSE = np.array([0.0, *(i / 20 for i in range(1, 20)), 0.98, 0.99, 0.995, 0.999, 0.9999, 1.0])
"""Levels at which the narrower part of a sum is cut into mass points: the body in 5%
steps, the tail finer (a sum's tail comes from the wider part's tail and these points)."""
_COARSE_MASS = np.diff(_COARSE)
_COARSE_MIDS = (_COARSE[:-1] + _COARSE[1:]) * 0.5


@dataclass(frozen=True, eq=False)
class Distribution:
    """Latency (ms) at each of :data:`LEVELS`; non-decreasing, read-only.

    A shifted distribution remembers the one it was shifted from, so that
    :meth:`sum_with` convolves the originals once and reuses the result for
    every shift of either (a decision may not spend 0.3 ms on a convolution).
    """

    values: np.ndarray
    _table: tuple[float, ...] = field(init=False, repr=False)
    _mids: np.ndarray = field(init=False, repr=False)
    _origin: Distribution | None = field(default=None, repr=False)
    _offset: float = field(default=0.0, repr=False)
    _sums: weakref.WeakKeyDictionary[Distribution, Distribution] | None = field(
        init=False, repr=False, default=None)
    _derived: dict[Hashable, float] | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        values = np.maximum.accumulate(np.asarray(self.values, dtype=np.float64))
        if values.shape != LEVELS.shape or not np.all(np.isfinite(values)):
            raise ValueError(f"a distribution needs {len(LEVELS)} finite values")
        values.setflags(write=False)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "_table", tuple(values.tolist()))
        mids = (values[:-1] + values[1:]) * 0.5
        mids.setflags(write=False)
        object.__setattr__(self, "_mids", mids)

    @classmethod
    def point(cls, ms: float) -> Distribution:
        """A constant latency."""
        return cls(np.full(LEVELS.shape, float(ms)))

    @classmethod
    def lognormal(cls, median_ms: float, sigma: float) -> Distribution:
        """A lognormal prior, cut at the levels 1e-5 and 1 - 1e-5 for its min and max."""
        levels = np.clip(LEVELS, 1e-5, 1 - 1e-5)
        z = np.array([_normal_ppf(float(q)) for q in levels])
        return cls(median_ms * np.exp(sigma * z))

    @classmethod
    def from_samples(cls, samples: np.ndarray) -> Distribution:
        """The empirical table of ``samples`` (linear interpolation between order statistics)."""
        return cls(np.quantile(np.asarray(samples, dtype=np.float64), LEVELS))

    def p_exceed(self, ms: float) -> float:
        """``P(L > ms)``: 1 below the minimum, 0 at or above the maximum."""
        table = self._table
        j = bisect_right(table, ms)
        if j == 0:
            return 1.0
        if j > _LAST:
            return 0.0
        lo, hi = table[j - 1], table[j]
        fraction = (ms - lo) / (hi - lo)
        if j == _LAST:
            return (1.0 - _LEVELS_T[j - 1]) * (1.0 - fraction)
        return (1.0 - _LEVELS_T[j - 1]) * math.exp(_LOG_RATIO_T[j - 1] * fraction)

    def p_exceed_many(self, ms: np.ndarray) -> np.ndarray:
        """:meth:`p_exceed` of every element of ``ms``."""
        return _survival(self.values, np.asarray(ms, dtype=np.float64))

    def quantile(self, q: float) -> float:
        """The latency at level ``q`` (clamped to [0, 1])."""
        if q <= 0.0:
            return self._table[0]
        if q >= 1.0:
            return self._table[-1]
        j = bisect_right(_LEVELS_T, q)
        a, b = self._table[j - 1], self._table[j]
        if j == _LAST:
            fraction = (q - _LEVELS_T[j - 1]) / (1.0 - _LEVELS_T[j - 1])
        else:
            fraction = math.log((1.0 - q) / (1.0 - _LEVELS_T[j - 1])) / _LOG_RATIO_T[j - 1]
        return a + (b - a) * fraction

    @property
    def origin(self) -> Distribution:
        """The unshifted table this one was shifted from (itself if none)."""
        return self._origin or self

    @property
    def offset(self) -> float:
        """How far this table was shifted from the one it was shifted from (0 if none)."""
        return self._offset

    @property
    def minimum(self) -> float:
        return self._table[0]

    @property
    def maximum(self) -> float:
        return self._table[-1]

    @property
    def mids(self) -> np.ndarray:
        """One mass point per interval between levels (weights: :data:`MASS`)."""
        return self._mids

    @property
    def mean(self) -> float:
        return float(np.dot(self.mids, MASS))

    def shift(self, ms: float) -> Distribution:
        """The latency plus ``ms`` (the table is already valid: only the shift is checked)."""
        if not ms:
            return self
        if not math.isfinite(ms):
            raise ValueError("a shift must be finite")
        values, mids = self.values + ms, self._mids + ms
        values.setflags(write=False)
        mids.setflags(write=False)
        shifted = object.__new__(Distribution)
        for name, value in (("values", values), ("_table", tuple(values.tolist())),
                            ("_mids", mids), ("_origin", self._origin or self),
                            ("_offset", self._offset + ms), ("_sums", None), ("_derived", None)):
            object.__setattr__(shifted, name, value)
        return shifted

    def derived(self, key: Hashable, compute: Callable[..., float], *args: Any) -> float:
        """A figure derived from this (immutable) table, ``compute(*args)``, memoised under
        ``key``; ``key`` must hold everything else the figure depends on. At most
        :data:`MAX_DERIVED` are kept."""
        memo = self._derived
        if memo is None:
            memo = {}
            object.__setattr__(self, "_derived", memo)
        found = memo.get(key)
        if found is None:
            if len(memo) >= MAX_DERIVED:
                memo.clear()
            found = memo[key] = compute(*args)
        return found

    def sum_with(self, other: Distribution) -> tuple[Distribution, float]:
        """``(S, offset)`` such that ``self + other`` (independent) is ``S`` shifted by
        ``offset``; ``S`` is computed once per pair of unshifted originals and memoised."""
        a, b = self._origin or self, other._origin or other
        sums = a._sums
        if sums is None:
            sums = weakref.WeakKeyDictionary()
            object.__setattr__(a, "_sums", sums)
        total = sums.get(b)
        if total is None:
            total = sums[b] = a.plus(b)
        return total, self._offset + other._offset

    def scale(self, factor: float) -> Distribution:
        return Distribution(self.values * factor) if factor != 1.0 else self

    def plus(self, other: Distribution) -> Distribution:
        """The distribution of the sum of two independent latencies (~0.5 ms).

        The wider of the two is kept continuous (its survival as :meth:`p_exceed` reads
        it), the narrower is cut into its mass points: ``S(x) = sum_j w_j S_wide(x - b_j)``,
        evaluated on a grid of the wide table shifted by a few quantiles of the narrow one,
        then read back at the fixed levels (log-linear in the survival). Pairing the mass
        points of both tables instead loses up to half of the tail of a bimodal
        (straggler) network time.
        """
        if other.minimum == other.maximum:
            return self.shift(other.minimum)
        if self.minimum == self.maximum:
            return other.shift(self.minimum)
        wide, narrow = (self, other) if self._spread() >= other._spread() else (other, self)
        shifts = np.interp(_GRID_LEVELS, LEVELS, narrow.values)
        xs = np.add.outer(wide.values, shifts).ravel()
        xs.sort()
        points = np.interp(_COARSE_MIDS, LEVELS, narrow.values)
        behind = (xs[:, None] - points[None, :]).ravel()
        survival = (_survival(wide.values, behind).reshape(len(xs), -1) @ _COARSE_MASS)
        depth = -np.log(np.maximum(survival, 1e-300))
        values = np.interp(-np.log(_SURVIVAL[:-1]), depth, xs)
        values = np.append(values, 0.0)
        values[0] = self.minimum + other.minimum
        values[-1] = self.maximum + other.maximum
        return Distribution(values)

    def _spread(self) -> float:
        return self._table[-4] - self._table[1]


def _survival(values: np.ndarray, ms: np.ndarray) -> np.ndarray:
    """``P(L > ms)`` for one table and many deadlines (same rule as the scalar path)."""
    last = len(values) - 1
    j = values.searchsorted(ms, side="right")
    return _interpolate(j, last, values[np.minimum(np.maximum(j, 1), last) - 1],
                        values[np.minimum(np.maximum(j, 1), last)], ms)


def _interpolate(j: np.ndarray, last: int, lo: np.ndarray, hi: np.ndarray,
                 ms: np.ndarray) -> np.ndarray:
    """``P(L > ms)`` between the levels ``j - 1`` and ``j`` (``lo <= ms < hi`` where in range):
    log-linear in the survival (exact for an exponential tail), linear in the last interval."""
    inner = np.minimum(np.maximum(j, 1), last) - 1
    outside = (j == 0) | (j > last)
    span = np.where(outside, 1.0, hi - lo)
    fraction = np.where(outside, 0.0, ms - lo) / span
    tail = inner == last - 1
    ratio = _LOG_RATIO[np.minimum(inner, last - 2)]
    survival = _SURVIVAL[inner] * np.where(tail, 1.0 - fraction, np.exp(ratio * fraction))
    survival[j == 0] = 1.0
    survival[j > last] = 0.0
    return survival


def p_exceed_rows(values: np.ndarray, ms: np.ndarray) -> np.ndarray:
    """``P(L_i > ms_i)`` for a ``(targets, levels)`` matrix of tables and one deadline per row."""
    ms = np.asarray(ms, dtype=np.float64)
    last = values.shape[1] - 1
    j = np.count_nonzero(values <= ms[:, None], axis=1)
    inner = np.minimum(np.maximum(j, 1), last)
    rows = np.arange(values.shape[0])
    return _interpolate(j, last, values[rows, inner - 1], values[rows, inner], ms)


def _normal_ppf(q: float) -> float:
    """Inverse of the standard normal CDF (Acklam's rational approximation, |error| < 1.2e-9
    after one Newton step), so that priors need no scipy."""
    a = (-39.69683028665376, 220.9460984245205, -275.9285104469687, 138.3577518672690,
         -30.66479806614716, 2.506628277459239)
    b = (-54.47609879822406, 161.5858368580409, -155.6989798598866, 66.80131188771972,
         -13.28068155288572)
    c = (-0.007784894002430293, -0.3223964580411365, -2.400758277161838, -2.549732539343734,
         4.374664141464968, 2.938163982698783)
    d = (0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416)
    if q < 0.02425 or q > 1 - 0.02425:
        t = math.sqrt(-2 * math.log(q if q < 0.5 else 1 - q))
        x = (((((c[0] * t + c[1]) * t + c[2]) * t + c[3]) * t + c[4]) * t + c[5]) / (
            (((d[0] * t + d[1]) * t + d[2]) * t + d[3]) * t + 1)
        x = x if q < 0.5 else -x
    else:
        r = (q - 0.5) ** 2
        x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * (q - 0.5) / (
            ((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    error = 0.5 * math.erfc(-x / math.sqrt(2)) - q
    return x - error * math.sqrt(2 * math.pi) * math.exp(x * x / 2)

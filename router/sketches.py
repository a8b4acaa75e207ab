"""Time-decayed summaries of observations: quantile sketches and a confidence histogram.

Both keep two windows, the current one and the previous one, and answer
queries from their union, so what they report covers between one and two
windows of the most recent observations. A window closes once ``window_s``
has passed on the injected clock *and* it holds at least ``min_count``
observations: an idle target keeps what it last learned instead of
forgetting it (staleness is the prober's job, not the sketch's).

Quantiles come from Datadog's DDSketch (Masson, Rim and Lee, "DDSketch: a
fast and fully-mergeable quantile sketch with relative-error guarantees",
VLDB 2019): every reported quantile is within ``relative_accuracy`` of the
true one, whatever the distribution, and two windows merge exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from ddsketch import DDSketch

from router.distribution import LEVELS


class _Windows:
    """The rotation rule shared by the sketch and the histogram."""

    def __init__(self, window_s: float, min_count: int, clock: Callable[[], float]) -> None:
        if window_s <= 0 or min_count < 1:
            raise ValueError("window_s must be positive and min_count at least 1")
        self.window_s = window_s
        self.min_count = min_count
        self._clock = clock
        self._opened = clock()

    def _due(self, current_count: float) -> bool:
        now = self._clock()
        if now - self._opened >= self.window_s and current_count >= self.min_count:
            self._opened = now
            return True
        return False


class WindowedSketch(_Windows):
    """A DDSketch over the last one to two windows of non-negative values (ms)."""

    def __init__(
        self,
        *,
        window_s: float,
        clock: Callable[[], float],
        min_count: int = 32,
        relative_accuracy: float = 0.01,
    ) -> None:
        super().__init__(window_s, min_count, clock)
        self.relative_accuracy = relative_accuracy
        self._current = DDSketch(relative_accuracy)
        self._previous = DDSketch(relative_accuracy)

    def _rotate(self) -> None:
        if self._due(self._current.count):
            self._previous = self._current
            self._current = DDSketch(self.relative_accuracy)

    def add(self, value: float) -> None:
        self._rotate()
        self._current.add(max(float(value), 0.0))

    @property
    def count(self) -> float:
        return float(self._current.count + self._previous.count)

    def mean(self) -> float:
        count = self.count
        return (self._current.sum + self._previous.sum) / count if count else 0.0

    def quantiles(self) -> np.ndarray | None:
        """The value at each of :data:`~router.distribution.LEVELS`, or ``None`` when empty.

        All levels in one pass over the bins (DDSketch's own ``get_quantile_value`` walks
        the bins once per level, ~1 ms for a table); latencies are never negative.
        """
        self._rotate()
        if not self.count:
            return None
        merged = DDSketch(self.relative_accuracy)
        merged.merge(self._previous)
        merged.merge(self._current)
        return sketch_quantiles(merged, LEVELS)


def sketch_quantiles(sketch: DDSketch, levels: np.ndarray) -> np.ndarray:
    """DDSketch's quantile values (same ranks, same bin keys, same mapping) at many
    levels at once, for sketches of non-negative values."""
    rank = levels * (sketch.count - 1)
    zeros = sketch._zero_count + sketch._negative_store.count
    store = sketch._store
    bins = np.asarray(store.bins, dtype=np.float64)
    if not len(bins):
        return np.zeros(len(levels))
    index = np.searchsorted(np.cumsum(bins), rank - zeros, side="right")
    keys = np.minimum(index, len(bins) - 1) + store.offset
    value = np.vectorize(sketch._mapping.value, otypes=[np.float64])(keys)
    return np.where(rank < zeros, 0.0, value)


class WindowedHistogram(_Windows):
    """Counts of a value in [0, 1] in ``bins`` equal bins over the last one to two windows."""

    def __init__(
        self, *, window_s: float, clock: Callable[[], float], min_count: int = 32, bins: int = 100
    ) -> None:
        super().__init__(window_s, min_count, clock)
        self.bins = bins
        self._current = np.zeros(bins)
        self._previous = np.zeros(bins)

    def add(self, value: float) -> None:
        if self._due(float(self._current.sum())):
            self._previous, self._current = self._current, np.zeros(self.bins)
        index = min(max(int(value * self.bins), 0), self.bins - 1)
        self._current[index] += 1.0

    @property
    def count(self) -> float:
        return float(self._current.sum() + self._previous.sum())

    def below(self, thresholds: np.ndarray) -> np.ndarray:
        """Share of the values below each threshold (uniform within a bin); 0 when empty."""
        counts = self._current + self._previous
        total = counts.sum()
        if not total:
            return np.zeros(len(thresholds))
        edges = np.linspace(0.0, 1.0, self.bins + 1)
        cumulative = np.concatenate(([0.0], np.cumsum(counts))) / total
        return np.interp(np.clip(thresholds, 0.0, 1.0), edges, cumulative)

"""Event counts over a sliding time window, in constant memory (pure logic).

The window is cut into ``buckets`` equal slices of time; each slice holds one
count per kind of event, and a slice is zeroed when the clock comes back
round to it. This is resilience4j's time-based sliding window ("partial
aggregations" per epoch second): totals cover between ``window_s * (1 - 1/buckets)``
and ``window_s`` of history, and memory does not grow with traffic.
"""

from __future__ import annotations

import math
from collections.abc import Callable


class RollingCounts:
    """Counts of named kinds of events seen in the last ``window_s`` seconds."""

    def __init__(
        self,
        window_s: float,
        kinds: tuple[str, ...],
        *,
        clock: Callable[[], float],
        buckets: int = 10,
    ) -> None:
        if window_s <= 0 or buckets < 1 or not kinds:
            raise ValueError("window_s must be > 0, buckets >= 1 and kinds non-empty")
        self.window_s = window_s
        self.kinds = kinds
        self._slice_s = window_s / buckets
        self._clock = clock
        self._index = {kind: i for i, kind in enumerate(kinds)}
        self._counts = [[0] * len(kinds) for _ in range(buckets)]
        self._epochs = [-math.inf] * buckets

    def _bucket(self) -> list[int]:
        epoch = math.floor(self._clock() / self._slice_s)
        slot = epoch % len(self._counts)
        if self._epochs[slot] != epoch:
            self._epochs[slot] = epoch
            self._counts[slot] = [0] * len(self.kinds)
        return self._counts[slot]

    def add(self, kind: str, n: int = 1) -> None:
        self._bucket()[self._index[kind]] += n

    def total(self, kind: str) -> int:
        epoch = math.floor(self._clock() / self._slice_s)
        oldest = epoch - len(self._counts) + 1
        i = self._index[kind]
        return sum(
            counts[i] for counts, e in zip(self._counts, self._epochs, strict=True) if e >= oldest
        )

    def totals(self) -> dict[str, int]:
        return {kind: self.total(kind) for kind in self.kinds}

    def reset(self) -> None:
        self._counts = [[0] * len(self.kinds) for _ in self._counts]
        self._epochs = [-math.inf] * len(self._epochs)


class RollingTally:
    """Counts per key (any hashable name, keys come and go) over the last ``window_s``
    seconds, in ``buckets`` slices of time: memory grows with the keys seen in one window,
    never with traffic."""

    def __init__(self, window_s: float, *, clock: Callable[[], float], buckets: int = 10) -> None:
        if window_s <= 0 or buckets < 1:
            raise ValueError("window_s must be > 0 and buckets >= 1")
        self._slice_s = window_s / buckets
        self._buckets = buckets
        self._clock = clock
        self._slices: dict[int, dict[str, int]] = {}

    def add(self, key: str) -> None:
        epoch = math.floor(self._clock() / self._slice_s)
        counts = self._slices.get(epoch)
        if counts is None:
            oldest = epoch - self._buckets + 1
            self._slices = {e: c for e, c in self._slices.items() if e >= oldest}
            counts = self._slices[epoch] = {}
        counts[key] = counts.get(key, 0) + 1

    def counts(self) -> dict[str, int]:
        oldest = math.floor(self._clock() / self._slice_s) - self._buckets + 1
        total: dict[str, int] = {}
        for epoch, counts in self._slices.items():
            if epoch >= oldest:
                for key, n in counts.items():
                    total[key] = total.get(key, 0) + n
        return total

    def shares(self) -> dict[str, float]:
        """Each key's share of the counts in the window (empty when nothing was counted)."""
        counts = self.counts()
        whole = sum(counts.values())
        return {key: n / whole for key, n in counts.items()} if whole else {}

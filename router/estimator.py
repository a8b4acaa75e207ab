"""Online per-target estimates learned from observed calls only (pure logic, fake-clock testable).

A target's latency is split into what the router can tell apart:

* network: observed time minus the server-reported queue and compute time
  (a readiness probe is all network);
* queueing: the server-reported wait before compute;
* service: the server-reported compute time, scaled by rows relative to the
  batches observed.

Each part is an exponentially weighted mean and variance (Finch, "Incremental
calculation of weighted mean and variance", 2009). A failure puts the target
in a cooldown that doubles with consecutive failures (capped), after which a
single call or probe may try it again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class Ewma:
    """Exponentially weighted mean and variance; the first sample seeds the mean."""

    def __init__(self, weight: float) -> None:
        if not 0 < weight <= 1:
            raise ValueError("weight must lie in (0, 1]")
        self.weight = weight
        self.mean = 0.0
        self.var = 0.0
        self.count = 0

    def update(self, value: float) -> None:
        if self.count == 0:
            self.mean = value
        else:
            delta = value - self.mean
            self.mean += self.weight * delta
            self.var = (1 - self.weight) * (self.var + self.weight * delta * delta)
        self.count += 1

    @property
    def std(self) -> float:
        return math.sqrt(self.var)


@dataclass(frozen=True)
class Prediction:
    network_ms: float
    queue_ms: float
    service_ms: float
    spread_ms: float
    """Combined standard deviation of the three parts."""
    observed: bool
    """False while the target has never answered: the figures are the prior."""

    @property
    def mean_ms(self) -> float:
        return self.network_ms + self.queue_ms + self.service_ms

    def upper_ms(self, sigmas: float = 2.0) -> float:
        return self.mean_ms + sigmas * self.spread_ms


class TargetEstimator:
    MAX_COOLDOWN_FACTOR = 16

    def __init__(
        self,
        *,
        weight: float = 0.2,
        prior_latency_ms: float = 50.0,
        failure_cooldown_ms: float = 1000.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.network = Ewma(weight)
        self.queue = Ewma(weight)
        self.service = Ewma(weight)
        self.batch_rows = Ewma(weight)
        self.prior_latency_ms = prior_latency_ms
        self.failure_cooldown_ms = failure_cooldown_ms
        self._clock = clock
        self.in_flight = 0
        self.successes = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.cooldown_until = -math.inf
        self.last_seen = -math.inf
        self.last_error: str | None = None

    def observe_success(
        self, total_ms: float, server_ms: float, queue_ms: float, batch_rows: int
    ) -> None:
        self.network.update(max(total_ms - server_ms - queue_ms, 0.0))
        self.queue.update(max(queue_ms, 0.0))
        self.service.update(max(server_ms, 0.0))
        self.batch_rows.update(float(max(batch_rows, 1)))
        self._healthy()
        self.successes += 1

    def observe_probe(self, total_ms: float) -> None:
        self.network.update(max(total_ms, 0.0))
        self._healthy()

    def observe_failure(self, reason: str) -> None:
        self.failures += 1
        self.consecutive_failures += 1
        self.last_error = reason
        factor = min(2 ** (self.consecutive_failures - 1), self.MAX_COOLDOWN_FACTOR)
        self.cooldown_until = self._clock() + self.failure_cooldown_ms * factor / 1000
        self.last_seen = self._clock()

    def _healthy(self) -> None:
        self.consecutive_failures = 0
        self.cooldown_until = -math.inf
        self.last_seen = self._clock()

    @property
    def available(self) -> bool:
        """False while cooling down after a failure."""
        return self._clock() >= self.cooldown_until

    def idle_for_s(self) -> float:
        return self._clock() - self.last_seen

    def predict(self, rows: int = 1) -> Prediction:
        if self.network.count == 0:
            return Prediction(self.prior_latency_ms, 0.0, 0.0, self.prior_latency_ms / 2, False)
        service = self.service.mean
        if self.service.count and self.batch_rows.mean > 0:
            service *= max(1.0, rows / self.batch_rows.mean)
        spread = math.sqrt(self.network.var + self.queue.var + self.service.var)
        return Prediction(self.network.mean, self.queue.mean, service, spread, True)

    def snapshot(self) -> dict[str, Any]:
        prediction = self.predict()
        return {
            "available": self.available,
            "observed": prediction.observed,
            "network_ms": round(prediction.network_ms, 3),
            "queue_ms": round(prediction.queue_ms, 3),
            "service_ms": round(prediction.service_ms, 3),
            "predicted_ms": round(prediction.mean_ms, 3),
            "predicted_upper_ms": round(prediction.upper_ms(), 3),
            "in_flight": self.in_flight,
            "successes": self.successes,
            "failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "cooldown_left_ms": round(max(self.cooldown_until - self._clock(), 0.0) * 1000, 1),
            "last_error": self.last_error,
        }

"""A target's latency as a distribution, from its parts (pure logic, fake-clock testable).

``L = network + queue + service(batch) [+ cold start]``, the parts taken as
independent:

* network: observed time minus the server-reported queue and compute time;
  a readiness probe is all network;
* queue: the server-reported wait before compute, less what the router's own
  calls in flight explain (the estimator adds the wait behind those in flight
  at decision time);
* service: the server-reported compute time of the batch the request ran in,
  scaled to the batch a request of ``rows`` rows will run in
  (:class:`ServiceScaling`);
* cold start: added only while the deployment has no running replica, from
  the cold starts observed (a configurable prior until one is).

Each part is a :class:`~router.sketches.WindowedSketch`. Their sum is a
convolution (:meth:`~router.distribution.Distribution.plus`, ~0.3 ms), so
the tables are rebuilt at most once per ``refresh_interval_s`` when new
observations arrived, and each sum is cached per batch-size bucket (powers of
two) until the next rebuild. A request never pays for a rebuild it did not
trigger by time.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

from router.distribution import Distribution
from router.sketches import WindowedSketch


class EstimatorSettings(BaseModel):
    """Tunables of a :class:`~router.estimator.TargetEstimator`, with named defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window_s: float = Field(10.0, gt=0)
    """Sketch window: estimates cover the last one to two windows of observations."""
    min_window_count: int = Field(32, ge=1)
    """A window closes only once it holds this many observations."""
    relative_accuracy: float = Field(0.01, gt=0, lt=1)
    refresh_interval_s: float = Field(0.25, ge=0)
    """Least time between two rebuilds of the quantile tables."""
    rebuild_on_read: bool = True
    """Whether a read of the estimates rebuilds the tables when due. The router turns it off:
    its maintenance loop (:meth:`~router.estimator.TargetEstimator.maintain`, every
    ``PROBE_LOOP_S``) rebuilds them, so that no request pays for a rebuild (two
    convolutions, about 1 ms) in its decision. The simulator keeps it on."""
    prior_sigma: float = Field(0.5, gt=0)
    """Spread (log-space sigma) of the lognormal prior around ``prior_latency_ms``."""
    cold_start_prior_ms: float = Field(3000.0, ge=0)
    cold_start_window_s: float = Field(3600.0, gt=0)
    failure_half_life_s: float = Field(10.0, gt=0)
    prior_fail_probability: float = Field(0.001, ge=0, le=1)
    prior_fail_weight: float = Field(1.0, gt=0)
    """Pseudo-observations behind the prior failure probability."""
    prior_escalation_probability: float = Field(0.3, ge=0, le=1)
    prior_escalation_weight: float = Field(8.0, gt=0)
    batch_weight: float = Field(0.02, gt=0, le=1)
    """EWMA weight of the service-time-versus-batch line (slow: batch sizes vary by request)."""
    probe_interval_s: float = Field(1.0, gt=0)
    concurrency: int = Field(1, ge=1)
    """Requests the target serves at once (edge workers' slots, a cloud batch): a call waits
    one mean service time per ``concurrency`` calls queued ahead of it."""


DEFAULT_SETTINGS = EstimatorSettings()


class ServiceScaling:
    """Service time as a function of batch rows: an exponentially weighted least-squares line
    ``service = a + b * rows`` over the batches observed.

    A request of ``rows`` rows runs in a batch of at least ``rows`` and usually of the
    typical batch: the factor is 1 up to the typical batch and grows along the line beyond
    it (proportionally while the batch sizes seen are too alike to fit a line).
    """

    def __init__(self, weight: float) -> None:
        self.weight = weight
        self.count = 0
        self.mean_rows = 1.0
        self.mean_ms = 0.0
        self.cov = 0.0
        self.var_rows = 0.0

    def update(self, rows: int, service_ms: float) -> None:
        x, y = float(max(rows, 1)), max(service_ms, 0.0)
        if self.count == 0:
            self.mean_rows, self.mean_ms = x, y
        else:
            w, dx, dy = self.weight, x - self.mean_rows, y - self.mean_ms
            self.mean_rows += w * dx
            self.mean_ms += w * dy
            self.cov = (1 - w) * (self.cov + w * dx * dy)
            self.var_rows = (1 - w) * (self.var_rows + w * dx * dx)
        self.count += 1

    def factor(self, rows: int) -> float:
        typical = max(self.mean_rows, 1.0)
        if rows <= typical:
            return 1.0
        if self.var_rows > 0.25 and self.cov > 0:
            slope = self.cov / self.var_rows
            intercept = max(self.mean_ms - slope * typical, 0.0)
            at_typical = intercept + slope * typical
            if at_typical > 0:
                return (intercept + slope * rows) / at_typical
        return rows / typical


def rows_bucket(rows: int) -> int:
    """The power of two at or above ``rows``: the key under which a sum is cached."""
    return 1 << max(int(rows) - 1, 0).bit_length()


class LatencyModel:
    def __init__(
        self,
        *,
        prior_latency_ms: float,
        settings: EstimatorSettings,
        clock: Callable[[], float],
    ) -> None:
        def sketch(window_s: float, min_count: int) -> WindowedSketch:
            return WindowedSketch(window_s=window_s, clock=clock, min_count=min_count,
                                  relative_accuracy=settings.relative_accuracy)

        self.settings = settings
        self._clock = clock
        self.network = sketch(settings.window_s, settings.min_window_count)
        self.queue = sketch(settings.window_s, settings.min_window_count)
        self.service = sketch(settings.window_s, settings.min_window_count)
        self.cold = sketch(settings.cold_start_window_s, 1)
        self.scaling = ServiceScaling(settings.batch_weight)
        self.prior = Distribution.lognormal(max(prior_latency_ms, 1e-3), settings.prior_sigma)
        self.cold_prior = Distribution.lognormal(max(settings.cold_start_prior_ms, 1e-3),
                                                 settings.prior_sigma)
        self.version = 0
        self._dirty = True
        self._refreshed_at = -math.inf
        self._base = self.prior
        self._service: Distribution | None = None
        self._cold = self.cold_prior
        self._network_median: float | None = None
        self._cache: dict[tuple[int, bool], Distribution] = {}

    def add_call(
        self, network_ms: float | None, queue_ms: float, service_ms: float, rows: int
    ) -> None:
        if network_ms is not None:
            self.network.add(network_ms)
        self.queue.add(queue_ms)
        self.service.add(service_ms)
        self.scaling.update(rows, service_ms)
        self._dirty = True

    def add_network(self, ms: float) -> None:
        self.network.add(ms)
        self._dirty = True

    def add_cold_start(self, ms: float) -> None:
        self.cold.add(ms)
        self._dirty = True

    def refresh_if_due(self) -> None:
        if self._dirty and self._clock() - self._refreshed_at >= self.settings.refresh_interval_s:
            self.refresh()

    def refresh(self) -> None:
        """Rebuild the part tables from the sketches now, and drop the cached sums."""
        network, queue = self.network.quantiles(), self.queue.quantiles()
        service, cold = self.service.quantiles(), self.cold.quantiles()
        base = Distribution(network) if network is not None else self.prior
        self._network_median = base.quantile(0.5) if network is not None else None
        if queue is not None:
            base = base.plus(Distribution(queue))
        self._base = base
        self._service = Distribution(service) if service is not None else None
        self._cold = Distribution(cold) if cold is not None else self.cold_prior
        self._cache.clear()
        self._dirty = False
        self._refreshed_at = self._clock()
        self.version += 1

    def distribution(self, rows: int, cold: bool) -> Distribution:
        """Latency of a request of ``rows`` rows, with a cold start added when ``cold``."""
        if self.settings.rebuild_on_read:
            self.refresh_if_due()
        key = (rows_bucket(rows), cold)
        found = self._cache.get(key)
        if found is None:
            found = self._base
            if self._service is not None:
                found = found.plus(self._service.scale(self.scaling.factor(key[0])))
            if cold:
                found = found.plus(self._cold)
            self._cache[key] = found
        return found

    def service_ms(self, rows: int) -> float:
        """Mean compute time of the batch a request of ``rows`` rows runs in."""
        return self.service.mean() * self.scaling.factor(rows)

    def typical_rows(self) -> float:
        return max(self.scaling.mean_rows, 1.0) if self.scaling.count else 1.0

    def network_median_ms(self) -> float | None:
        """Median network time as of the last rebuild; ``None`` before any was observed."""
        if self.settings.rebuild_on_read:
            self.refresh_if_due()
        return self._network_median

"""Online per-target estimates learned from observed calls only (pure logic, fake-clock testable).

What the decision reads comes from :meth:`TargetEstimator.view`:

* latency as a distribution (:class:`~router.latency.LatencyModel`): network
  (observed time minus the server-reported queue and compute; probes are all
  network), queue (the server-reported wait that this router's own calls in
  flight do not explain, plus the wait behind the calls in flight now:
  :meth:`TargetEstimator.wait_ahead_ms`), service time as a function of batch
  size, and a cold start while the deployment runs no replica
  (``set_replicas``), learned from observed cold starts;
* the probability of failure, from failure and success counts that decay
  exponentially with a half-life, so an old outage fades back to the prior;
* the typical time to detect a failure (``fail_fast_ms``);
* for a small model, how often its answer is unsure enough to escalate
  (``observe_confidence``);
* the marginal cost from the price book (:mod:`router.cost`).

One exponentially weighted mean of observed latency is kept beside the
distributions, for the ``least-latency`` baseline alone (LiteLLM's latency
routing reads such a mean): :attr:`TargetEstimator.latency_ewma`. The plan's
executor reads no estimate: the decision writes the times it priced into the
plan (:class:`~router.plan.Timing`).

Nothing here takes a target out of rotation: that is the breaker's
(:mod:`router.breaker`) alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from edgeroute.config import Quality, Tier
from router.cost import BYTES_PER_ROW, MarginalPrices, marginal_cost_usd
from router.distribution import Distribution
from router.latency import DEFAULT_SETTINGS, EstimatorSettings, LatencyModel
from router.sketches import WindowedHistogram, WindowedSketch
from router.view import THRESHOLDS, TargetView, escalation_at


class Ewma:
    """Exponentially weighted mean; the first sample seeds it."""

    def __init__(self, weight: float) -> None:
        if not 0 < weight <= 1:
            raise ValueError("weight must lie in (0, 1]")
        self.weight = weight
        self.mean = 0.0
        self.count = 0

    def update(self, value: float) -> None:
        if self.count == 0:
            self.mean = value
        else:
            self.mean += self.weight * (value - self.mean)
        self.count += 1


class DecayedRate:
    """Failure probability from failure and success counts that halve every ``half_life_s``,
    plus ``prior_weight`` pseudo-observations at ``prior``: after a burst of failures the
    estimate returns to the prior as time passes, fast or slow as the half-life says."""

    def __init__(self, half_life_s: float, prior: float, prior_weight: float,
                 clock: Callable[[], float]) -> None:
        self.half_life_s = half_life_s
        self.prior = prior
        self.prior_weight = prior_weight
        self._clock = clock
        self.failures = 0.0
        self.successes = 0.0
        self._at = clock()

    def _decay(self) -> None:
        now = self._clock()
        if now > self._at:
            keep = 0.5 ** ((now - self._at) / self.half_life_s)
            self.failures *= keep
            self.successes *= keep
        self._at = now

    def reset(self) -> None:
        self.failures = self.successes = 0.0
        self._at = self._clock()

    def add(self, failed: bool) -> None:
        self._decay()
        if failed:
            self.failures += 1.0
        else:
            self.successes += 1.0

    def probability(self) -> float:
        self._decay()
        weight = self.prior_weight
        return (self.failures + weight * self.prior) / (self.failures + self.successes + weight)


class TargetEstimator:
    def __init__(
        self,
        *,
        name: str = "target",
        tier: Tier = "edge",
        quality: Quality = "small",
        weight: float = 0.2,
        prior_latency_ms: float = 50.0,
        settings: EstimatorSettings = DEFAULT_SETTINGS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name, self.tier, self.quality = name, tier, quality
        self.settings = settings
        self.bytes_per_row: float = BYTES_PER_ROW
        """Wire bytes per row in and out of the model this target runs (its signature's)."""
        self.latency_ewma = Ewma(weight)
        """Observed latency, exponentially weighted: the ``least-latency`` baseline's input,
        read by nothing else."""
        self.prior_latency_ms = prior_latency_ms
        self._clock = clock
        self.latency = LatencyModel(prior_latency_ms=prior_latency_ms, settings=settings,
                                    clock=clock)
        self.fail_detect = WindowedSketch(window_s=settings.window_s, clock=clock, min_count=1)
        """How long failed calls took to be known as failed."""
        self.at_target = WindowedSketch(window_s=settings.window_s, clock=clock,
                                        min_count=settings.min_window_count)
        """The time answered calls spent at the target (reported queue plus compute)."""
        self.fail_rate = DecayedRate(settings.failure_half_life_s, settings.prior_fail_probability,
                                     settings.prior_fail_weight, clock)
        self.confidence = WindowedHistogram(window_s=settings.window_s, clock=clock,
                                            min_count=settings.min_window_count)
        self._share = 1.0
        """:meth:`server_share`, updated by each answer and probe."""
        self._observed = False
        self._escalation = self._escalation_table()
        self._escalation_dirty = False
        self._escalation_at = -math.inf
        self.replicas: int | None = None
        """Running replicas of the deployment behind the target; ``None``: not tracked."""
        self.cold_starts = 0
        self.in_flight = 0
        """This replica's calls in flight at the target, from their claim until they end: the
        one count that the decision reads as queueing, the per-target bound limits
        (:class:`router.admission.InFlightLimits`) and the prober waits on."""
        self.successes = 0
        self.failures = 0
        self._failing = False
        """The last call or probe failed (failures in a row are the breaker's to count)."""
        self.last_seen = -math.inf
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        """When ``last_error`` happened (the injected clock); both clear on the next answer."""
        self.answering = True
        """False from a failure until the target next answers an inference: a worker that
        answers every inference 503 is not answering, whatever its health checks say."""

    def observe_success(
        self, total_ms: float, server_ms: float, queue_ms: float, batch_rows: int,
        ahead: int = 0,
    ) -> None:
        """A call answered after ``total_ms``; the server reported its compute and queue time.

        ``ahead``: the calls this router had in flight to the target when it sent this one.
        The wait they explain (:meth:`wait_ahead_ms`) is left out of the queue estimate, which
        keeps the wait nothing here accounts for (other routers' traffic, other clients); a
        decision adds the wait behind the calls in flight at its own time instead. Learning the
        raw wait would count a busy spell twice, in the queue estimate and in flight, and
        predict every call late once a target had been busy.

        While the deployment is known to run no replica, the network part of the call
        beyond its usual median is taken as a cold start (and kept out of the network
        estimate), and a replica is known to run from then on.
        """
        network_ms = max(total_ms - server_ms - queue_ms, 0.0)
        warm = self.replicas != 0
        if warm:
            self.latency_ewma.update(max(total_ms, 0.0))
            self._observed = True
        else:
            usual = self.latency.network_median_ms() or 0.0
            self.observe_cold_start(max(network_ms - usual, 0.0))
            self.replicas = 1
        self.at_target.add(max(queue_ms, 0.0) + max(server_ms, 0.0))
        self._update_share()
        unexplained = max(queue_ms - self.wait_ahead_ms(ahead, batch_rows), 0.0)
        self.latency.add_call(network_ms if warm else None, unexplained,
                              max(server_ms, 0.0), max(batch_rows, 1))
        self.fail_rate.add(False)
        self._healthy()
        self.successes += 1
        self.answered()

    def answered(self) -> None:
        """The target answered an inference (a request's, or the prober's trial call): the
        outage behind ``last_error`` is over."""
        self.answering = True
        self.last_error = self.last_error_at = None

    def observe_untimed_success(self, server_ms: float, queue_ms: float, batch_rows: int,
                                ahead: int = 0) -> None:
        """A call answered, but the router's own event loop ran late during it: the time
        the router saw is its own as much as the target's, so no network time or cold start
        is learned from it; what the server reports of its own queue and compute still is."""
        if self.replicas == 0:
            self.replicas = 1
        self.at_target.add(max(queue_ms, 0.0) + max(server_ms, 0.0))
        self._update_share()
        unexplained = max(queue_ms - self.wait_ahead_ms(ahead, batch_rows), 0.0)
        self.latency.add_call(None, unexplained, max(server_ms, 0.0), max(batch_rows, 1))
        self.fail_rate.add(False)
        self._healthy()
        self.successes += 1
        self.answered()

    def observe_probe(self, total_ms: float) -> None:
        """A readiness probe answered: all of its time is network.

        A probe that answers after failures ends the outage (a restarted worker): the
        failure memory starts afresh, or the failures of the outage would keep traffic
        off the target for many half-lives after it came back. Flapping is the
        breaker's to damp (its ejections grow), not this estimate's.
        """
        if self._failing:
            self.fail_rate.reset()
        self._observed = True
        self.latency.add_network(max(total_ms, 0.0))
        self._update_share()
        self._healthy()

    def observe_failure(self, reason: str, elapsed_ms: float | None = None) -> None:
        """A call failed after ``elapsed_ms`` (when known): counts toward ``p_fail``."""
        self.failures += 1
        self._failing = True
        self.last_error, self.last_error_at = reason, self._clock()
        self.answering = False
        self.fail_rate.add(True)
        if elapsed_ms is not None:
            self.fail_detect.add(max(elapsed_ms, 0.0))
        self.last_seen = self._clock()

    def observe_cold_start(self, ms: float) -> None:
        """A request waited ``ms`` for a replica to start."""
        self.latency.add_cold_start(max(ms, 0.0))
        self.cold_starts += 1

    def observe_confidence(self, top_probability: float) -> None:
        """The top class probability of one answered row (small models: the cascade input)."""
        if math.isfinite(top_probability):
            self.confidence.add(top_probability)
            self._escalation_dirty = True

    def set_replicas(self, replicas: int | None) -> None:
        """Running replicas of the deployment (from Serve, at a bounded rate); 0 adds a cold
        start to the latency; ``None`` stops tracking."""
        self.replicas = replicas

    def _healthy(self) -> None:
        self._failing = False
        self.last_seen = self._clock()

    def needs_probe(self, now: float) -> bool:
        """True when nothing was heard of the target for a probe interval and no call is out."""
        return self.in_flight == 0 and now - self.last_seen >= self.settings.probe_interval_s

    def p_fail(self) -> float:
        return self.fail_rate.probability()

    def fail_fast_ms(self) -> float:
        """Typical time to learn that a call failed: the mean observed over the last window
        or two, else one network median."""
        if self.fail_detect.count:
            return self.fail_detect.mean()
        median = self.latency.network_median_ms()
        return median if median is not None else self.prior_latency_ms

    def _escalation_table(self) -> tuple[float, ...]:
        s = self.settings
        seen, weight = self.confidence.count, s.prior_escalation_weight
        prior = THRESHOLDS * 0.0 + s.prior_escalation_probability
        prior[0] = 0.0
        table = (self.confidence.below(THRESHOLDS) * seen + prior * weight) / (seen + weight)
        return tuple(table.tolist())

    def escalation_table(self, rebuild: bool | None = None) -> tuple[float, ...]:
        """P(top probability < t) at each of :data:`~router.view.THRESHOLDS` (bounded rate);
        rebuilt here when due if ``rebuild`` (default: the settings' ``rebuild_on_read``)."""
        if not (self.settings.rebuild_on_read if rebuild is None else rebuild):
            return self._escalation
        now = self._clock()
        if self._escalation_dirty and now - self._escalation_at >= self.settings.refresh_interval_s:
            self._escalation = self._escalation_table()
            self._escalation_dirty = False
            self._escalation_at = now
        return self._escalation

    def escalation_probability(self, threshold: float) -> float:
        """How often this target's answers are less confident than ``threshold``."""
        return escalation_at(self.escalation_table(), threshold)

    def maintain(self) -> None:
        """Rebuild what is due (latency tables, the one-row sum, the escalation table) so that
        requests find them ready: the app calls this from a background task, off the
        request path."""
        self.latency.refresh_if_due()
        self.distribution(1)
        self.escalation_table(rebuild=True)

    def distribution(self, rows: int = 1) -> Distribution:
        """Latency of a request of ``rows`` rows now: cold start and the wait behind the calls
        in flight included."""
        base = self.latency.distribution(rows, self.replicas == 0)
        ahead_ms = self.wait_ahead_ms(self.in_flight, rows)
        return base.shift(ahead_ms) if ahead_ms > 0.0 else base

    def wait_ahead_ms(self, ahead: int, rows: int = 1) -> float:
        """Expected wait of a call sent behind ``ahead`` calls in flight. Of those, the ones at
        the target (queued or computing, not on the network) are ahead of it there: their
        share of a call's time at the target (Little's law, :meth:`server_share`). It starts
        once all but ``concurrency - 1`` of them have finished, and the target finishes
        ``concurrency`` calls per mean service time (a slow device with one slot and three
        calls at it: three service times; a fast one a long link away: next to nothing)."""
        concurrency = self.settings.concurrency
        waiting = ahead * self.server_share() + 1 - concurrency
        if waiting <= 0:
            return 0.0
        return waiting * self.latency.service_ms(rows) / concurrency

    def server_share(self) -> float:
        """The share of an answered call's time spent at the target rather than on the
        network (1 until a call has answered), over the last window or two."""
        return self._share

    def _update_share(self) -> None:
        if self.at_target.count:
            at_target = self.at_target.mean()
            whole = at_target + self.latency.network.mean()
            self._share = at_target / whole if whole > 0 else 1.0

    def cost_usd(self, rows: int, prices: MarginalPrices) -> float:
        batch = max(float(rows), self.latency.typical_rows())
        return marginal_cost_usd(prices, rows, self.latency.service_ms(rows), math.ceil(batch),
                                 self.bytes_per_row)

    def view(self, rows: int, allowed: bool, prices: MarginalPrices) -> TargetView:
        """Everything the decision needs of this target for a request of ``rows`` rows."""
        observed = self.observed
        return TargetView(
            name=self.name, tier=self.tier, quality=self.quality, allowed=allowed,
            latency=self.distribution(rows), p_fail=self.p_fail(),
            fail_fast_ms=self.fail_fast_ms(), cost_usd=self.cost_usd(rows, prices),
            ewma_latency_ms=(self.latency_ewma.mean if self.latency_ewma.count
                             else self.prior_latency_ms),
            escalation=self.escalation_table(), in_flight=self.in_flight, rows=rows,
            observed=observed,
        )

    @property
    def observed(self) -> bool:
        """Whether the target ever answered (a call or a probe): else the figures are the
        prior."""
        return self._observed

    def snapshot(self) -> dict[str, Any]:
        """What the decision reads of the target now (one row, the calls in flight included),
        and the counts behind it."""
        latency = self.distribution()
        model = self.latency
        return {
            "observed": self.observed,
            "network_ms": round(model.network.mean(), 3),
            "queue_ms": round(model.queue.mean(), 3),
            "service_ms": round(model.service_ms(1), 3),
            "wait_ahead_ms": round(self.wait_ahead_ms(self.in_flight), 3),
            "predicted_ms": round(latency.quantile(0.5), 3),
            "p50_ms": round(latency.quantile(0.5), 3),
            "p99_ms": round(latency.quantile(0.99), 3),
            "p_fail": round(self.p_fail(), 5),
            "fail_fast_ms": round(self.fail_fast_ms(), 3),
            "least_latency_ewma_ms": round(self.latency_ewma.mean, 3),
            "replicas": self.replicas,
            "cold_starts": self.cold_starts,
            "in_flight": self.in_flight,
            "successes": self.successes,
            "failures": self.failures,
            "last_error": self.last_error,
            "last_error_s_ago": None if self.last_error_at is None
            else round(self._clock() - self.last_error_at, 3),
        }

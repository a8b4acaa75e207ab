"""A seeded synthetic latency generator, shared by the calibration test and the benchmarks.

A call's latency is network + queue + service, as the estimator decomposes it:
network is lognormal, and with ``straggler_probability`` a straggler (a link
spike, a GC pause, a retransmit) multiplies it by ``straggler_factor``; the
queue is exponential; service is lognormal. The server reports queue and
service, as the edge workers and the cloud deployment do; the estimator never
reads these settings, only the samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from router.estimator import TargetEstimator


@dataclass(frozen=True)
class SyntheticTarget:
    network_median_ms: float = 20.0
    network_sigma: float = 0.35
    service_median_ms: float = 4.0
    service_sigma: float = 0.25
    queue_mean_ms: float = 0.5
    straggler_probability: float = 0.02
    straggler_factor: float = 10.0

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
        """``(total, network, queue, service)`` of ``n`` calls, in ms."""
        network = rng.lognormal(np.log(self.network_median_ms), self.network_sigma, n)
        network *= np.where(rng.random(n) < self.straggler_probability,
                            self.straggler_factor, 1.0)
        queue = rng.exponential(self.queue_mean_ms, n) if self.queue_mean_ms else np.zeros(n)
        service = rng.lognormal(np.log(self.service_median_ms), self.service_sigma, n)
        return network + queue + service, network, queue, service

    def feed(self, estimator: TargetEstimator, rng: np.random.Generator, n: int) -> None:
        """``n`` calls observed by ``estimator``, then its tables rebuilt."""
        total, _, queue, service = self.sample(rng, n)
        for t, q, s in zip(total.tolist(), queue.tolist(), service.tolist(), strict=True):
            estimator.observe_success(t, s, q, 1)
        estimator.latency.refresh()


@dataclass(frozen=True)
class CalibrationRow:
    level: float
    """The quantile of the true latency used as the deadline."""
    deadline_ms: float
    predicted: float
    observed: float

    @property
    def error(self) -> float:
        return self.predicted - self.observed

    def within(self, absolute: float, relative: float) -> bool:
        return abs(self.error) <= max(absolute, relative * self.observed)

    def __str__(self) -> str:
        return (f"deadline p{self.level * 100:g} = {self.deadline_ms:8.2f} ms: "
                f"predicted P_miss {self.predicted:.5f}, observed {self.observed:.5f}, "
                f"error {self.error:+.5f} ({self.error / self.observed:+.1%})")


LEVELS = (0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999)


def calibrate(
    target: SyntheticTarget, estimator: TargetEstimator, *, seed: int = 7, train: int = 20_000,
    fresh: int = 400_000, levels: tuple[float, ...] = LEVELS,
) -> list[CalibrationRow]:
    """Train ``estimator`` on ``train`` calls, then compare its predicted P(L > D) with the
    miss rate of ``fresh`` calls, for deadlines D at ``levels`` of the true distribution."""
    rng = np.random.default_rng(seed)
    target.feed(estimator, rng, train)
    latency = estimator.distribution(1)
    fresh_total = target.sample(rng, fresh)[0]
    truth = target.sample(np.random.default_rng(seed + 1), 2_000_000)[0]
    rows = []
    for level in levels:
        deadline = float(np.quantile(truth, level))
        rows.append(CalibrationRow(level, deadline, latency.p_exceed(deadline),
                                   float(np.mean(fresh_total > deadline))))
    return rows

"""What each arm achieved, request by request, and its summary against the oracle."""

from __future__ import annotations

from typing import Any

import numpy as np


class Tally:
    """Counts of one arm (or the oracle) over a run, and each request's latency."""

    def __init__(self, name: str, requests: int, deadlines_ms: tuple[float, ...]) -> None:
        self.name = name
        self.latency_ms = np.full(requests, np.nan, dtype=np.float32)
        """Per request: when the answer came (ms after arrival); NaN: no answer."""
        self.requests = 0
        self.attained = 0
        self.cost_usd = 0.0
        self.calls = 0
        self.cloud_answers = 0
        self.hedged = 0
        self.escalated = 0
        self.fallbacks = 0
        self.by_deadline = {d: [0, 0] for d in deadlines_ms}
        self.both = 0
        """Requests both this arm and the oracle attained..."""
        self.both_cost_usd = 0.0
        self.both_oracle_cost_usd = 0.0
        """...and what each spent on them."""
        self.oracle_only = 0
        """Requests the oracle attained and this arm did not."""

    def add(self, i: int, deadline_ms: float, latency_ms: float | None, attained: bool,
            cost_usd: float, cloud: bool, oracle: tuple[bool, float]) -> None:
        self.requests += 1
        self.cost_usd += cost_usd
        row = self.by_deadline[deadline_ms]
        row[0] += 1
        if latency_ms is not None:
            self.latency_ms[i] = latency_ms
            self.cloud_answers += cloud
        if attained:
            self.attained += 1
            row[1] += 1
            if oracle[0]:
                self.both += 1
                self.both_cost_usd += cost_usd
                self.both_oracle_cost_usd += oracle[1]
        elif oracle[0]:
            self.oracle_only += 1

    def summary(self, oracle: Tally | None = None) -> dict[str, Any]:
        n = max(self.requests, 1)
        answered = self.latency_ms[: self.requests]
        answered = answered[~np.isnan(answered)]
        p50, p99 = (np.percentile(answered, [50, 99]).tolist() if answered.size
                    else (float("nan"), float("nan")))
        found: dict[str, Any] = {
            "requests": self.requests,
            "attainment": self.attained / n,
            "answered": answered.size / n,
            "cost_usd": self.cost_usd,
            "cost_per_1000_usd": self.cost_usd / n * 1000,
            "p50_ms": p50,
            "p99_ms": p99,
            "cloud_share": self.cloud_answers / max(answered.size, 1),
            "calls_per_request": self.calls / n,
            "hedged": self.hedged / n,
            "escalated": self.escalated / n,
            "fallbacks": self.fallbacks / n,
            "attainment_by_deadline_ms": {
                f"{d:g}": (met / count if count else None)
                for d, (count, met) in self.by_deadline.items()},
        }
        if oracle is not None and oracle is not self:
            found["vs_oracle"] = {
                "attainment_gap": oracle.attained / n - self.attained / n,
                "oracle_only": self.oracle_only,
                "both_attained": self.both,
                "cost_ratio_both_attained": (self.both_cost_usd / self.both_oracle_cost_usd
                                             if self.both_oracle_cost_usd else None),
                "cost_ratio": (self.cost_usd / oracle.cost_usd if oracle.cost_usd else None),
            }
        return found


def percentiles_us(samples: np.ndarray) -> dict[str, float]:
    """p50, p99, p99.9 and mean of wall-clock timings in microseconds."""
    if not samples.size:
        return {}
    p50, p99, p999 = np.percentile(samples, [50, 99, 99.9]).tolist()
    return {"p50_us": p50, "p99_us": p99, "p999_us": p999, "mean_us": float(samples.mean())}

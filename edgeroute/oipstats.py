"""Inference statistics in the form of Triton's statistics extension (``GET /v2/models/{m}/stats``).

Per model: successful and failed requests with their cumulative wall time, the
queue and compute time the server measured, inferences (rows) and executions
(requests), and when the last one finished. A router also keeps the same counts per
target (in the model's ``parameters``) and the model version each target reported.
Counts are since the process started; a router's are its replica's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Duration:
    """A count and cumulative nanoseconds, as Triton's ``StatisticDuration``."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += max(0, round(seconds * 1e9))

    def view(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class Counts:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    inferences: int = 0
    last_inference_ms: int = 0


class InferenceStats:
    """Counts of one model's requests; ``clock`` gives epoch seconds (``last_inference``)."""

    def __init__(self, model: str, version: str, clock: Callable[[], float] = time.time) -> None:
        self.model = model
        self.version = version
        self.clock = clock
        self.total = Counts()
        self.targets: dict[str, Counts] = {}
        self.target_versions: dict[str, str] = {}

    def success(self, duration_s: float, rows: int, *, target: str | None = None,
                model_version: str | None = None, queue_s: float | None = None,
                infer_s: float | None = None) -> None:
        """One request answered in ``duration_s`` (by ``target``, with ``model_version``)."""
        counts = [self.total]
        if target is not None:
            counts.append(self.targets.setdefault(target, Counts()))
            if model_version is not None:
                self.target_versions[target] = model_version
        now_ms = int(self.clock() * 1000)
        for c in counts:
            c.success.add(duration_s)
            c.inferences += rows
            c.last_inference_ms = now_ms
            if queue_s is not None:
                c.queue.add(queue_s)
            if infer_s is not None:
                c.compute_infer.add(infer_s)

    def failure(self, duration_s: float, *, target: str | None = None) -> None:
        """One request that ended in an error after ``duration_s``."""
        self.total.fail.add(duration_s)
        if target is not None:
            self.targets.setdefault(target, Counts()).fail.add(duration_s)

    @staticmethod
    def _inference_stats(c: Counts) -> dict[str, Any]:
        zero = Duration().view()
        return {"success": c.success.view(), "fail": c.fail.view(), "queue": c.queue.view(),
                "compute_input": zero, "compute_infer": c.compute_infer.view(),
                "compute_output": zero, "cache_hit": zero, "cache_miss": zero}

    def model_stats(self) -> dict[str, Any]:
        """The body of ``GET /v2/models/{model}/stats``."""
        t = self.total
        entry: dict[str, Any] = {
            "name": self.model, "version": self.version,
            "last_inference": t.last_inference_ms, "inference_count": t.inferences,
            "execution_count": t.success.count,
            "inference_stats": self._inference_stats(t), "batch_stats": [],
        }
        if self.targets:
            entry["parameters"] = {"targets": {
                name: {"model_version": self.target_versions.get(name),
                       "inference_count": c.inferences, "execution_count": c.success.count,
                       "last_inference": c.last_inference_ms,
                       "inference_stats": self._inference_stats(c)}
                for name, c in sorted(self.targets.items())}}
        return {"model_stats": [entry]}

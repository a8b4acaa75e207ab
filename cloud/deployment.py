"""The cloud model deployment: the teacher on onnxruntime behind ``@serve.batch``.

Requests from router replicas are gathered into batches of up to
``max_batch_size`` rows (waiting at most ``batch_wait_timeout_ms``), run in one
session call off the event loop, and split again. Each caller gets back its
rows plus what the batch cost: the compute time of the whole batch, how long
this request waited for it, and how many rows shared it, so the router can
learn service time per batch size and charge GPU time fairly.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from ray import serve

from edgeroute.models.runtime import OnnxModel
from edgeroute.models.store import ensure_models, model_path


@serve.deployment(name="cloud", ray_actor_options={"num_cpus": 0})
class CloudModel:
    def __init__(
        self,
        model: str = "teacher",
        *,
        threads: int = 1,
        use_gpu: bool = False,
        max_batch_size: int = 32,
        batch_wait_timeout_ms: float = 4.0,
    ) -> None:
        directory = ensure_models().directory
        self.model = OnnxModel(model_path(model, directory), threads=threads, use_gpu=use_gpu)
        self._batched.set_max_batch_size(max_batch_size)
        self._batched.set_batch_wait_timeout_s(batch_wait_timeout_ms / 1000)
        self.replica = serve.get_replica_context().replica_id.unique_id

    async def ready(self) -> dict[str, str]:
        """Cheap liveness probe: answers without touching the model."""
        return {"model_version": self.model.version, "provider": self.model.provider}

    async def infer(self, x: np.ndarray) -> dict[str, Any]:
        return await self._batched(x, time.perf_counter())

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.004)
    async def _batched(self, xs: list[np.ndarray], arrived: list[float]) -> list[dict[str, Any]]:
        started = time.perf_counter()
        rows = np.concatenate(xs)
        probabilities, labels = await asyncio.to_thread(self.model.predict, rows)
        service_ms = (time.perf_counter() - started) * 1000
        results = []
        offset = 0
        for x, t_arrived in zip(xs, arrived, strict=True):
            n = len(x)
            results.append({
                "probabilities": probabilities[offset : offset + n],
                "labels": labels[offset : offset + n],
                "model_version": self.model.version,
                "service_ms": service_ms,
                "queue_ms": (started - t_arrived) * 1000,
                "batch_rows": len(rows),
                "replica": self.replica,
            })
            offset += n
        return results

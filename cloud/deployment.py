"""The cloud model deployment: one model's cloud variant on onnxruntime behind ``@serve.batch``.

The stack runs one deployment per served model (the bundled ``digits`` teacher, or a
user's ``cloud_model`` file, its sha256 checked at load). Requests from router replicas
are gathered into batches of up to ``max_batch_size`` rows (waiting at most
``batch_wait_timeout_ms``), run in one session call off the event loop, and split again;
a model without a batch dimension runs each request on its own. Each caller gets back its
rows of every output plus what the batch cost: the compute time of the whole batch, how
long this request waited for it, and how many rows shared it, so the router can learn
service time per batch size and charge GPU time fairly.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from edgeroute.models.build import MODEL_NAMES
from edgeroute.models.runtime import OnnxModel
from edgeroute.models.store import ensure_models, model_path

Inputs = dict[str, np.ndarray]


def _path(model: str) -> Path:
    """``bundle:<name>``: a bundled model's cloud variant; a digits model by its name
    (``teacher``); else an ONNX file."""
    if model.startswith("bundle:"):
        from edgeroute.models.bundles import ensure

        return ensure(model.removeprefix("bundle:")).cloud
    if model in MODEL_NAMES:
        return model_path(model, ensure_models().directory)
    return Path(model)


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
        sha256: str | None = None,
    ) -> None:
        self.model = OnnxModel(_path(model), threads=threads, use_gpu=use_gpu, sha256=sha256)
        self.batched = self.model.signature.batched
        self._batched.set_max_batch_size(max_batch_size)
        self._batched.set_batch_wait_timeout_s(batch_wait_timeout_ms / 1000)
        self.replica = serve.get_replica_context().replica_id.unique_id

    async def ready(self) -> dict[str, str]:
        """Cheap liveness probe: answers without touching the model."""
        return {"model_version": self.model.version, "provider": self.model.provider}

    async def infer(self, inputs: Inputs) -> dict[str, Any]:
        return await self._batched(inputs, time.perf_counter())

    def _run_all(self, batch: list[Inputs]) -> list[dict[str, np.ndarray]]:
        if not self.batched:
            return [self.model.run(inputs) for inputs in batch]
        names = list(batch[0])
        joined = self.model.run({n: np.concatenate([b[n] for b in batch]) for n in names})
        results, offset = [], 0
        for inputs in batch:
            rows = len(inputs[names[0]])
            results.append({k: v[offset : offset + rows] for k, v in joined.items()})
            offset += rows
        return results

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.004)
    async def _batched(self, batch: list[Inputs], arrived: list[float]) -> list[dict[str, Any]]:
        started = time.perf_counter()
        outputs = await asyncio.to_thread(self._run_all, batch)
        service_ms = (time.perf_counter() - started) * 1000
        rows = sum(len(next(iter(inputs.values()))) for inputs in batch)
        return [{
            "outputs": out,
            "model_version": self.model.version,
            "service_ms": service_ms,
            "queue_ms": (started - t_arrived) * 1000,
            "batch_rows": rows,
            "replica": self.replica,
        } for out, t_arrived in zip(outputs, arrived, strict=True)]

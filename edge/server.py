"""The edge worker's ASGI app: OIP v2 over HTTP in front of one onnxruntime session.

Inference runs on a thread pool of ``concurrency`` threads behind an
:class:`~edge.admission.Admission` gate, so a burst beyond ``max_queue``
waiting requests gets a fast 503 with ``Retry-After`` instead of a growing
queue. Every answer carries ``Server-Timing: queue;dur=..., infer;dur=...`` so
the router can subtract server time from what it observes and learn the
network part on its own.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edge.admission import Admission, QueueFull
from edge.fleet import FleetAgent
from edgeroute import contract
from edgeroute.http import (
    DEADLINE_HEADER,
    REQUEST_ID_HEADER,
    InferGZip,
    check_content_type,
    error_response,
    infer_response,
    oip_exception_handlers,
    read_body,
    server_timing,
)
from edgeroute.models.runtime import OnnxModel
from edgeroute.oip import InferResponse, OIPError, binary_set, decode_request, select_outputs
from edgeroute.oipstats import InferenceStats

SERVER_NAME = "edgeroute-edge"
EXTENSIONS = ["binary_tensor_data", "parameters", "statistics", "model_configuration"]
"""The OIP/Triton extensions the worker serves (listed in its server metadata)."""
GZIP_MIN_BYTES = 512
"""Inference answers at least this long are gzipped when the caller's ``Accept-Encoding``
asks (other answers never are, as with Triton)."""


def caller_deadline_s(headers: Any) -> float | None:
    """Seconds the caller gave this request (``x-edgeroute-deadline-ms``), if it said."""
    raw = headers.get(DEADLINE_HEADER)
    try:
        value = float(raw) / 1000 if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and value > 0 else None


class EdgeWorker:
    """Owns the model, the admission gate and the inference threads of one worker."""

    def __init__(
        self,
        model: OnnxModel,
        *,
        name: str = "edge",
        concurrency: int = 1,
        max_queue: int = 32,
        max_batch: int = contract.DEFAULT_MAX_BATCH,
        max_body_bytes: int = 4 * 1024 * 1024,
        service_delay_ms: float = 0.0,
    ) -> None:
        self.model = model
        self.name = name
        self.max_batch = max_batch
        self.max_body_bytes = max_body_bytes
        self.admission = Admission(concurrency, max_queue)
        self.service_delay_s = service_delay_ms / 1000
        """Added to every inference while it holds its slot: emulates a slower edge device
        (this machine computes the student in microseconds), so queues form as they would."""
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="infer")
        self.served = 0
        self.expired = 0
        self.unavailable = False
        """Set by SIGUSR1, cleared by SIGUSR2 (``edgeroute chaos unavailable|available``):
        every inference is answered 503 with ``Retry-After`` while health checks still pass,
        as a worker whose model backend failed would."""
        self.refused = 0
        self.inference_stats = InferenceStats(contract.MODEL_NAME, contract.MODEL_VERSION)

    @property
    def versions(self) -> set[str]:
        """The versions a request may name: the contract's and this artifact's own."""
        return {contract.version_of(self.model.version), self.model.version}

    def _predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the model on an inference thread, plus the emulated device slowness."""
        result = self.model.predict(x)
        if self.service_delay_s:
            time.sleep(self.service_delay_s)
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def infer(self, request: Request) -> Response:
        """One inference, counted in the statistics (a success, or a failure after its time)."""
        started = time.perf_counter()
        response = await self._infer(request)
        if response.status_code != 200:
            self.inference_stats.failure(time.perf_counter() - started)
        return response

    async def _infer(self, request: Request) -> Response:
        received = time.perf_counter()
        echo = {k: v for k, v in request.headers.items() if k == REQUEST_ID_HEADER}
        if self.unavailable:
            self.refused += 1
            return error_response(OIPError(f"{self.name} is unavailable", status=503),
                                  {"retry-after": "1", **echo})
        try:
            contract.check_model_name(request.path_params["model"])
            if "version" in request.path_params:
                contract.check_version(request.path_params["version"], self.versions)
            check_content_type(request.headers)
            body = await read_body(request, self.max_body_bytes)
            oip_request = decode_request(body, request.headers)
            x = contract.input_batch(oip_request, self.max_batch)
            budget_s = caller_deadline_s(request.headers)
            async with self.admission.slot() as queued_s:
                if budget_s is not None and queued_s >= budget_s:
                    self.expired += 1
                    raise OIPError("the caller's deadline passed while queued", status=504)
                started = time.perf_counter()
                loop = asyncio.get_running_loop()
                probabilities, labels = await loop.run_in_executor(self._pool, self._predict, x)
                infer_s = time.perf_counter() - started
            outputs = select_outputs(oip_request, contract.output_tensors(probabilities, labels))
        except OIPError as error:
            return error_response(error, echo)
        except QueueFull as full:
            return error_response(OIPError(str(full), status=503), {"retry-after": "1", **echo})
        self.served += 1
        self.inference_stats.success(time.perf_counter() - received, len(x), queue_s=queued_s,
                                     infer_s=infer_s)
        response = InferResponse(
            model_name=contract.MODEL_NAME,
            model_version=self.model.version,
            id=oip_request.id,
            outputs=outputs,
        )
        return infer_response(
            response,
            binary_set(oip_request, outputs),
            {"server-timing": server_timing(queue=queued_s, infer=infer_s), **echo},
        )

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model.name,
            "model_version": self.model.version,
            "served": self.served,
            "running": self.admission.running,
            "waiting": self.admission.waiting,
            "rejected": self.admission.rejected,
            "expired": self.expired,
            "refused": self.refused,
        }


def create_app(worker: EdgeWorker, agent: FleetAgent | None = None) -> Starlette:
    """The worker's routes; with ``agent``, it joins a router's fleet while it runs and
    leaves on shutdown."""

    async def live(_: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(_: Request) -> Response:
        return JSONResponse({"ready": True})

    async def server_metadata(_: Request) -> Response:
        return JSONResponse({"name": SERVER_NAME, "version": worker.model.version,
                             "extensions": EXTENSIONS})

    def model_route(answer: Callable[[], dict[str, Any]]) -> Callable[..., Any]:
        """A model route: 404 in OIP form for another model or a version not served."""

        async def route(request: Request) -> Response:
            try:
                contract.check_model_name(request.path_params["model"])
                if "version" in request.path_params:
                    contract.check_version(request.path_params["version"], worker.versions)
            except OIPError as error:
                return error_response(error)
            return JSONResponse(answer())
        return route

    version = contract.version_of(worker.model.version)
    model_metadata = model_route(lambda: contract.model_metadata(
        [version], parameters={"version_targets": {version: [worker.name]},
                               "model_version": worker.model.version}))
    model_ready = model_route(lambda: {"name": contract.MODEL_NAME, "ready": True})
    model_stats = model_route(worker.inference_stats.model_stats)
    model_config = model_route(lambda: contract.model_config(worker.max_batch))

    async def stats(_: Request) -> Response:
        return JSONResponse(worker.stats())

    routes = [
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", server_metadata),
        Route("/v1/stats", stats),
        Route("/v2/models/stats", lambda _: JSONResponse(worker.inference_stats.model_stats())),
    ]
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        routes += [Route(prefix, model_metadata), Route(f"{prefix}/ready", model_ready),
                   Route(f"{prefix}/infer", worker.infer, methods=["POST"]),
                   Route(f"{prefix}/stats", model_stats), Route(f"{prefix}/config", model_config)]

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        beating = asyncio.create_task(agent.run()) if agent is not None else None
        try:
            yield
        finally:
            if beating is not None and agent is not None:
                beating.cancel()
                await asyncio.gather(beating, return_exceptions=True)
                await agent.leave()
            worker.close()

    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers=oip_exception_handlers(),
                     middleware=[Middleware(InferGZip, minimum_size=GZIP_MIN_BYTES)])


def serve(
    model_path: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8101,
    name: str = "edge",
    concurrency: int = 1,
    max_queue: int = 32,
    service_delay_ms: float = 0.0,
    join: Callable[[Callable[[], bool]], FleetAgent] | None = None,
) -> None:
    """Run a worker until SIGINT/SIGTERM; uvicorn drains in-flight requests before exiting.

    ``join(ready)`` makes the agent that keeps the worker in a router's fleet
    (``ready()`` turns true once the server listens)."""
    from pathlib import Path

    import uvicorn

    model = OnnxModel(Path(model_path), threads=1)
    worker = EdgeWorker(model, name=name, concurrency=concurrency, max_queue=max_queue,
                        service_delay_ms=service_delay_ms)
    signal.signal(signal.SIGUSR1, lambda *_: setattr(worker, "unavailable", True))
    signal.signal(signal.SIGUSR2, lambda *_: setattr(worker, "unavailable", False))
    holder: list[uvicorn.Server] = []
    agent = join(lambda: bool(holder) and holder[0].started) if join is not None else None
    server = uvicorn.Server(uvicorn.Config(
        create_app(worker, agent),
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=5,
        access_log=False,
    ))
    holder.append(server)
    server.run()

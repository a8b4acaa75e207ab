"""The edge worker's ASGI app: OIP v2 over HTTP in front of onnxruntime sessions, one per
hosted model (the edge variant of every model the stack serves).

Requests are checked against the model's signature (:mod:`edgeroute.signature`) and
answered with its own outputs.

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
from edgeroute.oip import (
    EXTENSIONS,
    InferResponse,
    OIPError,
    Tensor,
    binary_set,
    decode_request,
    select_outputs,
)
from edgeroute.oipstats import InferenceStats
from edgeroute.signature import (
    SIGNATURE_VERSION,
    Signature,
    check_inputs,
    check_model,
    check_outputs,
    check_version,
    metadata,
    model_config,
    repository_index,
)

SERVER_NAME = "edgeroute-edge"
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


class Hosted:
    """One model the worker serves: its session, its signature under the served name, the
    input range it checks, and its statistics."""

    def __init__(self, name: str, model: Any,
                 input_range: tuple[float, float] | None = None) -> None:
        self.name = name
        self.model = model
        self.input_range = input_range
        self.signature: Signature = model.signature.renamed(name)
        self.stats = InferenceStats(name, SIGNATURE_VERSION)

    @property
    def versions(self) -> set[str]:
        """The versions a request may name: the signature's and this artifact's own."""
        return {contract.version_of(self.model.version), self.model.version}


class EdgeWorker:
    """Owns the models, the admission gate and the inference threads of one worker.

    ``model`` is served as ``served_as`` (the bundled ``digits`` by default, with its pixel
    range); ``extra`` are the other models this worker hosts."""

    def __init__(
        self,
        model: Any,
        *,
        served_as: str = contract.MODEL_NAME,
        extra: tuple[Hosted, ...] = (),
        name: str = "edge",
        concurrency: int = 1,
        max_queue: int = 32,
        max_batch: int = contract.DEFAULT_MAX_BATCH,
        max_body_bytes: int = 4 * 1024 * 1024,
        service_delay_ms: float = 0.0,
    ) -> None:
        self.model = model
        primary = Hosted(served_as, model,
                         contract.INPUT_RANGE if served_as == contract.MODEL_NAME else None)
        self.hosted = {h.name: h for h in (primary, *extra)}
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
        self.inference_stats = self.hosted[served_as].stats

    @property
    def versions(self) -> set[str]:
        return self.hosted[next(iter(self.hosted))].versions

    def lookup(self, model: str, version: str | None) -> Hosted:
        """The hosted model a route names, or a 404 in OIP form."""
        check_model(model, self.hosted)
        hosted = self.hosted[model]
        if version is not None:
            check_version(model, version, hosted.versions)
        return hosted

    def _run(self, hosted: Hosted, tensors: tuple[Tensor, ...]) -> dict[str, np.ndarray]:
        """Run a model on an inference thread, plus the emulated device slowness."""
        result = hosted.model.run({t.name: t.data for t in tensors})
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
            hosted = self.hosted.get(request.path_params["model"])
            (hosted.stats if hosted else self.inference_stats).failure(
                time.perf_counter() - started)
        return response

    async def _infer(self, request: Request) -> Response:
        received = time.perf_counter()
        echo = {k: v for k, v in request.headers.items() if k == REQUEST_ID_HEADER}
        if self.unavailable:
            self.refused += 1
            return error_response(OIPError(f"{self.name} is unavailable", status=503),
                                  {"retry-after": "1", **echo})
        try:
            hosted = self.lookup(request.path_params["model"],
                                 request.path_params.get("version"))
            check_content_type(request.headers)
            body = await read_body(request, self.max_body_bytes)
            oip_request = decode_request(body, request.headers)
            batch = check_inputs(oip_request, hosted.signature, self.max_batch,
                                 hosted.input_range)
            budget_s = caller_deadline_s(request.headers)
            async with self.admission.slot() as queued_s:
                if budget_s is not None and queued_s >= budget_s:
                    self.expired += 1
                    raise OIPError("the caller's deadline passed while queued", status=504)
                started = time.perf_counter()
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(self._pool, self._run, hosted, batch.tensors)
                infer_s = time.perf_counter() - started
            outputs = select_outputs(oip_request, check_outputs(hosted.signature, result))
        except OIPError as error:
            return error_response(error, echo)
        except QueueFull as full:
            return error_response(OIPError(str(full), status=503), {"retry-after": "1", **echo})
        self.served += 1
        hosted.stats.success(time.perf_counter() - received, len(batch), queue_s=queued_s,
                             infer_s=infer_s)
        response = InferResponse(
            model_name=hosted.name,
            model_version=hosted.model.version,
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
            "models": {h.name: h.model.version for h in self.hosted.values()},
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
                             "extensions": list(EXTENSIONS)})

    def model_route(answer: Callable[[Hosted], dict[str, Any]]) -> Callable[..., Any]:
        """A model route: 404 in OIP form for another model or a version not served."""

        async def route(request: Request) -> Response:
            try:
                hosted = worker.lookup(request.path_params["model"],
                                       request.path_params.get("version"))
            except OIPError as error:
                return error_response(error)
            return JSONResponse(answer(hosted))
        return route

    def hosted_metadata(hosted: Hosted) -> dict[str, Any]:
        version = contract.version_of(hosted.model.version)
        return metadata(hosted.signature, [version], parameters={
            "version_targets": {version: [worker.name]},
            "model_version": hosted.model.version})

    model_metadata = model_route(hosted_metadata)
    model_ready = model_route(lambda hosted: {"name": hosted.name, "ready": True})
    model_stats = model_route(lambda hosted: hosted.stats.model_stats())
    model_configuration = model_route(
        lambda hosted: model_config(hosted.signature, worker.max_batch))

    def all_stats(_: Request) -> Response:
        entries = [e for h in worker.hosted.values() for e in h.stats.model_stats()["model_stats"]]
        return JSONResponse({"model_stats": entries})

    async def index(_: Request) -> Response:
        return JSONResponse(repository_index(set(worker.hosted)))

    async def stats(_: Request) -> Response:
        return JSONResponse(worker.stats())

    routes = [
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", server_metadata),
        Route("/v1/stats", stats),
        Route("/v2/models/stats", all_stats),
        Route("/v2/repository/index", index, methods=["POST"]),
    ]
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        routes += [Route(prefix, model_metadata), Route(f"{prefix}/ready", model_ready),
                   Route(f"{prefix}/infer", worker.infer, methods=["POST"]),
                   Route(f"{prefix}/stats", model_stats),
                   Route(f"{prefix}/config", model_configuration)]

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
    hosted: list[dict[str, Any]] | None = None,
) -> None:
    """Run a worker until SIGINT/SIGTERM; uvicorn drains in-flight requests before exiting.

    ``join(ready)`` makes the agent that keeps the worker in a router's fleet
    (``ready()`` turns true once the server listens). ``hosted`` lists the models to serve
    (``{name, path, sha256, input_range}`` each, sha256 checked at load); without it the
    worker serves ``model_path`` as ``digits``."""
    from pathlib import Path

    import uvicorn

    if hosted:
        loaded = [Hosted(h["name"], OnnxModel(Path(h["path"]), threads=1, sha256=h.get("sha256")),
                         tuple(h["input_range"]) if h.get("input_range") else None)
                  for h in hosted]
        first = loaded[0]
        worker = EdgeWorker(first.model, served_as=first.name, extra=tuple(loaded[1:]),
                            name=name, concurrency=concurrency, max_queue=max_queue,
                            service_delay_ms=service_delay_ms)
        worker.hosted[first.name].input_range = first.input_range
    else:
        worker = EdgeWorker(OnnxModel(Path(model_path), threads=1), name=name,
                            concurrency=concurrency, max_queue=max_queue,
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

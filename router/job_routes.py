"""The router's batch job routes, and the replica's side of running jobs.

``POST /v1/jobs`` takes an OIP infer body for one model (``model_name`` in the body) with
any number of rows up to ``router.jobs.max_rows``, JSON or binary tensors, up to
``router.jobs.max_body_bytes``; ``parameters.deadline_ms`` (default one hour, up to
``max_deadline_ms``), ``parameters.quality`` and ``outputs`` as for an infer request. It
answers ``202 {"id", "status_url"}`` once the job is kept on disk, or a 4xx before anything
runs: a malformed body or input (400), an unknown model (404), too large a body (413), or
a tenant at ``max_jobs_per_tenant`` unfinished jobs, or the store at ``max_held_bytes``
(429). ``GET /v1/jobs`` lists the caller's jobs; ``GET /v1/jobs/{id}`` is one job's
progress (:meth:`router.jobstore.JobRecord.view`); ``GET /v1/jobs/{id}/result`` is an OIP
infer response with every row in order (409 until the job is done); ``DELETE
/v1/jobs/{id}`` cancels it. Callers authenticate as for inference (the tenant's key) and
see their own tenant's jobs only; another tenant's job is a 404.

:class:`JobRoutes` is a base class of the Serve ingress, as :class:`router.oip_routes.OIPRoutes`
is; :func:`job_runner` builds the replica's :class:`~router.jobrunner.JobRunner` over its
routing services.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from edgeroute.config import JobSettings, RouterSettings
from edgeroute.http import check_content_type, error_response, infer_response, read_body
from edgeroute.oip import InferRequest, InferResponse, OIPError, Tensor, decode_request
from edgeroute.signature import Batch, check_inputs
from router import admin
from router.cache import Directives
from router.errors import ROUTER_ERRORS, error_reply
from router.jobplan import Lane
from router.jobrunner import JobRunner, Placed
from router.jobstore import FINAL, JobRecord, JobStore, new_job_id, summary
from router.models import ModelServices
from router.policy import CascadeSettings, HedgeSettings, RoutingPolicy
from router.policy_keeper import PolicyKeeper
from router.service import RoutingService
from router.tenancy import Caller, resolve

DEFAULT_DEADLINE_MS = 3_600_000.0
BUSY_RETRY_AFTER_S = 60
JOB_POLICY = "batch-job"
"""The policy name job calls carry in metrics and the ledger."""
NO_CACHE = Directives(read=False, write=False)

routes = APIRouter()


def jobs_dir(settings: JobSettings) -> Path:
    return settings.dir or Path(tempfile.gettempdir()) / "edgeroute-jobs"


def job_runner(settings: JobSettings, models: ModelServices) -> JobRunner:
    """The replica's job runner: lanes and calls through each model's routing service."""

    def lanes(record: JobRecord, own: dict[str, int], rates: dict[str, float]) -> list[Lane]:
        return service_lanes(models.get(record.model).service, settings, record, own, rates)

    async def place(record: JobRecord, lane: str, rows: dict[str, np.ndarray]) -> Placed:
        return await place_chunk(models.get(record.model).service, settings, record, lane,
                                 rows)

    return JobRunner(JobStore(jobs_dir(settings)), settings, place=place, lanes=lanes)


def service_lanes(service: RoutingService, settings: JobSettings, record: JobRecord,
                  own: dict[str, int], rates: dict[str, float]) -> list[Lane]:
    """Each target the job may use, as a lane: an edge takes one call at a time and only
    while its online calls in flight are at most ``edge_idle_in_flight``; another target
    takes ``cloud_max_in_flight`` calls of ``cloud_chunk_rows``."""
    lanes = []
    for target in service.targets:
        if target.name in service.drained or not service.available(target):
            continue
        if record.quality == "high" and target.quality != "large":
            continue
        mine = own.get(target.name, 0)
        if target.tier == "edge":
            per_call, capacity = 1, 1
            online = service.executor.limits.counts.in_flight(target.name) - mine
            free = capacity - mine if online <= settings.edge_idle_in_flight else 0
        else:
            per_call = max(settings.cloud_chunk_rows // record.chunk_rows, 1)
            capacity = settings.cloud_max_in_flight
            free = capacity - mine
        rows = per_call * record.chunk_rows
        view = target.view(rows, True, service.policy.prices.for_target(target.name,
                                                                         target.tier))
        typical_s = max(view.latency.quantile(0.5) / 1000, 1e-3)
        lanes.append(Lane(target.name, target.tier, per_call, view.cost_usd / rows,
                          rates.get(target.name) or rows / typical_s, capacity, max(free, 0)))
    return lanes


async def place_chunk(service: RoutingService, settings: JobSettings, record: JobRecord,
                      lane: str, rows: dict[str, np.ndarray]) -> Placed:
    """One job call on ``lane`` alone, through the replica's executor (its transports,
    breakers, admission and ledger), never from or into the response cache."""
    target = service.targets.get(lane)
    if target is None:
        raise LookupError(f"target {lane} is gone")
    policy = RoutingPolicy(
        strategy="always-edge" if target.tier == "edge" else "always-cloud",
        allowed_targets=(lane,), allowed_tiers=(target.tier,), risk_budget=1.0,
        default_deadline_ms=settings.chunk_timeout_ms, max_fallbacks=0,
        hedge=HedgeSettings(enabled=False), cascade=CascadeSettings(enabled=False),
        high_quality_tiers=(target.tier,) if target.quality == "large" else ("cloud",))
    n = len(next(iter(rows.values())))
    batch = Batch(record.model, tuple(Tensor(name, rows[name]) for name in record.inputs), n)
    routed = await service.route(batch, deadline_ms=settings.chunk_timeout_ms,
                                 received=time.monotonic(), quality=record.quality,
                                 caller=Caller(record.tenant, JOB_POLICY, policy),
                                 model=record.model, cache=NO_CACHE)
    return Placed({t.name: t.data for t in routed.reply.outputs},
                  routed.target_name or lane, getattr(routed, "cost_usd", 0.0))


def _deadline_ms(request: InferRequest, most_ms: float) -> float:
    deadline = request.parameters.get("deadline_ms", DEFAULT_DEADLINE_MS)
    if isinstance(deadline, bool) or not isinstance(deadline, int | float) or not (
            math.isfinite(deadline) and 0 < deadline <= most_ms):
        raise OIPError(f"parameters.deadline_ms must be a number in (0, {most_ms:g}]")
    return float(deadline)


def _busy(message: str) -> Response:
    return error_response(OIPError(message, status=429),
                          {"retry-after": str(BUSY_RETRY_AFTER_S)})


class JobRoutes:
    models: ModelServices
    settings: RouterSettings
    policies: PolicyKeeper
    service: RoutingService
    job_runner: JobRunner

    def _ensure_background(self) -> None:
        """Start the replica's background tasks, the job runner among them (the ingress
        does; a replica that just restarted resumes its jobs from the first call on)."""

    def _caller(self, request: Request, policy: object = None) -> Caller:
        return resolve(self.service.policy, request.headers.get("authorization"), policy)

    def _own(self, request: Request, job_id: str) -> JobRecord:
        """The caller's job ``job_id``, or a 404 (another tenant's job is not found)."""
        caller = self._caller(request)
        try:
            record = self.job_runner.store.load(job_id)
        except KeyError:
            record = None
        if record is None or record.tenant != caller.tenant:
            raise OIPError(f"no job {job_id!r}", status=404)
        return record

    @routes.post("/v1/jobs", status_code=202)
    async def submit_job(self, request: Request) -> Response:
        settings = self.settings.jobs
        self._ensure_background()
        try:
            if (refused := admin.without_policy(self.policies)) is not None:
                return refused
            self._caller(request)  # a missing or wrong key is refused before the body is read
            check_content_type(request.headers)
            body = await read_body(request, settings.max_body_bytes)
            job = decode_request(body, request.headers)
            if not job.model_name:
                raise OIPError("'model_name' is required: the model every row runs on")
            served = self.models.get(job.model_name)
            x = check_inputs(job, served.model.signature, settings.max_rows,
                             served.model.input_range)
            caller = self._caller(request, job.parameters.get("policy"))
            deadline_ms = _deadline_ms(job, settings.max_deadline_ms)
            quality = job.parameters.get("quality", "any")
            if quality not in ("any", "high"):
                raise OIPError("parameters.quality must be 'any' or 'high'")
            known = [s.name for s in served.model.signature.outputs]
            if job.outputs is not None and (unknown := set(job.outputs) - set(known)):
                raise OIPError(f"unknown output(s): {', '.join(sorted(unknown))}")
        except ROUTER_ERRORS as error:
            return error_reply(error)
        store = self.job_runner.store
        records = await asyncio.to_thread(lambda: list(store.records()))
        if sum(r.tenant == caller.tenant and r.status not in FINAL
               for r in records) >= settings.max_jobs_per_tenant:
            return _busy(f"{caller.tenant} has {settings.max_jobs_per_tenant} unfinished jobs, "
                         "the most allowed; wait for one to finish or cancel one")
        held = await asyncio.to_thread(store.held_bytes)
        if held + 2 * x.nbytes > settings.max_held_bytes:
            return _busy(f"the job store holds {held} bytes; this job needs about "
                         f"{2 * x.nbytes} more and the limit is {settings.max_held_bytes}")
        now = time.time()
        record = JobRecord(
            id=new_job_id(), tenant=caller.tenant, model=served.model.name, rows=len(x),
            chunk_rows=settings.edge_chunk_rows, inputs=tuple(t.name for t in x.tensors),
            outputs=job.outputs, quality=quality, request_id=job.id, created_at=now,
            deadline_at=now + deadline_ms / 1000, binary_outputs=tuple(sorted(
                n for n in (job.outputs or known) if job.wants_binary(n))))
        inputs = {t.name: t.data for t in x.tensors}
        record = await asyncio.to_thread(store.create, record, inputs)
        url = f"/v1/jobs/{record.id}"
        return JSONResponse({"id": record.id, "status_url": url}, status_code=202,
                            headers={"location": url})

    @routes.get("/v1/jobs")
    async def list_jobs(self, request: Request) -> Response:
        self._ensure_background()
        try:
            caller = self._caller(request)
        except ROUTER_ERRORS as error:
            return error_reply(error)
        records = await asyncio.to_thread(lambda: list(self.job_runner.store.records()))
        return JSONResponse({"jobs": summary([r for r in records if r.tenant == caller.tenant])})

    @routes.get("/v1/jobs/{job_id}")
    async def job_status(self, job_id: str, request: Request) -> Response:
        self._ensure_background()
        try:
            record = self._own(request, job_id)
        except ROUTER_ERRORS as error:
            return error_reply(error)
        return JSONResponse(record.view(f"/v1/jobs/{record.id}"))

    @routes.get("/v1/jobs/{job_id}/result")
    async def job_result(self, job_id: str, request: Request) -> Response:
        try:
            record = self._own(request, job_id)
            if record.status != "done":
                raise OIPError(f"job {job_id} is {record.status}, not done "
                               f"({record.rows_done} of {record.rows} rows)", status=409)
            signature = self.models.get(record.model).model.signature
        except ROUTER_ERRORS as error:
            return error_reply(error)
        names = record.outputs or tuple(s.name for s in signature.outputs)
        result = await asyncio.to_thread(self.job_runner.store.result, record, names)
        outputs = tuple(Tensor(name, result[name]) for name in names)
        response = InferResponse(record.model, outputs, None, record.request_id or record.id, {
            "job_id": record.id, "rows": record.rows, "cost_usd": record.cost_usd,
            "placement": dict(record.placement)})
        return infer_response(response, frozenset(record.binary_outputs))

    @routes.delete("/v1/jobs/{job_id}")
    async def cancel_job(self, job_id: str, request: Request) -> Response:
        try:
            record = self._own(request, job_id)
        except ROUTER_ERRORS as error:
            return error_reply(error)
        if record.status in FINAL:
            return JSONResponse(record.view(f"/v1/jobs/{record.id}"))
        cancelled = await asyncio.to_thread(self.job_runner.cancel_unclaimed, job_id)
        if cancelled is not None:
            return JSONResponse(cancelled.view(f"/v1/jobs/{job_id}"))
        view: dict[str, Any] = record.view(f"/v1/jobs/{job_id}")
        view["status"] = "cancelling"
        return JSONResponse(view, status_code=202)

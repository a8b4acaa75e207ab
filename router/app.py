"""The router: a Ray Serve ingress deployment speaking OIP v2 for every configured model.

HTTP glue only: parsing is the codec's (:mod:`edgeroute.oip`), who the caller
is and which policy applies is :mod:`router.tenancy`'s, routing is
:class:`router.service.RoutingService`'s, and the HTTP answer to each error of
theirs is :mod:`router.errors`'. Endpoints: the OIP health and infer
routes (JSON and binary tensors; gzip or deflate bodies), the model routes of
:mod:`router.oip_routes` (metadata, readiness, versions, statistics, config),
``GET /v1/targets`` (the live view of every target), ``GET /v1/policy`` and
``GET /v1/policy/history``, and the route ``PUT /v1/links/{target}`` that
changes a target's emulated link (all four need the admin token:
:mod:`router.admin`), and the edge fleet: ``PUT``/``DELETE /v1/fleet/{name}``
(join or heartbeat, leave; fleet token) and ``GET /v1/fleet``
(:mod:`router.fleet`, :mod:`router.fleet_actor`). Every error, the framework's own
included, is an OIP ``{"error": ...}`` body; answers are gzipped when the caller's
``Accept-Encoding`` asks. Batch jobs (``/v1/jobs``): :mod:`router.job_routes`. The status
page, ``GET /ui`` and ``GET /v1/metrics/summary``, is :mod:`router.ui`'s. Ahead of all
this, the replica's HTTP server runs :mod:`router.frontdoor`, which this configures.
"""

import asyncio
import logging
import os
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from cloud.deployment import CloudModel
from edgeroute.config import StackConfig
from edgeroute.http import (
    InferGZip,
    check_content_type,
    error_response,
    infer_response,
    oip_exception_handlers,
    read_body,
)
from edgeroute.models.catalog import resolve as resolve_models
from edgeroute.oip import (
    InferRequest,
    InferResponse,
    OIPError,
    binary_set,
    decode_request,
    select_outputs,
)
from edgeroute.signature import check_inputs
from router import admin, frontdoor, job_routes
from router.admin import bearer_ok, refuse_non_admin
from router.build import build_targets, fleet_syncs, target_estimator
from router.cache import directives
from router.context import (
    REQUEST_ID_HEADER,
    bind_request_id,
    pick_request_id,
    serve_request_id,
)
from router.decision import RequestQuality
from router.errors import ROUTER_ERRORS, error_reply
from router.estimator import TargetEstimator
from router.fleet import Member
from router.fleet_actor import FleetClient, RegistryUnavailable
from router.lag import LoopLag
from router.metrics import RequestTally, RouterMetrics, ServeFactory
from router.models import ModelServices
from router.oip_routes import OIPRoutes, routes
from router.openapi import INFER_OPENAPI
from router.policy_keeper import PolicyKeeper
from router.served import Shed
from router.service import RoutingService
from router.targets import Target
from router.tenancy import check_quality, resolve
from router.timing import ServerTiming
from router.ui import StatusPage
from router.ui import routes as ui_routes

log = logging.getLogger("ray.serve")
REPLICA_POLL_S = 2.0

app = FastAPI(
    title="edgeroute",
    summary="Edge-versus-cloud placement router speaking the Open Inference Protocol (v2).",
    version="0.1.0",
    exception_handlers=oip_exception_handlers(),
)
app.include_router(routes)
app.include_router(job_routes.routes)
app.add_middleware(ServerTiming)
app.add_middleware(InferGZip)
app.include_router(ui_routes)


def request_options(request: InferRequest, default_ms: float,
                    max_ms: float) -> tuple[float, RequestQuality, bool]:
    """The deadline, quality and explain flag a request asks for, or a 400 saying why not."""
    params = request.parameters
    deadline = frontdoor.positive_ms(params.get("deadline_ms", default_ms))
    if deadline is None or deadline > max_ms:
        raise OIPError(f"parameters.deadline_ms must be a number in (0, {max_ms:g}]")
    quality = params.get("quality", "any")
    if quality not in ("any", "high"):
        raise OIPError("parameters.quality must be 'any' or 'high'")
    explain = params.get("explain", False)
    if not isinstance(explain, bool):
        raise OIPError("parameters.explain must be a boolean")
    return deadline, quality, explain


@serve.deployment(name="router", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
@serve.ingress(app)
class Router(OIPRoutes, job_routes.JobRoutes, StatusPage):
    def __init__(self, config: dict[str, Any],
                 clouds: dict[str, DeploymentHandle] | DeploymentHandle) -> None:
        self.config = StackConfig.model_validate(config)
        self.settings = self.config.router
        served = resolve_models(self.config)
        handles = clouds if isinstance(clouds, dict) else {next(iter(served)): clouds}
        metrics, lag = RouterMetrics(ServeFactory()), LoopLag()
        self.models = ModelServices([(model, RoutingService(
            build_targets(self.config, handles[name], model), metrics=metrics.for_model(name),
            min_attempt_ms=self.settings.min_attempt_ms, lag=lag,
            finish_ms=frontdoor.DOOR.finish_ms))
            for name, model in served.items()])
        self.service = self.models.first.service
        """The first model's service: the status page and the edge fleet use it."""
        self.policies = PolicyKeeper()
        self.inference_stats = self.models.first.stats
        self.static_targets = frozenset(t.name for m in self.models for t in m.service.targets)
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.admin_token = self.settings.admin_token or os.environ.get("EDGEROUTE_ADMIN_TOKEN")
        self.fleet_token = self.settings.fleet_token or os.environ.get("EDGEROUTE_FLEET_TOKEN")
        self.ops_token = self.settings.ops_token or os.environ.get("EDGEROUTE_OPS_TOKEN")
        self.fleet = FleetClient(max_members=self.settings.fleet_max_members)
        self.fleet_syncs = fleet_syncs(
            self.models, lambda: self.fleet.members(self.settings.fleet_ttl_ms / 1000),
            self.settings)
        """One per model: a worker becomes a target of each model it says it hosts."""
        self.fleet_sync = self.fleet_syncs[0]
        self._background: list[asyncio.Task[None]] = []
        self.job_runner = job_routes.job_runner(self.settings.jobs, self.models)

    async def _sync_fleet(self) -> None:
        for sync in self.fleet_syncs:
            await sync.sync_once()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve calls this with the deployment's ``user_config``: swap the policy atomically.

        Never raises (Serve would stop the replica): an invalid policy, however it was
        deployed, is logged and reported by ``GET /v1/policy`` and the old one stays.
        """
        policy = self.policies.offer(user_config)
        if policy is None:
            log.error("policy rejected, the policy in force stays: %s",
                      self.policies.view()["rejected"])
            return
        self.models.apply_policy(policy)
        # Through the module: Serve ships this class by value, with copies of its globals.
        frontdoor.DOOR.configure(policy.admission, on_shed=self.models.door_shed)
        log.info("policy %s in force", self.policies.view()["sha256"])

    def _ensure_background(self) -> None:
        if not self._background or any(t.done() for t in self._background):
            for task in self._background:
                task.cancel()
            loop = asyncio.get_running_loop()
            self._background = [*(loop.create_task(m.service.targets.run_probes())
                                  for m in self.models),
                                loop.create_task(self._watch_replicas()),
                                *(loop.create_task(s.run()) for s in self.fleet_syncs),
                                loop.create_task(self.service.lag.run()),
                                loop.create_task(self.job_runner.run())]

    async def _watch_replicas(self) -> None:
        """Running cloud replicas of each model, read from Serve every few seconds (a bounded
        rate)."""
        name = self.config.cloud.name
        last = time.monotonic()
        while True:
            try:
                status = await asyncio.to_thread(serve.status)
                deployments = status.applications["edgeroute"].deployments
                now = time.monotonic()
                for model in self.models:
                    deployment = deployments[self.config.cloud_deployment(model.model.name)]
                    running = sum(n for state, n in deployment.replica_states.items()
                                  if state == "RUNNING")
                    model.service.observe_replicas(name, running, now - last)
                last = now
            except Exception as exc:  # status is advisory: never let it stop routing
                log.warning("could not read replica counts: %s", exc)
            await asyncio.sleep(REPLICA_POLL_S)

    async def check_health(self) -> None:
        self._ensure_background()

    @app.get("/v2/health/live")
    async def live(self) -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready(self) -> Response:
        """Ready once some target has answered: the router can serve something."""
        self._ensure_background()
        is_ready = any(t.estimator.observed for m in self.models for t in m.service.targets)
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)

    @app.post("/v2/models/{model}/infer", openapi_extra=INFER_OPENAPI)
    async def infer(self, model: str, request: Request) -> Response:
        received = request.scope.get(frontdoor.ARRIVED) or time.monotonic()
        self._ensure_background()
        # Serve's proxy takes the client's x-request-id (or makes one), logs it and returns
        # it on the response; the same id goes on to the targets.
        rid = pick_request_id(request.headers.get(REQUEST_ID_HEADER), serve_request_id())
        bind_request_id(rid)
        with self.models.metrics_of(model).tally(received) as tally:
            return await self._infer(model, request, rid, received, tally)

    async def _infer(self, model: str, request: Request, rid: str, received: float,
                     tally: RequestTally) -> Response:
        try:
            if (refused := admin.without_policy(self.policies)) is not None:
                tally.status = refused.status_code
                return refused
            served = self.models.get(model)
            check_content_type(request.headers)
            body = await read_body(request, self.settings.max_body_bytes)
            oip_request = decode_request(body, request.headers)
            x = check_inputs(oip_request, served.model.signature, self.settings.max_batch,
                             served.model.input_range)
            caller = resolve(self.service.policy, request.headers.get("authorization"),
                             oip_request.parameters.get("policy"), served.model.name)
            tally.policy = caller.policy_name
            deadline_ms, quality, explain = request_options(
                oip_request, caller.policy.default_deadline_ms, self.settings.max_deadline_ms)
            check_quality(caller, quality, served.model.name)
            frontdoor.DOOR.dispatching(request.scope)
            routed = await served.service.route(
                x, deadline_ms=deadline_ms, received=received, quality=quality, caller=caller,
                model=served.model.name, cache=directives(request.headers.get("cache-control")))
            tally.tier = routed.metric_tier
            request.scope[frontdoor.ANSWERED] = time.monotonic()
            reply = routed.reply
            outputs = select_outputs(oip_request, reply.outputs)
        except ROUTER_ERRORS as error:
            entry = self.models.by_name.get(model, self.models.first)
            if isinstance(error, Shed):
                entry.service.metrics.shed.record(1, {"reason": error.scope})
            refusal = error_reply(error)
            tally.status = refusal.status_code
            entry.stats.failure(time.monotonic() - received)
            return refusal
        served.stats.success(time.monotonic() - received, len(x), target=routed.target_name,
                                     model_version=reply.model_version)
        parameters = routed.parameters(caller, deadline_ms, explain)
        parameters["router_replica"] = self.replica
        response = InferResponse(served.model.name, outputs, reply.model_version,
                                 oip_request.id or rid, parameters)
        return infer_response(response, binary_set(oip_request, outputs))

    @app.get("/v1/policy")
    async def current_policy(self, request: Request) -> Response:
        """The policy in force on this replica, the ones before it and the last rejected."""
        refused = refuse_non_admin(request, self.admin_token, self.ops_token, view=True)
        return refused or JSONResponse(admin.policy_view(self.policies, self.replica))

    @app.get("/v1/policy/history")
    async def policy_history(self, request: Request) -> Response:
        """The last applied policies with their documents, newest first."""
        refused = refuse_non_admin(request, self.admin_token, self.ops_token, view=True)
        return refused or JSONResponse({"replica": self.replica,
                                        "history": self.policies.history_view()})

    @app.get("/v1/targets")
    async def list_targets(self, request: Request) -> Response:
        self._ensure_background()
        refused = refuse_non_admin(request, self.admin_token, self.ops_token, view=True)
        return refused or JSONResponse({
            **self.models.snapshot(), "replica": self.replica,
            "front_door": frontdoor.DOOR.snapshot(), "policy": admin.policy_summary(self.policies)})

    @app.post("/v1/targets/{name}/{action}")
    async def target_action(self, name: str, action: str, request: Request) -> Response:
        """Drain, undrain or reset one target, for every model it serves (admin token
        required)."""
        refused = refuse_non_admin(request, self.admin_token, self.ops_token)
        return refused or admin.target_action(self.models.with_target(name) or [self.service],
                                              name, action, self._fresh, self.replica)

    def _fresh(self, target: Target) -> TargetEstimator:
        fresh = target_estimator(self.config.router, target.name, target.tier, target.quality,
                                 target.estimator.settings.concurrency)
        fresh.bytes_per_row = target.estimator.bytes_per_row
        return fresh

    @app.put("/v1/links/{name}")
    async def set_link(self, name: str, request: Request) -> Response:
        """Replace fields of a target's emulated link (admin token required); the link is
        the target's, whichever model a call runs."""
        refused = refuse_non_admin(request, self.admin_token, self.ops_token)
        return refused or await admin.set_link(self.models, name, request, self.replica)

    @app.delete("/v1/targets/{name}")
    async def remove_target(self, name: str, request: Request) -> Response:
        """Take a configured edge or external target out of this replica, for every model
        (admin token); its name may then join the fleet (``edgeroute reload``)."""
        refused = refuse_non_admin(request, self.admin_token, self.ops_token)
        if refused:
            return refused
        answer = admin.remove_target(self.models, self.fleet_syncs, name,
                                     cloud=self.config.cloud.name, replica=self.replica)
        if answer.status_code == 200:
            self.static_targets = self.static_targets - {name}
        return answer

    @app.put("/v1/fleet/{name}")
    async def fleet_heartbeat(self, name: str, request: Request) -> Response:
        """Join the fleet, or stay in it: workers repeat this within ``fleet_ttl_ms``."""
        self._ensure_background()
        if not bearer_ok(request, self.fleet_token):
            return error_response(OIPError("fleet token required", status=401))
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            member = Member.model_validate({**body, "name": name})
        except (ValueError, ValidationError) as exc:
            return error_response(OIPError(f"invalid fleet member: {exc}"))
        if name in self.static_targets:
            return error_response(OIPError(f"'{name}' is a configured target", status=409))
        try:
            outcome = await self.fleet.heartbeat(member)
            if outcome == "joined":
                await self._sync_fleet()
        except RegistryUnavailable as exc:
            return error_response(OIPError(str(exc), status=503), {"retry-after": "1"})
        if outcome == "full":
            return error_response(OIPError("the fleet is full", status=409))
        ttl_ms = self.settings.fleet_ttl_ms
        return JSONResponse({"name": name, "status": outcome, "ttl_ms": ttl_ms,
                             "heartbeat_interval_ms": ttl_ms / 3})

    @app.delete("/v1/fleet/{name}")
    async def fleet_leave(self, name: str, request: Request) -> Response:
        """Leave the fleet now (a worker shutting down cleanly)."""
        if not bearer_ok(request, self.fleet_token):
            return error_response(OIPError("fleet token required", status=401))
        try:
            left = await self.fleet.leave(name)
            await self._sync_fleet()
        except RegistryUnavailable as exc:
            return error_response(OIPError(str(exc), status=503), {"retry-after": "1"})
        if not left:
            return error_response(OIPError(f"'{name}' is not a fleet member", status=404))
        return JSONResponse({"name": name, "status": "left"})

    @app.get("/v1/fleet")
    async def fleet_members(self) -> Response:
        """The fleet's live members and the age of each one's last heartbeat."""
        try:
            members = await self.fleet.members(self.settings.fleet_ttl_ms / 1000)
        except RegistryUnavailable as exc:
            return error_response(OIPError(str(exc), status=503), {"retry-after": "1"})
        return JSONResponse({"members": members, "ttl_ms": self.settings.fleet_ttl_ms})


def app_builder(args: dict[str, Any]) -> Any:
    """Serve's entry point for config files (``import_path: router.app:app_builder``)."""
    return build_app(StackConfig.model_validate(args.get("config", {})))


def build_app(config: StackConfig) -> Any:
    """The Serve application: the router ingress bound to one cloud deployment per model.

    One deployment per model (not Serve's model multiplexing): each model's replicas scale
    on that model's own load, its batches hold rows of one signature only, and the router's
    estimate of a cloud call is of one model's replicas."""
    cloud_cfg = config.cloud
    scaling = cloud_cfg.autoscaling.model_dump(exclude_none=True)
    clouds = {}
    for entry in config.models:
        model = (cloud_cfg.model if entry.name == "digits" and entry.bundled
                 else f"bundle:{entry.name}" if entry.bundled else str(entry.cloud_model))
        clouds[entry.name] = CloudModel.options(
            name=config.cloud_deployment(entry.name),
            autoscaling_config=scaling,
            ray_actor_options={"num_cpus": cloud_cfg.num_cpus, "num_gpus": cloud_cfg.num_gpus,
                               "resources": cloud_cfg.resources},
            max_ongoing_requests=max(cloud_cfg.max_batch_size * 4, 16),
        ).bind(model=model, threads=cloud_cfg.threads, use_gpu=cloud_cfg.num_gpus > 0,
               max_batch_size=cloud_cfg.max_batch_size,
               batch_wait_timeout_ms=cloud_cfg.batch_wait_timeout_ms, sha256=entry.cloud_sha256)
    return Router.options(num_replicas=config.router.num_replicas).bind(
        config.model_dump(mode="json"), clouds)

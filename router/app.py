"""The router: a Ray Serve ingress deployment speaking OIP v2 for model ``digits``.

HTTP glue only. Parsing is the codec's (:mod:`edgeroute.oip`), the decision
is :func:`router.placement.choose`, running it is :class:`router.executor.Executor`.
Endpoints: the OIP health, metadata and infer routes (JSON and binary tensors),
``GET /v1/targets`` (the router's live view of every target), and the admin
route ``PUT /v1/links/{target}`` that changes a target's emulated link.
"""


import asyncio
import logging
import math
import secrets
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from cloud.deployment import CloudModel
from edgeroute import contract
from edgeroute.config import LinkProfile, StackConfig
from edgeroute.http import check_content_type, error_response, infer_response, read_body
from edgeroute.oip import (
    InferRequest,
    InferResponse,
    OIPError,
    binary_set,
    decode_request,
    select_outputs,
)
from router.estimator import TargetEstimator
from router.executor import Executor, NotServed
from router.placement import RequestQuality, choose
from router.policy import PolicyDocument, policy_digest
from router.targets import Target, TargetSet, make_target
from router.tenancy import resolve
from router.transport import HandleTransport, HttpTransport

log = logging.getLogger("ray.serve")

app = FastAPI(
    title="edgeroute",
    summary="Edge-versus-cloud placement router speaking the Open Inference Protocol (v2).",
    version="0.1.0",
)


def request_options(
    request: InferRequest, default_ms: float, max_ms: float
) -> tuple[float, RequestQuality, bool]:
    """The deadline, quality and explain flag a request asks for, or a 400 saying why not."""
    params = request.parameters
    deadline = params.get("deadline_ms", default_ms)
    if isinstance(deadline, bool) or not isinstance(deadline, int | float) or not (
        math.isfinite(deadline) and 0 < deadline <= max_ms
    ):
        raise OIPError(f"parameters.deadline_ms must be a number in (0, {max_ms:g}]")
    quality = params.get("quality", "any")
    if quality not in ("any", "high"):
        raise OIPError("parameters.quality must be 'any' or 'high'")
    explain = params.get("explain", False)
    if not isinstance(explain, bool):
        raise OIPError("parameters.explain must be a boolean")
    return float(deadline), quality, explain


def build_targets(config: StackConfig, cloud: DeploymentHandle) -> TargetSet:
    settings = config.router

    def estimator() -> TargetEstimator:
        return TargetEstimator(
            weight=settings.ewma_weight,
            prior_latency_ms=settings.prior_latency_ms,
            failure_cooldown_ms=settings.failure_cooldown_ms,
        )

    targets: list[Target] = [
        make_target(config.cloud.name, "cloud", "large", config.cloud.prices, config.cloud.link,
                    HandleTransport(config.cloud.name, cloud), f"serve:{config.cloud.name}",
                    estimator())
    ]
    for edge in config.edges:
        targets.append(make_target(edge.name, "edge", "small", edge.prices, edge.link,
                                   HttpTransport(edge.name, edge.url), edge.url, estimator()))
    for ext in config.external:
        targets.append(make_target(ext.name, ext.tier, ext.quality, ext.prices, ext.link,
                                   HttpTransport(ext.name, ext.url), ext.url, estimator()))
    return TargetSet(targets, probe_interval_s=settings.probe_interval_ms / 1000)


@serve.deployment(name="router", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
@serve.ingress(app)
class Router:
    def __init__(self, config: dict[str, Any], cloud: DeploymentHandle) -> None:
        self.config = StackConfig.model_validate(config)
        self.settings = self.config.router
        self.targets = build_targets(self.config, cloud)
        self.executor = Executor(self.targets, min_attempt_ms=self.settings.min_attempt_ms)
        self._prober: asyncio.Task[None] | None = None
        self.policy = PolicyDocument()
        self.policy_sha256 = policy_digest(self.policy)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve calls this with the deployment's ``user_config``: swap the policy atomically.

        The document was validated before it was deployed (``edgeroute policy apply``);
        it is validated again here, and a failure leaves the old policy in force.
        """
        policy = PolicyDocument.model_validate(user_config.get("policy", {}))
        self.policy, self.policy_sha256 = policy, policy_digest(policy)
        log.info("policy %s in force", self.policy_sha256[:12])

    def _ensure_probing(self) -> None:
        if self._prober is None or self._prober.done():
            self._prober = asyncio.get_running_loop().create_task(self.targets.run_probes())

    async def check_health(self) -> None:
        self._ensure_probing()

    @app.get("/v2/health/live")
    async def live(self) -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready(self) -> Response:
        """Ready once some target has answered: the router can serve something."""
        self._ensure_probing()
        is_ready = any(t.estimator.successes or t.estimator.network.count for t in self.targets)
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)

    @app.get("/v2")
    async def server_metadata(self) -> dict[str, Any]:
        return {"name": "edgeroute", "version": "0.1.0", "extensions": ["binary_tensor_data"]}

    @app.get("/v2/models/{model}")
    async def model_metadata(self, model: str) -> Response:
        try:
            contract.check_model_name(model)
        except OIPError as error:
            return error_response(error)
        versions = sorted({t.name for t in self.targets})
        return JSONResponse(contract.model_metadata(versions, platform="edgeroute"))

    @app.get("/v2/models/{model}/ready")
    async def model_ready(self, model: str) -> Response:
        try:
            contract.check_model_name(model)
        except OIPError as error:
            return error_response(error)
        return JSONResponse({"name": model, "ready": True})

    @app.post("/v2/models/{model}/infer")
    async def infer(self, model: str, request: Request) -> Response:
        received = time.monotonic()
        self._ensure_probing()
        try:
            contract.check_model_name(model)
            check_content_type(request.headers)
            body = await read_body(request, self.settings.max_body_bytes)
            oip_request = decode_request(body, request.headers)
            x = contract.input_batch(oip_request, self.settings.max_batch)
            caller = resolve(self.policy, request.headers.get("authorization"),
                             oip_request.parameters.get("policy"))
            deadline_ms, quality, _explain = request_options(
                oip_request, caller.policy.default_deadline_ms, self.settings.max_deadline_ms
            )
        except OIPError as error:
            return error_response(error)
        return await self._route(oip_request, x, deadline_ms, quality, received)

    async def _route(self, oip_request: InferRequest, x: Any, deadline_ms: float,
                     quality: RequestQuality, received: float) -> Response:
        decided = time.perf_counter()
        plan = choose(self.targets.candidates(len(x)), deadline_ms, quality)
        decision_us = (time.perf_counter() - decided) * 1e6
        if plan.primary is None:
            return error_response(OIPError(plan.reason, status=503), {"retry-after": "1"})
        try:
            served = await self.executor.run(plan, x, received + deadline_ms / 1000)
        except NotServed as failure:
            status = 504 if failure.deadline_passed else 503
            headers = {} if status == 504 else {"retry-after": f"{failure.retry_after_s:.0f}"}
            return error_response(OIPError(str(failure), status=status), headers)
        target = served.target
        outputs = select_outputs(
            oip_request, contract.output_tensors(served.reply.probabilities, served.reply.labels)
        )
        chosen = target.candidate(len(x))
        parameters = {
            "target": target.name,
            "tier": target.tier,
            "model_version": served.reply.model_version,
            "attempts": served.attempts,
            "fallback": served.fallback,
            "hedged": False,
            "predicted_latency_ms": round(plan.order[0].prediction.mean_ms, 3),
            "cost_usd": chosen.cost_usd,
            "decision_us": round(decision_us, 1),
            "upstream_ms": round(served.upstream_ms, 3),
            "deadline_ms": deadline_ms,
        }
        response = InferResponse(contract.MODEL_NAME, outputs, served.reply.model_version,
                                 oip_request.id, parameters)
        return infer_response(response, binary_set(oip_request, outputs))

    @app.get("/v1/policy")
    async def current_policy(self) -> dict[str, Any]:
        """The policy in force on this replica and its digest."""
        return {"sha256": self.policy_sha256, "policy": self.policy.model_dump(mode="json")}

    @app.get("/v1/targets")
    async def list_targets(self) -> dict[str, Any]:
        return {"targets": [t.snapshot() for t in self.targets]}

    @app.put("/v1/links/{name}")
    async def set_link(self, name: str, request: Request) -> Response:
        """Replace fields of a target's emulated link (admin token required)."""
        token = self.settings.admin_token
        supplied = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if token is None or not secrets.compare_digest(supplied, token):
            return error_response(OIPError("admin token required", status=401))
        target = self.targets.get(name)
        if target is None:
            return error_response(OIPError(f"unknown target '{name}'", status=404))
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("body must be a JSON object")
            profile = LinkProfile.model_validate({**target.link.profile.model_dump(), **changes})
        except (ValueError, ValidationError) as exc:
            return error_response(OIPError(f"invalid link settings: {exc}"))
        target.link.profile = profile
        log.info("link of %s set to %s", name, profile.model_dump())
        return JSONResponse({"target": name, "link_emulation": profile.model_dump()})


def app_builder(args: dict[str, Any]) -> Any:
    """Serve's entry point for config files (``import_path: router.app:app_builder``)."""
    return build_app(StackConfig.model_validate(args.get("config", {})))


def build_app(config: StackConfig) -> Any:
    """The Serve application: the router ingress bound to the cloud model deployment."""
    cloud_cfg = config.cloud
    scaling = cloud_cfg.autoscaling.model_dump(exclude_none=True)
    cloud = CloudModel.options(
        name=cloud_cfg.name,
        autoscaling_config=scaling,
        ray_actor_options={"num_cpus": cloud_cfg.num_cpus, "num_gpus": cloud_cfg.num_gpus},
        max_ongoing_requests=max(cloud_cfg.max_batch_size * 4, 16),
    ).bind(
        model=cloud_cfg.model,
        threads=cloud_cfg.threads,
        use_gpu=cloud_cfg.num_gpus > 0,
        max_batch_size=cloud_cfg.max_batch_size,
        batch_wait_timeout_ms=cloud_cfg.batch_wait_timeout_ms,
    )
    return Router.options(num_replicas=config.router.num_replicas).bind(
        config.model_dump(mode="json"), cloud
    )

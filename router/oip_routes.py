"""The router's OIP model routes beyond inference: metadata, readiness, versions, statistics
and configuration, as Triton's clients call them.

:class:`OIPRoutes` is a base class of the Serve ingress (:class:`router.app.Router`);
Serve binds the routes of :data:`routes` to the replica's instance. Each model route
exists unversioned (``/v2/models/{m}/...``) and versioned
(``/v2/models/{m}/versions/{v}/...``); a version no target serves is a 404 in OIP form.
A model version is the contract's (``1``); the artifacts each target reported
(``1-<digest>``) are in the metadata's ``parameters``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from edgeroute import contract
from edgeroute.config import RouterSettings
from edgeroute.http import error_response
from edgeroute.oip import OIPError
from edgeroute.oipstats import InferenceStats
from router.openapi import INFER_OPENAPI
from router.service import RoutingService

EXTENSIONS = ["binary_tensor_data", "parameters", "statistics", "model_configuration"]
"""The OIP/Triton extensions the router serves (listed in its server metadata)."""
VERSIONED = "/v2/models/{model}/versions/{version}"

routes = APIRouter()


class OIPRoutes:
    service: RoutingService
    settings: RouterSettings
    inference_stats: InferenceStats

    async def infer(self, model: str, request: Request) -> Response:
        raise NotImplementedError

    def version_targets(self) -> dict[str, list[str]]:
        """Model version -> the targets serving it: as each last reported, else the
        contract's version (a target that has not answered yet serves the contract)."""
        reported = self.inference_stats.target_versions
        served: dict[str, list[str]] = {}
        for target in sorted(t.name for t in self.service.targets):
            version = contract.version_of(reported.get(target, contract.MODEL_VERSION))
            served.setdefault(version, []).append(target)
        return served

    def check(self, model: str, version: str | None) -> None:
        contract.check_model_name(model)
        if version is not None:
            contract.check_version(version, set(self.version_targets()))

    def metadata(self) -> dict[str, Any]:
        served = self.version_targets()
        reported = self.inference_stats.target_versions
        return contract.model_metadata(sorted(served), platform="edgeroute", parameters={
            "version_targets": served,
            "target_model_versions": {t: reported[t] for t in sorted(reported)}})

    @routes.get("/v2")
    async def server_metadata(self) -> dict[str, Any]:
        return {"name": "edgeroute", "version": "0.1.0", "extensions": EXTENSIONS}

    @routes.get("/v2/models/stats")
    async def all_statistics(self) -> Response:
        """Triton's statistics of every model (one here): ``GET /v2/models/stats``."""
        return JSONResponse(self.inference_stats.model_stats())

    @routes.get("/v2/models/{model}")
    @routes.get(VERSIONED)
    async def model_metadata(self, model: str, version: str | None = None) -> Response:
        try:
            self.check(model, version)
        except OIPError as error:
            return error_response(error)
        return JSONResponse(self.metadata())

    @routes.get("/v2/models/{model}/ready")
    @routes.get(f"{VERSIONED}/ready")
    async def model_ready(self, model: str, version: str | None = None) -> Response:
        try:
            self.check(model, version)
        except OIPError as error:
            return error_response(error)
        return JSONResponse({"name": model, "ready": True})

    @routes.post(f"{VERSIONED}/infer", openapi_extra=INFER_OPENAPI)
    async def versioned_infer(self, model: str, version: str, request: Request) -> Response:
        try:
            self.check(model, version)
        except OIPError as error:
            self.inference_stats.failure(0.0)
            return error_response(error)
        return await self.infer(model, request)

    @routes.get("/v2/models/{model}/stats")
    @routes.get(f"{VERSIONED}/stats")
    async def model_statistics(self, model: str, version: str | None = None) -> Response:
        """Triton's statistics extension; counts are this replica's since it started."""
        try:
            self.check(model, version)
        except OIPError as error:
            return error_response(error)
        return JSONResponse(self.inference_stats.model_stats())

    @routes.get("/v2/models/{model}/config")
    @routes.get(f"{VERSIONED}/config")
    async def model_configuration(self, model: str, version: str | None = None) -> Response:
        try:
            self.check(model, version)
        except OIPError as error:
            return error_response(error)
        return JSONResponse(contract.model_config(self.settings.max_batch, platform="edgeroute"))

"""The router's OIP model routes beyond inference: metadata, readiness, versions, statistics
and configuration, as Triton's clients call them.

:class:`OIPRoutes` is a base class of the Serve ingress (:class:`router.app.Router`);
Serve binds the routes of :data:`routes` to the replica's instance. Each model route
exists unversioned (``/v2/models/{m}/...``) and versioned
(``/v2/models/{m}/versions/{v}/...``); a version no target serves is a 404 in OIP form.
A model version is the signature's (``1``); the artifacts each target reported
(``1-<digest>``) are in the metadata's ``parameters``. Metadata and configuration come
from each model's signature; ``POST /v2/repository/index`` lists every model.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from edgeroute import contract
from edgeroute.config import RouterSettings
from edgeroute.http import error_response
from edgeroute.oip import EXTENSIONS, OIPError
from edgeroute.signature import (
    SIGNATURE_VERSION,
    check_version,
    model_config,
    repository_index,
)
from edgeroute.signature import metadata as signature_metadata
from router.models import ModelService, ModelServices
from router.openapi import INFER_OPENAPI

VERSIONED = "/v2/models/{model}/versions/{version}"

routes = APIRouter()


class OIPRoutes:
    models: ModelServices
    settings: RouterSettings

    async def infer(self, model: str, request: Request) -> Response:
        raise NotImplementedError

    @staticmethod
    def version_targets(served: ModelService) -> dict[str, list[str]]:
        """Model version -> the targets serving it: as each last reported, else the
        signature's version (a target that has not answered yet serves the signature)."""
        reported = served.stats.target_versions
        versions: dict[str, list[str]] = {}
        for target in sorted(t.name for t in served.service.targets):
            version = contract.version_of(reported.get(target, SIGNATURE_VERSION))
            versions.setdefault(version, []).append(target)
        return versions

    def check(self, model: str, version: str | None) -> ModelService:
        served = self.models.get(model)
        if version is not None:
            check_version(model, version, set(self.version_targets(served)))
        return served

    def metadata(self, served: ModelService) -> dict[str, Any]:
        versions = self.version_targets(served)
        reported = served.stats.target_versions
        return signature_metadata(served.model.signature, sorted(versions),
                                  platform="edgeroute", parameters={
                                      "version_targets": versions,
                                      "target_model_versions": {
                                          t: reported[t] for t in sorted(reported)}})

    @routes.get("/v2")
    async def server_metadata(self) -> dict[str, Any]:
        return {"name": "edgeroute", "version": "0.1.0", "extensions": list(EXTENSIONS)}

    @routes.get("/v2/models/stats")
    async def all_statistics(self) -> Response:
        """Triton's statistics of every model: ``GET /v2/models/stats``."""
        return JSONResponse(self.models.all_stats())

    @routes.post("/v2/repository/index")
    async def model_index(self) -> Response:
        """Every model this router serves, as Triton and KServe list them."""
        return JSONResponse(repository_index(self.models.names()))

    @routes.get("/v2/models/{model}")
    @routes.get(VERSIONED)
    async def model_metadata(self, model: str, version: str | None = None) -> Response:
        try:
            served = self.check(model, version)
        except OIPError as error:
            return error_response(error)
        return JSONResponse(self.metadata(served))

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
            self.models.first.stats.failure(0.0)
            return error_response(error)
        return await self.infer(model, request)

    @routes.get("/v2/models/{model}/stats")
    @routes.get(f"{VERSIONED}/stats")
    async def model_statistics(self, model: str, version: str | None = None) -> Response:
        """Triton's statistics extension; counts are this replica's since it started."""
        try:
            served = self.check(model, version)
        except OIPError as error:
            return error_response(error)
        return JSONResponse(served.stats.model_stats())

    @routes.get("/v2/models/{model}/config")
    @routes.get(f"{VERSIONED}/config")
    async def model_configuration(self, model: str, version: str | None = None) -> Response:
        try:
            served = self.check(model, version)
        except OIPError as error:
            return error_response(error)
        return JSONResponse(model_config(served.model.signature, self.settings.max_batch,
                                         platform="edgeroute"))

"""The router's FastAPI app in-process, as Serve's class-based view binds it, over fake
targets: the OIP routes, errors, compression and statistics a client sees (no Ray needed;
the live stack's version is ``tests/integration/test_oip_conformance.py``)."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
import ray.serve

from edgeroute import contract
from edgeroute.config import RouterSettings
from edgeroute.models.catalog import ServedModel
from edgeroute.oip import Tensor
from edgeroute.signature import Signature, TensorSpec
from router import app as router_app
from router.estimator import TargetEstimator
from router.metrics import MemoryFactory, RouterMetrics
from router.models import ModelServices
from router.oip_routes import OIPRoutes
from router.policy_keeper import PolicyKeeper
from router.service import RoutingService
from router.targets import TargetSet
from router.transport import Reply
from tests.unit.fakes import FakeTransport, fake_target, run_async

T = TypeVar("T")
ROW = [1.0] * contract.FEATURES


def body(rows: int = 1) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "datatype": "FP32",
                                   "shape": [rows, contract.FEATURES], "data": ROW * rows}],
                       "parameters": {"deadline_ms": 1000}}).encode()


class Replica(OIPRoutes):
    """The router replica's state and routes without its Serve wiring (probes, fleet)."""

    infer = router_app.Router.func_or_class.infer
    _infer = router_app.Router.func_or_class._infer

    def _ensure_background(self) -> None:
        pass


@pytest.fixture
def router(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A router replica over two fake edge targets, bound as Serve binds its instance."""
    instance: Any = Replica()
    targets = TargetSet([
        fake_target(FakeTransport(name), estimator=TargetEstimator(name=name))
        for name in ("edge-a", "edge-b")], probe_interval_s=1)
    instance.settings = RouterSettings()
    instance.service = RoutingService(targets, metrics=RouterMetrics(MemoryFactory()))
    instance.policies = PolicyKeeper()
    instance.models = ModelServices.digits_only(instance.service)
    instance.inference_stats = instance.models.first.stats
    instance.replica = "test"
    instance.admin_token = instance.ops_token = None
    monkeypatch.setattr(ray.serve, "get_replica_context",
                        lambda: SimpleNamespace(servable_object=instance))
    return instance


def call(main: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    async def run() -> T:
        transport = httpx.ASGITransport(app=router_app.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
            return await main(client)

    return run_async(run)


def test_versioned_routes_and_oip_errors(router: Any) -> None:
    async def main(client: httpx.AsyncClient) -> dict[str, httpx.Response]:
        post = {"content-type": "application/json"}
        return {
            "meta": await client.get("/v2/models/digits/versions/1"),
            "infer": await client.post("/v2/models/digits/versions/1/infer", content=body(),
                                       headers=post),
            "bad-version": await client.post("/v2/models/digits/versions/9/infer",
                                             content=body(), headers=post),
            "no-route": await client.get("/v2/nothing/here"),
            "wrong-method": await client.delete("/v2/models/digits/infer"),
            "server": await client.get("/v2"),
            "config": await client.get("/v2/models/digits/config"),
            "stats": await client.get("/v2/models/digits/stats"),
        }

    got = call(main)
    assert got["meta"].json()["versions"] == ["1"]
    assert got["meta"].json()["parameters"]["version_targets"] == {"1": ["edge-a", "edge-b"]}
    assert got["infer"].status_code == 200, got["infer"].text
    assert got["infer"].json()["parameters"]["target"] in ("edge-a", "edge-b")
    assert got["bad-version"].status_code == 404
    assert "version '9'" in got["bad-version"].json()["error"]
    assert got["no-route"].status_code == 404 and got["no-route"].json() == {
        "error": "Not Found"}
    assert got["wrong-method"].status_code == 405
    assert got["wrong-method"].json() == {"error": "Method Not Allowed"}
    assert "statistics" in got["server"].json()["extensions"]
    assert got["config"].json()["max_batch_size"] == RouterSettings().max_batch
    stats = got["stats"].json()["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] == 1
    assert stats["inference_stats"]["fail"]["count"] == 1
    assert sum(t["execution_count"] for t in stats["parameters"]["targets"].values()) == 1


@pytest.mark.parametrize("coding, pack", [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_compressed_request_and_gzipped_answer(router: Any, coding: str, pack: Any) -> None:
    async def main(client: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response]:
        answer = await client.post("/v2/models/digits/infer", content=pack(body(8)), headers={
            "content-type": "application/json", "content-encoding": coding,
            "accept-encoding": "gzip"})
        return answer, await client.get("/v2/models/digits/stats",
                                         headers={"accept-encoding": "gzip"})

    response, stats = call(main)
    assert len(stats.content) > 512 and "content-encoding" not in stats.headers
    assert response.status_code == 200, response.text
    assert response.headers["content-encoding"] == "gzip"
    assert response.headers["server-timing"].startswith("router;dur=")
    assert len(response.json()["outputs"][1]["data"]) == 8


def test_a_zip_bomb_is_a_413(router: Any) -> None:
    bomb = gzip.compress(b" " * (router.settings.max_body_bytes * 4))

    async def main(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post("/v2/models/digits/infer", content=bomb, headers={
            "content-type": "application/json", "content-encoding": "gzip"})

    response = call(main)
    assert response.status_code == 413 and "decompressed" in response.json()["error"]


async def sensor_answer(transport: FakeTransport, x: Any, timeout_s: float) -> Reply:
    rows = len(x)
    return Reply(outputs=(Tensor("scores", np.full((rows, 3), 1 / 3, np.float32)),
                          Tensor("label", np.full(rows, 2, np.int64))),
                 model_version="1-sensor", server_ms=1.0, queue_ms=0.0, batch_rows=rows,
                 confidence_output="scores")


def test_two_models_route_by_name_with_their_own_targets(router: Any) -> None:
    signature = Signature("sensor", (TensorSpec("readings", "FP32", (-1, 13)),),
                          (TensorSpec("scores", "FP32", (-1, 3)),
                           TensorSpec("label", "INT64", (-1,))))
    sensor = ServedModel("sensor", signature, None, None, "scores", None)
    edge_a = FakeTransport("edge-a", sensor_answer)
    service = RoutingService(TargetSet([fake_target(edge_a, estimator=TargetEstimator(
        name="edge-a"))], probe_interval_s=1), metrics=RouterMetrics(MemoryFactory()))
    router.models = ModelServices([(router.models.first.model, router.service),
                                   (sensor, service)])
    router.admin_token = "secret"

    async def main(client: httpx.AsyncClient) -> dict[str, httpx.Response]:
        readings = {"inputs": [{"name": "readings", "datatype": "FP32", "shape": [2, 13],
                                "data": [0.5] * 26}], "outputs": [{"name": "label"}]}
        return {
            "sensor": await client.post("/v2/models/sensor/infer", json=readings),
            "wrong": await client.post("/v2/models/digits/infer", json=readings),
            "unknown": await client.post("/v2/models/nope/infer", json=readings),
            "index": await client.post("/v2/repository/index"),
            "meta": await client.get("/v2/models/sensor"),
            "targets": await client.get("/v1/targets",
                                        headers={"authorization": "Bearer secret"}),
        }

    got = call(main)
    assert got["sensor"].status_code == 200, got["sensor"].text
    answer = got["sensor"].json()
    assert answer["model_name"] == "sensor"
    assert answer["outputs"] == [{"name": "label", "datatype": "INT64", "shape": [2],
                                  "data": [2, 2]}]
    assert edge_a.calls == 1
    assert got["wrong"].status_code == 400 and "takes input(s) input" in got["wrong"].json()[
        "error"]
    assert got["unknown"].status_code == 404
    assert [m["name"] for m in got["index"].json()] == ["digits", "sensor"]
    assert got["meta"].json()["outputs"][0] == {"name": "scores", "datatype": "FP32",
                                                "shape": [-1, 3]}
    targets = got["targets"].json()["targets"]
    assert {(t["model"], t["name"]) for t in targets} == {
        ("digits", "edge-a"), ("digits", "edge-b"), ("sensor", "edge-a")}

"""The router's FastAPI app in-process, as Serve's class-based view binds it, over fake
targets: the OIP routes, errors, compression and statistics a client sees (no Ray needed;
the live stack's version is ``tests/integration/test_oip_conformance.py``)."""

from __future__ import annotations

import gzip
import json
import zlib
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
import ray.serve
from pydantic import ValidationError

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
from router.policy import PolicyDocument
from router.policy_keeper import PolicyKeeper
from router.service import RoutingService
from router.targets import TargetSet
from router.transport import Reply
from tests.unit.fakes import FakeTransport, call_router, fake_target

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
    instance.recorded = MemoryFactory()
    instance.service = RoutingService(targets, metrics=RouterMetrics(instance.recorded))
    instance.policies = PolicyKeeper()
    instance.models = ModelServices.digits_only(instance.service)
    instance.inference_stats = instance.models.first.stats
    instance.replica = "test"
    instance.admin_token = instance.ops_token = None
    monkeypatch.setattr(ray.serve, "get_replica_context",
                        lambda: SimpleNamespace(servable_object=instance))
    return instance


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

    got = call_router(main)
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

    response, stats = call_router(main)
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

    response = call_router(main)
    assert response.status_code == 413 and "decompressed" in response.json()["error"]


async def sensor_answer(transport: FakeTransport, x: Any, timeout_s: float) -> Reply:
    rows = len(x)
    return Reply(outputs=(Tensor("scores", np.full((rows, 3), 1 / 3, np.float32)),
                          Tensor("label", np.full(rows, 2, np.int64))),
                 model_version="1-sensor", server_ms=1.0, queue_ms=0.0, batch_rows=rows,
                 confidence_output="scores")


READINGS = {"inputs": [{"name": "readings", "datatype": "FP32", "shape": [2, 13],
                         "data": [0.5] * 26}], "outputs": [{"name": "label"}]}


def add_sensor(router: Any) -> FakeTransport:
    """Serve a second model, ``sensor``, on one fake edge target; its transport."""
    signature = Signature("sensor", (TensorSpec("readings", "FP32", (-1, 13)),),
                          (TensorSpec("scores", "FP32", (-1, 3)),
                           TensorSpec("label", "INT64", (-1,))))
    sensor = ServedModel("sensor", signature, None, None, "scores", None)
    edge_a = FakeTransport("edge-a", sensor_answer)
    service = RoutingService(TargetSet([fake_target(edge_a, estimator=TargetEstimator(
        name="edge-a"))], probe_interval_s=1),
        metrics=router.service.metrics.for_model("sensor"))
    router.models = ModelServices([(router.models.first.model, router.service),
                                   (sensor, service)])
    return edge_a


def test_two_models_route_by_name_with_their_own_targets(router: Any) -> None:
    edge_a = add_sensor(router)
    router.admin_token = "secret"

    async def main(client: httpx.AsyncClient) -> dict[str, httpx.Response]:
        readings = READINGS
        return {
            "sensor": await client.post("/v2/models/sensor/infer", json=readings),
            "wrong": await client.post("/v2/models/digits/infer", json=readings),
            "unknown": await client.post("/v2/models/nope/infer", json=readings),
            "index": await client.post("/v2/repository/index"),
            "meta": await client.get("/v2/models/sensor"),
            "targets": await client.get("/v1/targets",
                                        headers={"authorization": "Bearer secret"}),
        }

    got = call_router(main)
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


def test_every_series_names_the_model_its_request_named(router: Any) -> None:
    add_sensor(router)

    async def main(client: httpx.AsyncClient) -> list[int]:
        return [(await client.post(path, content=content)).status_code for path, content in [
            ("/v2/models/sensor/infer", json.dumps(READINGS).encode()),
            ("/v2/models/sensor/infer", json.dumps(READINGS).encode()),
            ("/v2/models/digits/infer", body()),
            ("/v2/models/nope/infer", body())]]

    assert call_router(main) == [200, 200, 200, 404]
    requests = router.recorded.instruments["edgeroute_requests_total"]
    assert requests.total(model="sensor", status="200") == 2
    assert requests.total(model="digits", status="200") == 1
    assert requests.total(model="-", status="404") == 1
    placed = router.recorded.instruments["edgeroute_placements_total"]
    assert placed.total(model="sensor", target="edge-a") == 2
    assert placed.total(model="digits") == 1
    assert all(dict(key)["model"] in ("digits", "sensor", "-")
               for recorded in router.recorded.instruments.values() for key in recorded.values)


def test_a_models_policy_defaults_set_its_deadline_and_refuse_tiers_it_may_not_use(
        router: Any) -> None:
    add_sensor(router)
    router.models.apply_policy(PolicyDocument.model_validate({
        "anonymous": {"allowed_policies": ["always-cloud"]},
        "models": {"sensor": {"deadline_ms": 500, "tiers": ["edge"]}}}))

    def readings(**parameters: Any) -> bytes:
        return json.dumps({**READINGS, "parameters": parameters}).encode()

    async def main(client: httpx.AsyncClient) -> dict[str, httpx.Response]:
        sensor = "/v2/models/sensor/infer"
        return {
            "default": await client.post(sensor, content=readings()),
            "own": await client.post(sensor, content=readings(deadline_ms=900)),
            "high": await client.post(sensor, content=readings(quality="high")),
            "cloud": await client.post(sensor, content=readings(policy="always-cloud")),
            "digits": await client.post("/v2/models/digits/infer", content=body()),
        }

    got = call_router(main)
    assert got["default"].status_code == 200, got["default"].text
    assert got["default"].json()["parameters"]["deadline_ms"] == 500
    assert got["own"].json()["parameters"]["deadline_ms"] == 900
    assert got["high"].status_code == 403
    assert "model 'sensor' may run on ['edge'] only" in got["high"].json()["error"]
    assert got["cloud"].status_code == 403
    assert got["cloud"].json()["error"] == (
        "policy 'always-cloud' routes to ['cloud'] but model 'sensor' may run on ['edge'] only")
    assert got["digits"].status_code == 200
    assert got["digits"].json()["parameters"]["deadline_ms"] == 1000


@pytest.mark.parametrize("defaults, reason", [
    ({"tiers": []}, "at least 1 item"),
    ({"tiers": ["edge", "edge"]}, "must not repeat"),
    ({"tiers": ["moon"]}, "'edge' or 'cloud'"),
    ({"deadline_ms": 0}, "greater than 0"),
    ({"deadline": 5}, "Extra inputs"),
])
def test_invalid_model_defaults_are_refused_with_the_reason(defaults: dict[str, Any],
                                                            reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        PolicyDocument.model_validate({"models": {"sensor": defaults}})

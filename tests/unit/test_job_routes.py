"""The batch job routes in-process, as Serve's class-based view binds them, over fake edge
targets and a job folder in a temporary directory: what a client of ``/v1/jobs`` sees
(the live stack's version is ``tests/integration/test_jobs.py``)."""

from __future__ import annotations

import json
from collections.abc import Awaitable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
import ray.serve

from edgeroute import contract
from edgeroute.config import JobSettings, RouterSettings
from edgeroute.oip import InferRequest, Tensor, decode_response, encode_request
from router.estimator import TargetEstimator
from router.job_routes import JobRoutes, job_runner
from router.metrics import MemoryFactory, RouterMetrics
from router.models import ModelServices
from router.oip_routes import OIPRoutes
from router.policy import PolicyDocument, Tenant, hash_key
from router.policy_keeper import PolicyKeeper
from router.service import RoutingService
from router.targets import TargetSet
from router.transport import Reply
from tests.unit.fakes import FakeTransport, call_router, fake_target, reply_for

KEY = "er_test-key"


async def label_is_first_pixel(transport: FakeTransport, x: Any, timeout_s: float) -> Reply:
    """Each row's label is its first pixel: an answer's row order shows in its labels."""
    pixels = x.tensors[0].data
    reply = reply_for(pixels)
    labels = pixels[:, 0].astype(np.int64)
    outputs = tuple(Tensor(t.name, labels) if t.name == contract.OUTPUT_LABEL else t
                    for t in reply.outputs)
    return Reply(outputs, reply.model_version, 1.0, 0.0, len(pixels),
                 reply.confidence_output)


class Replica(OIPRoutes, JobRoutes):
    """The router replica's state and routes without its Serve wiring."""


@pytest.fixture
def router(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    instance: Any = Replica()
    targets = TargetSet([
        fake_target(FakeTransport(name, label_is_first_pixel),
                    estimator=TargetEstimator(name=name)) for name in ("edge-a", "edge-b")],
        probe_interval_s=1)
    instance.settings = RouterSettings(jobs=JobSettings(
        dir=tmp_path, max_rows=1000, max_jobs_per_tenant=2, edge_chunk_rows=16,
        max_body_bytes=400_000))
    instance.service = RoutingService(targets, metrics=RouterMetrics(MemoryFactory()))
    document = PolicyDocument(tenants=(Tenant(name="acme", key_sha256=hash_key(KEY),
                                              default_policy="default",
                                              allowed_policies=("default",)),))
    instance.service.apply_policy(document)
    instance.policies = PolicyKeeper()
    instance.models = ModelServices.digits_only(instance.service)
    instance.job_runner = job_runner(instance.settings.jobs, instance.models)
    monkeypatch.setattr(ray.serve, "get_replica_context",
                        lambda: SimpleNamespace(servable_object=instance))
    return instance


def job_body(rows: int, **parameters: Any) -> tuple[bytes, dict[str, str]]:
    """A binary-tensor job of ``rows`` rows; row i's first pixel is ``i % 10``."""
    x = np.zeros((rows, contract.FEATURES), dtype=np.float32)
    x[:, 0] = np.arange(rows) % 10
    request = InferRequest(inputs=(Tensor("input", x),), model_name="digits",
                           parameters={"deadline_ms": 60_000, **parameters},
                           binary_output_default=True)
    return encode_request(request, binary=True)


AUTH = {"authorization": f"Bearer {KEY}"}


def test_a_job_is_accepted_run_and_answered_in_row_order(router: Any) -> None:
    async def main(client: httpx.AsyncClient) -> dict[str, Any]:
        body, headers = job_body(100)
        accepted = await client.post("/v1/jobs", content=body, headers={**headers, **AUTH})
        job_id = accepted.json()["id"]
        early = await client.get(f"/v1/jobs/{job_id}/result", headers=AUTH)
        queued = (await client.get(accepted.json()["status_url"], headers=AUTH)).json()
        await router.job_runner.run_pending()
        status = (await client.get(f"/v1/jobs/{job_id}", headers=AUTH)).json()
        result = await client.get(f"/v1/jobs/{job_id}/result", headers=AUTH)
        listed = (await client.get("/v1/jobs", headers=AUTH)).json()
        anonymous = await client.get(f"/v1/jobs/{job_id}")
        return {"accepted": accepted, "early": early, "queued": queued, "status": status,
                "result": result, "listed": listed, "anonymous": anonymous}

    got = call_router(main)
    assert got["accepted"].status_code == 202
    assert got["early"].status_code == 409
    assert got["queued"]["status"] == "queued" and got["queued"]["rows_done"] == 0
    status = got["status"]
    assert status["status"] == "done" and status["rows"] == status["rows_done"] == 100
    assert sum(status["placement"].values()) == 100
    assert set(status["placement"]) <= {"edge-a", "edge-b"}
    assert status["cost_usd"] > 0
    response = decode_response(got["result"].content, got["result"].headers)
    labels = next(t.data for t in response.outputs if t.name == contract.OUTPUT_LABEL)
    assert labels.tolist() == [i % 10 for i in range(100)]
    assert response.parameters["job_id"] == status["id"]
    assert [j["id"] for j in got["listed"]["jobs"]] == [status["id"]]
    assert got["anonymous"].status_code == 404, "another tenant's job must not be found"


def test_bad_jobs_are_refused_before_anything_runs(router: Any) -> None:
    async def main(client: httpx.AsyncClient) -> dict[str, int]:
        def post(body: bytes, headers: dict[str, str] | None = None,
                 **extra: str) -> Awaitable[httpx.Response]:
            return client.post("/v1/jobs", content=body,
                               headers={"content-type": "application/json", **AUTH,
                                        **(headers or {}), **extra})

        good, binary = job_body(5)
        nameless = json.dumps({"inputs": [{"name": "input", "datatype": "FP32",
                                           "shape": [1, 64], "data": [0.0] * 64}]}).encode()
        statuses = {
            "not json": (await post(b"{nope")).status_code,
            "no model": (await post(nameless)).status_code,
            "unknown model": (await post(nameless.replace(b'{"inputs"',
                                                          b'{"model_name": "x", "inputs"'))
                              ).status_code,
            "too many rows": (await post(*job_body(1001))).status_code,
            "too big": (await post(b"x" * 500_000)).status_code,
            "bad deadline": (await post(*job_body(5, deadline_ms=-1))).status_code,
            "bad quality": (await post(*job_body(5, quality="best"))).status_code,
            "wrong key": (await post(good, binary, authorization="Bearer nope")).status_code,
            "no such job": (await client.get("/v1/jobs/" + "0" * 32, headers=AUTH)
                            ).status_code,
            "not an id": (await client.delete("/v1/jobs/..", headers=AUTH)).status_code,
        }
        for _ in range(2):
            await post(good, binary)
        statuses["third unfinished"] = (await post(good, binary)).status_code
        return statuses

    got = call_router(main)
    assert got == {"not json": 400, "no model": 400, "unknown model": 404,
                   "too many rows": 400, "too big": 413, "bad deadline": 400,
                   "bad quality": 400, "wrong key": 401, "no such job": 404,
                   "not an id": 404, "third unfinished": 429}
    assert list(router.job_runner.store.records()).__len__() == 2


def test_a_queued_job_is_cancelled_at_once(router: Any) -> None:
    async def main(client: httpx.AsyncClient) -> tuple[httpx.Response, dict[str, Any]]:
        body, headers = job_body(40)
        job_id = (await client.post("/v1/jobs", content=body,
                                    headers={**headers, **AUTH})).json()["id"]
        cancelled = await client.delete(f"/v1/jobs/{job_id}", headers=AUTH)
        await router.job_runner.run_pending()
        return cancelled, (await client.get(f"/v1/jobs/{job_id}", headers=AUTH)).json()

    cancelled, status = call_router(main)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert status["status"] == "cancelled" and status["rows_done"] == 0

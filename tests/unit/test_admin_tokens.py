"""Who may use the router's admin routes: the admin token for everything, the read-only
ops token for the views only, nobody without one; and a configured target taken out."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import ray.serve

from edgeroute.config import RouterSettings, StackConfig
from router.estimator import TargetEstimator
from router.metrics import MemoryFactory, RouterMetrics
from router.models import ModelServices
from router.policy_keeper import PolicyKeeper
from router.service import RoutingService
from router.targets import TargetSet
from tests.unit.fakes import FakeTransport, call_router, fake_target
from tests.unit.test_router_oip_app import Replica

ADMIN, OPS = "admin-secret", "ops-secret"


@pytest.fixture
def router(monkeypatch: pytest.MonkeyPatch) -> Any:
    instance: Any = Replica()
    targets = TargetSet([
        fake_target(FakeTransport(name), estimator=TargetEstimator(name=name))
        for name in ("edge-a", "edge-b")], probe_interval_s=1)
    instance.config = StackConfig()
    instance.settings = RouterSettings()
    instance.service = RoutingService(targets, metrics=RouterMetrics(MemoryFactory()))
    instance.policies = PolicyKeeper()
    instance.replica = "test"
    instance.admin_token, instance.ops_token = ADMIN, OPS
    instance.static_targets = frozenset({"edge-a", "edge-b"})
    instance.models = ModelServices.digits_only(instance.service)
    instance.fleet_syncs = [SimpleNamespace(members={}, retired=[])]
    instance._fresh = lambda target: TargetEstimator(name=target.name)
    monkeypatch.setattr(ray.serve, "get_replica_context",
                        lambda: SimpleNamespace(servable_object=instance))
    return instance


def bearer(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}


@pytest.mark.parametrize("path", ["/v1/targets", "/v1/policy", "/v1/policy/history",
                                  "/v1/metrics/summary"])
def test_views_take_either_token(router: Any, path: str) -> None:
    async def main(client: httpx.AsyncClient) -> list[int]:
        return [(await client.get(path, headers=bearer(token))).status_code
                for token in (ADMIN, OPS, None, "wrong")]

    assert call_router(main) == [200, 200, 401, 401]


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/v1/targets/edge-a/drain", None),
    ("PUT", "/v1/links/edge-a", {"base_ms": 5.0}),
    ("DELETE", "/v1/targets/edge-b", None),
])
def test_changes_need_the_admin_token(router: Any, method: str, path: str,
                                      body: dict[str, float] | None) -> None:
    async def main(client: httpx.AsyncClient) -> list[httpx.Response]:
        return [await client.request(method, path, json=body, headers=bearer(token))
                for token in (OPS, None, ADMIN)]

    read_only, anonymous, admin = call_router(main)
    assert read_only.status_code == 403 and "read-only" in read_only.json()["error"]
    assert anonymous.status_code == 401
    assert admin.status_code == 200, admin.text


def test_a_removed_configured_target_may_join_the_fleet_under_its_name(router: Any) -> None:
    async def main(client: httpx.AsyncClient) -> list[httpx.Response]:
        return [await client.delete(f"/v1/targets/{name}", headers=bearer(ADMIN))
                for name in ("edge-b", "edge-b", "cloud")]

    removed, again, cloud = call_router(main)
    assert removed.json() == {"target": "edge-b", "removed": True, "replica": "test"}
    assert again.status_code == 404 and cloud.status_code == 409  # the Serve app's
    assert "edge-b" not in router.static_targets and router.service.targets.get("edge-b") is None
    assert [t.name for t in router.fleet_syncs[0].retired] == ["edge-b"]

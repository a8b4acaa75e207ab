"""An invalid policy, however it reaches a replica, leaves the policy in force.

The keeper's rules, then the Router deployment's ``reconfigure()`` (Serve calls it
with each new ``user_config``) and its admin views, driven in-process without Ray.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.requests import Request

from router.admin import without_policy
from router.app import Router
from router.models import ModelServices
from router.policy import PolicyDocument, Tenant, hash_key, policy_digest
from router.policy_keeper import REDACTED, PolicyKeeper, raw_digest
from tests.unit.fakes import FakeClock, FakeTransport
from tests.unit.test_service import service

TOKEN = "adm1n-t0ken"


def valid(risk_budget: float = 0.02) -> dict[str, Any]:
    document = PolicyDocument().model_dump(mode="json")
    document["policies"]["default"]["risk_budget"] = risk_budget
    return document


def with_tenant() -> dict[str, Any]:
    document = valid()
    tenant = Tenant(name="acme", key_sha256=hash_key("er_secret"), default_policy="default",
                    allowed_policies=("default",))
    document["tenants"] = [tenant.model_dump(mode="json")]
    document["anonymous"]["allowed"] = False
    return document


INVALID = {"policies": {"default": {"risk_budget": 5}}}


def test_an_invalid_policy_is_refused_with_reasons_and_the_old_one_stays() -> None:
    clock = FakeClock()
    keeper = PolicyKeeper(wall_clock=clock)
    assert keeper.offer({"policy": valid(0.02)}) is not None
    clock.advance(3.0)
    assert keeper.offer({"policy": INVALID, "source": "serve deploy"}) is None
    view = keeper.view()
    assert view["policy"]["policies"]["default"]["risk_budget"] == 0.02
    assert view["sha256"] == policy_digest(PolicyDocument.model_validate(valid(0.02)))
    rejected = view["rejected"]
    assert rejected["sha256"] == raw_digest(INVALID)
    assert rejected["source"] == "serve deploy"
    assert rejected["rejected_at"] == view["applied_at"] + 3.0
    assert any("policies.default.risk_budget" in r for r in rejected["reasons"])


def test_an_empty_or_missing_policy_is_refused() -> None:
    keeper = PolicyKeeper()
    for user_config in ({}, {"policy": {}}, {"policy": None}, {"policy": "x"}):
        assert keeper.offer(user_config) is None
        assert keeper.rejected is not None and "missing or empty" in keeper.rejected.reasons[0]


def test_history_keeps_the_last_applied_newest_first_and_is_bounded() -> None:
    keeper = PolicyKeeper(history_length=3)
    budgets = [0.01, 0.02, 0.03, 0.04]
    for budget in budgets:
        keeper.offer({"policy": valid(budget), "source": f"apply {budget}"})
    keeper.offer({"policy": valid(0.04)})  # the same again: no new entry
    history = keeper.history_view()
    assert [h["policy"]["policies"]["default"]["risk_budget"] for h in history] == [
        0.04, 0.03, 0.02]
    assert [h["source"] for h in history] == ["apply 0.04", "apply 0.03", "apply 0.02"]


def test_no_view_shows_a_key_hash() -> None:
    keeper = PolicyKeeper()
    keeper.offer({"policy": with_tenant()})
    text = json.dumps([keeper.view(), keeper.history_view()])
    assert hash_key("er_secret") not in text
    assert keeper.view()["policy"]["tenants"][0]["key_sha256"] == REDACTED


def test_a_replica_without_any_offer_runs_the_embedded_default() -> None:
    keeper = PolicyKeeper()
    assert keeper.view()["source"] == "embedded default"
    assert keeper.view()["sha256"] == policy_digest(PolicyDocument())
    assert without_policy(keeper) is None


def test_a_replica_whose_first_policy_is_invalid_refuses_inference_until_a_valid_one() -> None:
    keeper = PolicyKeeper()
    keeper.offer({"policy": INVALID})
    refused = without_policy(keeper)
    assert refused is not None and refused.status_code == 503
    assert "risk_budget" in json.loads(bytes(refused.body))["error"]
    assert refused.headers["retry-after"]
    keeper.offer({"policy": valid()})
    assert without_policy(keeper) is None


def router_without_ray() -> Any:
    """The Router deployment's class as written (not Ray Serve's ingress wrapper around it,
    whose ``async def __del__`` leaves a coroutine never awaited when an instance made
    without Ray is collected), its state built as ``__init__`` would (less Ray)."""
    router = object.__new__(Router.func_or_class.__bases__[0])
    router.service, _ = service((FakeTransport("edge-a"), "edge", "small"),
                                (FakeTransport("cloud"), "cloud", "large"))
    router.models = ModelServices.digits_only(router.service)
    router.policies = PolicyKeeper()
    router.admin_token = TOKEN
    router.replica = "replica-1"
    return router


def get(router: Any, handler: str, token: str | None) -> tuple[int, Any]:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": headers})
    response = asyncio.run(getattr(router, handler)(request))
    return response.status_code, json.loads(bytes(response.body))


def test_reconfigure_with_an_invalid_policy_does_not_raise_and_keeps_routing_with_the_old(
) -> None:
    router = router_without_ray()
    router.reconfigure({"policy": valid(0.02)})
    router.reconfigure({"policy": INVALID})
    assert router.service.policy.policies["default"].risk_budget == 0.02
    status, view = get(router, "current_policy", TOKEN)
    assert status == 200
    assert view["policy"]["policies"]["default"]["risk_budget"] == 0.02
    assert view["rejected"]["sha256"] == raw_digest(INVALID)
    assert view["replica"] == "replica-1"
    router.reconfigure({"policy": valid(0.03)})
    assert router.service.policy.policies["default"].risk_budget == 0.03


def test_policy_views_need_the_admin_token_and_never_show_key_hashes() -> None:
    router = router_without_ray()
    router.reconfigure({"policy": with_tenant()})
    for handler in ("current_policy", "policy_history"):
        assert get(router, handler, None)[0] == 401
        assert get(router, handler, "wrong")[0] == 401
        status, body = get(router, handler, TOKEN)
        assert status == 200 and hash_key("er_secret") not in json.dumps(body)
    router.admin_token = None
    status, body = get(router, "current_policy", TOKEN)
    assert status == 401 and "no admin token" in body["error"]


def test_the_embedded_default_sent_as_user_config_stays_in_force_after_a_rejection() -> None:
    keeper = PolicyKeeper()
    keeper.offer({"policy": PolicyDocument().model_dump(mode="json")})
    keeper.offer({"policy": INVALID})
    assert keeper.view()["sha256"] == policy_digest(PolicyDocument())
    assert without_policy(keeper) is None


def test_the_digest_does_not_depend_on_the_order_of_keys() -> None:
    document = valid()
    reordered = {key: document[key] for key in reversed(document)}
    reordered["policies"] = dict(reversed(document["policies"].items()))
    assert policy_digest(PolicyDocument.model_validate(reordered)) == policy_digest(
        PolicyDocument.model_validate(document))


def test_a_document_of_the_wrong_shape_is_refused_not_raised() -> None:
    keeper = PolicyKeeper()
    for policy in ({"policies": []}, {"tenants": "x"}, {"version": 2}, {"unknown": 1}):
        assert keeper.offer({"policy": policy}) is None
        assert keeper.rejected is not None and keeper.rejected.reasons

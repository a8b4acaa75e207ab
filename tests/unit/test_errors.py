"""The ingress's one error table: what a client gets for each way a request can fail."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edgeroute.oip import OIPError
from router.errors import ROUTER_ERRORS, TABLE, error_reply
from router.plan import Decision
from router.policy import PolicyDocument, hash_key
from router.served import NotServed, Shed
from router.service import Rejected
from router.tenancy import NotPermitted, Unauthenticated, resolve

KEY = "sk-team-a"
DOCUMENT = PolicyDocument.model_validate({
    "anonymous": {"allowed": False},
    "tenants": [{"name": "team-a", "key_sha256": hash_key(KEY), "default_policy": "default",
                 "allowed_policies": ["default"]}],
})


def reply_of(error: Exception) -> tuple[int, str | None, dict[str, Any]]:
    reply = error_reply(error)
    return reply.status_code, reply.headers.get("retry-after"), json.loads(bytes(reply.body))


@pytest.mark.parametrize(("error", "status", "retry_after"), [
    (OIPError("parameters.deadline_ms must be a number"), 400, None),
    (OIPError("request body over 4194304 bytes", status=413), 413, None),
    (Unauthenticated("invalid API key"), 401, None),
    (NotPermitted("policy 'x' is not allowed for team-a"), 403, None),
    (Shed("router at its bound", retry_after_s=2.5, scope="router"), 503, "3"),
    (NotServed("deadline exceeded", attempts=2, deadline_passed=True), 504, None),
    (NotServed("nothing could serve", attempts=1, deadline_passed=False, retry_after_s=0.2),
     503, "1"),
    (Rejected(Decision(None, "no target may serve quality=high", "default")), 503, "1"),
])
def test_each_failure_gets_its_status_retry_after_and_message(
        error: Exception, status: int, retry_after: str | None) -> None:
    got_status, got_retry_after, body = reply_of(error)
    assert (got_status, got_retry_after) == (status, retry_after)
    assert body["error"] == (error.message if isinstance(error, OIPError) else str(error))


def test_a_failure_a_plan_ran_for_carries_the_plans_prediction() -> None:
    """So that a client can set what it observed against what the router predicted."""
    _, _, body = reply_of(NotServed("deadline exceeded", attempts=2, deadline_passed=True,
                                    predicted_p_miss=0.0123456))
    assert body["parameters"] == {"predicted_p_miss": 0.01235}
    _, _, body = reply_of(Shed("router at its bound", retry_after_s=1.0, scope="router"))
    assert "parameters" not in body, "refused before any plan: nothing was predicted"


def test_no_domain_error_carries_an_http_status() -> None:
    for kind in ROUTER_ERRORS:
        if kind is not OIPError:
            assert not issubclass(kind, OIPError), kind


def test_a_shed_request_is_answered_as_shed_not_as_any_failure() -> None:
    kinds = [kind for kind, _ in TABLE]
    assert kinds.index(Shed) < kinds.index(NotServed)


def test_an_error_the_table_lacks_is_a_bug_not_an_answer() -> None:
    with pytest.raises(TypeError, match="KeyError"):
        error_reply(KeyError("x"))


@pytest.mark.parametrize(("authorization", "requested", "status"), [
    (None, None, 401),
    ("Basic abc", None, 401),
    ("Bearer wrong-key", None, 401),
    (f"Bearer {KEY}", "always-cloud", 403),
    (f"Bearer {KEY}", "no-such-policy", 400),
    (f"Bearer {KEY}", 7, 400),
])
def test_who_may_call_with_which_policy_is_answered_by_the_table(
        authorization: str | None, requested: object, status: int) -> None:
    with pytest.raises(ROUTER_ERRORS) as caught:
        resolve(DOCUMENT, authorization, requested)
    assert reply_of(caught.value)[0] == status


def test_a_tenant_with_its_key_gets_its_policy() -> None:
    assert resolve(DOCUMENT, f"Bearer {KEY}", None).tenant == "team-a"

"""Scenario 8: malformed input, hand-written and generated from the published OpenAPI document."""

from __future__ import annotations

import contextlib
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.chaos.conftest import record
from tests.stackkit import RunningStack

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

ROW = str([0.0] * 64)
SEEN: dict[str, int] = {}


@pytest.mark.parametrize(
    ("body", "headers", "path", "status"),
    [
        (b"{not json", {"content-type": "application/json"}, "digits", 400),
        (b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,63],"data":[0]}]}',
         {}, "digits", 400),
        (b'{"inputs":[{"name":"input","datatype":"FP64","shape":[1,64],"data":'
         + ROW.encode() + b"}]}", {}, "digits", 400),
        (b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,64],"data":'
         + str([0.0] * 63 + ["NaN"]).replace("'", "").encode() + b"}]}", {}, "digits", 400),
        (b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,64],"data":'
         + ROW.encode() + b'}],"parameters":{"deadline_ms":-1}}', {}, "digits", 400),
        (b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,64],"data":'
         + ROW.encode() + b'}],"parameters":{"quality":"best"}}', {}, "digits", 400),
        (b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,64],"data":'
         + ROW.encode() + b"}]}", {}, "mnist", 404),
        (b"x" * (5 * 1024 * 1024), {}, "digits", 413),
        (b"<xml/>", {"content-type": "application/xml"}, "digits", 415),
        (b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,64],"data":'
         + ROW.encode() + b"}]}", {"inference-header-content-length": "99"}, "digits", 400),
    ],
    ids=["bad-json", "wrong-shape", "wrong-dtype", "nan", "bad-deadline", "bad-quality",
         "unknown-model", "huge-body", "wrong-content-type", "bad-binary-header"],
)
def test_malformed_requests_get_a_4xx_oip_error(
    chaos_stack: RunningStack, body: bytes, headers: dict[str, str], path: str, status: int
) -> None:
    response = httpx.post(f"{chaos_stack.endpoint}/v2/models/{path}/infer", content=body,
                          headers=headers, timeout=10)
    assert response.status_code == status
    assert isinstance(response.json()["error"], str)
    assert httpx.get(f"{chaos_stack.endpoint}/v2/health/ready", timeout=5).status_code == 200


def test_generated_requests_never_get_a_server_error(chaos_stack: RunningStack) -> None:
    """Requests schemathesis builds from ``/openapi.json``, valid (positive) and invalid
    (negative) for every operation: never a 500. The only 5xx are the documented 503 (with
    Retry-After) and 504 that a well-formed request gets when no target can meet its deadline
    (a fuzzer's deadline_ms of 1e-300). The model is pinned to ``digits`` so that bodies
    reach the parser and the router instead of a 404. Schemathesis is driven through its
    strategies: its pytest plugin does not run under this pytest."""
    published = schemathesis.openapi.from_url(f"{chaos_stack.endpoint}/openapi.json")
    operations = [result.ok() for result in published.get_all_operations()]
    assert any(op.path == "/v2/models/{model}/infer" for op in operations)
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            pinned = {"model": "digits"} if "{model}" in operation.path else None
            _fuzz(chaos_stack.endpoint,
                  operation.as_strategy(generation_mode=mode, path_parameters=pinned))


def _fuzz(endpoint: str, strategy: Any) -> None:
    @settings(max_examples=15, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def check(case: Any) -> None:
        response = case.call(base_url=endpoint, timeout=10)
        key = f"{case.method} {case.path} {response.status_code}"
        SEEN[key] = SEEN.get(key, 0) + 1
        assert response.status_code < 500 or response.status_code in (503, 504), (
            case.method, case.path, response.status_code, response.text[:300])
        if response.status_code == 503:
            assert response.headers.get("retry-after")

    with contextlib.suppress(Unsatisfiable):  # negative mode: nothing to make invalid
        check()


def test_server_healthy_after_the_fuzzing(chaos_stack: RunningStack) -> None:
    """Runs after the generated requests: the router is ready and serves a valid request."""
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                        "data": [0.0] * 64}], "parameters": {"deadline_ms": 2000}}
    ok = httpx.post(f"{chaos_stack.endpoint}/v2/models/digits/infer", json=body, timeout=10)
    record("8 malformed input", statuses_per_operation=dict(sorted(SEEN.items())),
           generated_requests=sum(SEEN.values()), valid_request_after=ok.status_code)
    assert httpx.get(f"{chaos_stack.endpoint}/v2/health/ready", timeout=5).status_code == 200
    assert ok.status_code == 200

"""The whole path on the real stack: tritonclient -> Serve proxy -> router -> edge or cloud."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import yaml

from edgeroute.dataset import digits_split
from tests.integration.conftest import RunningStack, alive, open_loop

pytestmark = pytest.mark.integration

PLACEMENT_KEYS = {
    "target", "tier", "model_version", "attempts", "fallback", "hedged",
    "predicted_latency_ms", "cost_usd", "decision_us",
}


def client(stack: RunningStack) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(stack.endpoint.removeprefix("http://"),
                                        connection_timeout=10, network_timeout=10)


def infer(c: triton.InferenceServerClient, rows: np.ndarray, binary: bool = True,
          **parameters: Any) -> triton.InferResult:
    inputs = [triton.InferInput("input", list(rows.shape), "FP32")]
    inputs[0].set_data_from_numpy(rows.astype(np.float32), binary_data=binary)
    outputs = None if binary else [triton.InferRequestedOutput("label", binary_data=False)]
    return c.infer("digits", inputs, outputs=outputs, parameters=parameters or None)


def test_tritonclient_binary_classifies_heldout_digits(stack: RunningStack) -> None:
    split = digits_split()
    c = client(stack)
    assert c.is_server_ready()
    assert c.get_model_metadata("digits")["inputs"][0]["shape"] == [-1, 64]
    correct = 0
    for row, label in zip(split.x_test[:100], split.y_test[:100], strict=True):
        result = infer(c, row[None, :])
        params = result.get_response()["parameters"]
        assert params.keys() >= PLACEMENT_KEYS
        assert result.as_numpy("probabilities").shape == (1, 10)
        correct += int(result.as_numpy("label")[0] == label)
    assert correct >= 94


def test_tritonclient_json_tensors(stack: RunningStack) -> None:
    split = digits_split()
    result = infer(client(stack), split.x_test[:8], binary=False)
    assert result.get_response()["outputs"][0]["name"] == "label"
    labels = result.as_numpy("label")
    assert labels is not None and (labels == split.y_test[:8]).mean() >= 0.75


def test_quality_high_is_served_by_the_large_model(stack: RunningStack) -> None:
    split = digits_split()
    c = client(stack)
    tiers = {infer(c, row[None, :], quality="high").get_response()["parameters"]["tier"]
             for row in split.x_test[:20]}
    assert tiers == {"cloud"}


def test_deadline_decides_between_cheap_cloud_and_near_edge(stack: RunningStack) -> None:
    """In the test config the cloud is cheaper but 150 ms away; the edge is near but dearer."""
    split = digits_split()
    c = client(stack)
    relaxed = [infer(c, row[None, :], deadline_ms=2000).get_response()["parameters"]
               for row in split.x_test[:15]]
    tight = [infer(c, row[None, :], deadline_ms=40).get_response()["parameters"]
             for row in split.x_test[15:30]]
    assert [p["tier"] for p in relaxed[-10:]] == ["cloud"] * 10
    assert {p["tier"] for p in tight} == {"edge"}
    assert all(p["cost_usd"] > 0 for p in relaxed + tight)


@pytest.mark.parametrize(
    ("body", "headers", "path", "status"),
    [
        (b"{not json", {"content-type": "application/json"}, "digits", 400),
        (b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,63],"data":[0]}]}',
         {}, "digits", 400),
        (b'{"inputs":[{"name":"input","datatype":"FP64","shape":[1,64],"data":'
         + str([0.0] * 64).encode() + b"}]}", {}, "digits", 400),
        (b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,64],"data":'
         + str([0.0] * 63 + ["NaN"]).replace("'", "").encode() + b"}]}", {}, "digits", 400),
        (b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,64],"data":'
         + str([0.0] * 64).encode() + b'}],"parameters":{"deadline_ms":-1}}', {}, "digits", 400),
        (b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,64],"data":'
         + str([0.0] * 64).encode() + b"}]}", {}, "mnist", 404),
        (b"x" * (5 * 1024 * 1024), {}, "digits", 413),
        (b"<xml/>", {"content-type": "application/xml"}, "digits", 415),
    ],
    ids=["bad-json", "wrong-shape", "wrong-dtype", "nan", "bad-deadline", "unknown-model",
         "huge-body", "wrong-content-type"],
)
def test_malformed_requests_get_a_4xx_oip_error(
    stack: RunningStack, body: bytes, headers: dict[str, str], path: str, status: int
) -> None:
    response = httpx.post(f"{stack.endpoint}/v2/models/{path}/infer", content=body,
                          headers=headers, timeout=10)
    assert response.status_code == status
    assert isinstance(response.json()["error"], str)
    assert httpx.get(f"{stack.endpoint}/v2/health/ready", timeout=5).status_code == 200


def test_targets_view_reports_every_target(stack: RunningStack) -> None:
    targets = stack.targets()
    assert set(targets) == {"cloud", "edge-a", "edge-b"}
    for view in targets.values():
        assert view["estimates"]["observed"]
        assert view["cost_usd_per_request"] > 0


def _load(endpoint: str, rate_rps: float, duration_s: float, deadline_ms: float,
          kill: tuple[float, int] | None) -> Coroutine[Any, Any, list[tuple[int, str]]]:
    """Open-loop load at one deadline; ``kill=(at_s, pid)`` SIGKILLs ``pid`` once, on time."""
    killed: list[int] = []

    def on_send(elapsed_s: float) -> None:
        if kill and not killed and elapsed_s >= kill[0]:
            os.kill(kill[1], signal.SIGKILL)
            killed.append(kill[1])

    return open_loop(endpoint, rate_rps, duration_s, on_send=on_send, deadline_ms=deadline_ms)


def test_sigkill_of_an_edge_worker_under_load_loses_no_request(stack: RunningStack) -> None:
    pid = stack.pid("edge-a")
    outcomes = asyncio.run(_load(stack.endpoint, 40, 6, 100, kill=(2.0, pid)))
    failed = [o for o in outcomes if o[0] != 200]
    # The goal is none; one run in several loses one request at the moment of the kill
    # (the decision briefly finds no edge allowed and plans the too-distant cloud).
    assert len(failed) <= 1, f"{len(failed)} of {len(outcomes)} failed: {failed[:5]}"
    served_by = {target for _, target in outcomes}
    assert "edge-b" in served_by
    deadline = time.monotonic() + 60
    while stack.pid("edge-a") == pid and time.monotonic() < deadline:
        time.sleep(0.5)
    assert stack.pid("edge-a") != pid, "the supervisor did not restart the killed worker"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        after = asyncio.run(_load(stack.endpoint, 20, 2, 100, kill=None))
        if any(target == "edge-a" for _, target in after):
            break
    assert any(target == "edge-a" for _, target in after), json.dumps(stack.targets()["edge-a"])


def _edge_tiers(stack: RunningStack, n: int) -> list[str]:
    split = digits_split()
    c = client(stack)
    targets = []
    for row in split.x_test[:n]:
        try:
            targets.append(infer(c, row[None, :], deadline_ms=100).get_response()
                           ["parameters"]["target"])
        except triton.InferenceServerException as exc:
            targets.append(f"error {exc.status()}")
    return targets


def test_links_change_on_the_running_stack(stack: RunningStack) -> None:
    url = f"{stack.endpoint}/v1/links/edge-a"
    assert httpx.put(url, json={"partitioned": True}, timeout=5).status_code == 401
    cli = [sys.executable, "-m", "edgeroute", "link", "edge-a", "--state-file",
           str(stack.state_file)]
    bad = subprocess.run([*cli, "--loss-probability", "3"], capture_output=True, text=True,
                         timeout=30)
    assert bad.returncode == 1 and "loss_probability" in bad.stderr
    assert subprocess.run([*cli, "--partition"], capture_output=True, timeout=30).returncode == 0
    try:
        assert stack.targets()["edge-a"]["link_emulation"]["partitioned"] is True
        assert set(_edge_tiers(stack, 15)[-8:]) == {"edge-b"}
    finally:
        assert subprocess.run([*cli, "--heal"], capture_output=True, timeout=30).returncode == 0
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and "edge-a" not in _edge_tiers(stack, 5):
        time.sleep(1)
    assert "edge-a" in _edge_tiers(stack, 5), "edge-a did not get traffic back after healing"


def _chaos(stack: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeroute", "chaos", *args, "--state-file",
                           str(stack.state_file)], capture_output=True, text=True, timeout=30)


def test_chaos_holds_a_worker_down_until_released(stack: RunningStack) -> None:
    pid = stack.pid("edge-b")
    assert _chaos(stack, "down", "edge-b").returncode == 0
    time.sleep(8)  # longer than the supervisor's restart delay
    assert not alive(pid) and stack.pid("edge-b") == pid, "a held-down worker was restarted"
    assert _chaos(stack, "up", "edge-b").returncode == 0
    deadline = time.monotonic() + 30
    while stack.pid("edge-b") == pid and time.monotonic() < deadline:
        time.sleep(0.5)
    assert stack.pid("edge-b") != pid
    unknown = _chaos(stack, "kill", "edge-z")
    assert unknown.returncode == 1 and "no edge worker named 'edge-z'" in unknown.stderr


def _apply(stack: RunningStack, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeroute", "policy", "apply", str(path),
                           "--state-file", str(stack.state_file)],
                          capture_output=True, text=True, timeout=120)


def test_policy_reload_under_load_fails_no_request(stack: RunningStack, tmp_path: Path) -> None:
    before = httpx.get(f"{stack.endpoint}/v1/policy", timeout=5).json()
    document = before["policy"]
    document["policies"]["default"]["risk_budget"] = 0.02
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(document))
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("policies:\n  default: {risk_budget: 2}\n")

    async def load_while_applying() -> tuple[list[tuple[int, str]], int]:
        load = asyncio.create_task(_load(stack.endpoint, 20, 8, 1000, kill=None))
        await asyncio.sleep(1.0)
        applied = await asyncio.to_thread(_apply, stack, changed)
        return await load, applied.returncode

    outcomes, code = asyncio.run(load_while_applying())
    assert code == 0
    failed = [o for o in outcomes if o[0] != 200]
    assert not failed, f"{len(failed)} of {len(outcomes)} failed during the reload: {failed[:3]}"
    after = httpx.get(f"{stack.endpoint}/v1/policy", timeout=5).json()
    assert after["sha256"] != before["sha256"]
    assert after["policy"]["policies"]["default"]["risk_budget"] == 0.02
    refused = _apply(stack, invalid)
    assert refused.returncode == 1 and "risk_budget" in refused.stdout
    assert httpx.get(f"{stack.endpoint}/v1/policy", timeout=5).json()["sha256"] == after["sha256"]


def test_tenant_keys_decide_who_may_use_which_policy(stack: RunningStack, tmp_path: Path) -> None:
    from router.policy import hash_key

    document = httpx.get(f"{stack.endpoint}/v1/policy", timeout=5).json()["policy"]
    document["tenants"] = [{"name": "acme", "key_sha256": hash_key("er_acme_key"),
                            "default_policy": "default", "allowed_policies": ["default"]}]
    path = tmp_path / "tenants.yaml"
    path.write_text(yaml.safe_dump(document))
    assert _apply(stack, path).returncode == 0
    url = f"{stack.endpoint}/v2/models/digits/infer"
    body: dict[str, Any] = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                        "data": digits_split().x_test[0].tolist()}]}
    ok = httpx.post(url, json=body, headers={"authorization": "Bearer er_acme_key"}, timeout=10)
    assert ok.status_code == 200 and ok.json()["parameters"]["tenant"] == "acme"
    wrong = httpx.post(url, json=body, headers={"authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401
    body["parameters"] = {"policy": "always-cloud"}
    forbidden = httpx.post(url, json=body, headers={"authorization": "Bearer er_acme_key"},
                           timeout=10)
    assert forbidden.status_code == 403


def test_all_edges_down_cloud_serves_and_tight_deadlines_fail_fast(stack: RunningStack) -> None:
    """Scenario 3: with every edge worker down, quality=any is served by the cloud when the
    deadline allows, and a deadline only an edge could meet gets a fast 503/504, never a 500."""
    for edge in ("edge-a", "edge-b"):
        assert _chaos(stack, "down", edge).returncode == 0
    try:
        relaxed = asyncio.run(_load(stack.endpoint, 10, 3, 2000, kill=None))
        tight = asyncio.run(_load(stack.endpoint, 10, 2, 40, kill=None))
    finally:
        for edge in ("edge-a", "edge-b"):
            assert _chaos(stack, "up", edge).returncode == 0
    assert {status for status, _ in relaxed} == {200}
    assert {target for _, target in relaxed[-10:]} == {"cloud"}
    assert {status for status, _ in tight} <= {503, 504}, tight
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and "edge-a" not in _edge_tiers(stack, 5):
        time.sleep(1)


def test_a_hung_edge_worker_costs_no_request(stack: RunningStack) -> None:
    """Scenario 2: SIGSTOP edge-a under load at a deadline only the edges can meet (the test
    cloud is 150 ms away); fallbacks and hedges to edge-b serve, and edge-a is used again
    after SIGCONT. The requests already waiting on edge-a when it hangs can miss (their
    attempt ran out most of the deadline): at most a few, never a hang or a 5xx."""
    assert _chaos(stack, "hang", "edge-a").returncode == 0
    try:
        outcomes = asyncio.run(_load(stack.endpoint, 20, 6, 100, kill=None))
    finally:
        assert _chaos(stack, "resume", "edge-a").returncode == 0
    failed = [o for o in outcomes if o[0] != 200]
    assert len(failed) <= 3, f"{len(failed)} of {len(outcomes)} failed: {failed[:3]}"
    assert {status for status, _ in failed} <= {504}
    assert "edge-a" not in {target for _, target in outcomes[-40:]}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "edge-a" not in _edge_tiers(stack, 5):
        time.sleep(1)
    assert "edge-a" in _edge_tiers(stack, 5), "edge-a did not get traffic back after SIGCONT"

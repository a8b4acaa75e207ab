"""The whole path on the real stack: tritonclient -> Serve proxy -> router -> edge or cloud.

Faults under load (workers killed, hung, held down; overload; malformed input; policy
reload) are the chaos suite's, in ``tests/chaos``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import yaml

from edgeroute.dataset import digits_split
from tests.stackkit import RunningStack

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
    """In the test config the cloud is cheaper but 150 ms away; the edge is near but dearer.
    The tight deadline (60 ms) only the edges can meet still leaves the router room for its
    own delay on a busy 2-core machine (admission keeps 20 ms for the first call)."""
    split = digits_split()
    c = client(stack)
    relaxed = [infer(c, row[None, :], deadline_ms=2000).get_response()["parameters"]
               for row in split.x_test[:15]]
    tight = [infer(c, row[None, :], deadline_ms=60).get_response()["parameters"]
             for row in split.x_test[15:30]]
    assert [p["tier"] for p in relaxed[-10:]] == ["cloud"] * 10
    assert {p["tier"] for p in tight} == {"edge"}
    assert all(p["cost_usd"] > 0 for p in relaxed + tight)


def test_targets_view_reports_every_target(stack: RunningStack) -> None:
    targets = stack.targets()
    assert set(targets) == {"cloud", "edge-a", "edge-b"}
    for view in targets.values():
        assert view["estimates"]["observed"]
        assert view["cost_usd_per_request"] > 0


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


def _targets_cli(stack: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeroute", "targets", *args, "--state-file",
                           str(stack.state_file)], capture_output=True, text=True, timeout=60)


def test_drain_undrain_reset_and_watch_on_the_running_stack(stack: RunningStack) -> None:
    assert httpx.post(f"{stack.endpoint}/v1/targets/edge-a/drain", timeout=5).status_code == 401
    drained = _targets_cli(stack, "drain", "edge-a")
    assert drained.returncode == 0 and "drained: yes" in drained.stdout, drained.stderr
    try:
        assert stack.targets()["edge-a"]["drained"] is True
        assert "edge-a" not in _edge_tiers(stack, 15)
        watched = _targets_cli(stack, "--watch", "0.2", "--count", "2")
        assert watched.returncode == 0
        assert watched.stdout.count("targets (router's live view") == 2
        assert "DRAINED" in watched.stdout
    finally:
        assert _targets_cli(stack, "undrain", "edge-a").returncode == 0
    assert stack.targets()["edge-a"]["drained"] is False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "edge-a" not in _edge_tiers(stack, 5):
        time.sleep(1)
    assert "edge-a" in _edge_tiers(stack, 5), "edge-a did not get traffic back after undrain"
    assert _targets_cli(stack, "reset", "edge-b").returncode == 0
    fresh = stack.targets()["edge-b"]["estimates"]
    assert fresh["failures"] == 0 and fresh["successes"] <= 2  # probes may have answered
    unknown = _targets_cli(stack, "drain", "edge-z")
    assert unknown.returncode == 1 and "unknown target 'edge-z'" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_top_draws_the_live_view(stack: RunningStack) -> None:
    _edge_tiers(stack, 5)
    top = subprocess.run([sys.executable, "-m", "edgeroute", "top", "--count", "2",
                          "--interval", "0.2", "--state-file", str(stack.state_file)],
                         capture_output=True, text=True, timeout=60)
    assert top.returncode == 0, top.stderr
    for shown in ("edge-a", "edge-b", "cloud", "SLO attainment", "recent decisions"):
        assert shown in top.stdout, top.stdout[-2000:]


def _apply(stack: RunningStack, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeroute", "policy", "apply", str(path),
                           "--state-file", str(stack.state_file)],
                          capture_output=True, text=True, timeout=120)


def test_tenant_keys_decide_who_may_use_which_policy(stack: RunningStack, tmp_path: Path) -> None:
    from router.policy import hash_key

    document = stack.admin_get("/v1/policy")["policy"]
    document["tenants"] = [{"name": "acme", "key_sha256": hash_key("er_acme_key"),
                            "default_policy": "default", "allowed_policies": ["default"]}]
    path = tmp_path / "tenants.yaml"
    path.write_text(yaml.safe_dump(document))
    assert _apply(stack, path).returncode == 0
    assert httpx.get(f"{stack.endpoint}/v1/policy", timeout=5).status_code == 401
    views = json.dumps([stack.admin_get("/v1/policy"), stack.admin_get("/v1/policy/history"),
                        stack.admin_get("/v1/targets")])
    assert hash_key("er_acme_key") not in views
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

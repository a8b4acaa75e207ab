"""A real third-party OIP server behind edgeroute: MLServer with its scikit-learn runtime,
serving a logistic regression this test fits on scikit-learn's digits data, as an
``external:`` edge target of the ``digits`` model.

MLServer speaks JSON tensors only and names its outputs ``predict_proba`` and ``predict``
(FP64 probabilities, labels as a column): the target's ``binary: false`` and
``output_names`` make its answers the model's ``probabilities`` and ``label``. Answers
through edgeroute equal MLServer's own; a bad input is a 400 that never reaches it;
``/v1/targets`` shows it; when its process is killed under load its breaker opens and the
other targets serve every request; restarted, it serves again.

MLServer lives in its own venv (``make mlserver``): its pins conflict with Ray Serve's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from edgeroute.dataset import digits_split
from tests.integration.conftest import test_policy as priced_policy
from tests.stackkit import RunningStack, open_loop, running_stack, stack_config

pytestmark = pytest.mark.integration

PORT = 19900
EDGE_PORTS = (19901, 19902)
MLSERVER_PORTS = (19903, 19904, 19905)
"""MLServer's HTTP, gRPC and metrics ports."""
MLSERVER_VENV = Path(__file__).resolve().parents[2] / ".venv-mlserver"
MLSERVER = MLSERVER_VENV / "bin" / "mlserver"
START_TIMEOUT_S = 90
SKLEARN_OUTPUTS = {"probabilities": "predict_proba", "label": "predict"}
RELAXED_MS = 2000.0
"""A deadline every target meets, the cloud included."""


class MLServerProcess:
    """``mlserver start`` on a model directory, in a process group of its own."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"http://127.0.0.1:{MLSERVER_PORTS[0]}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.root / "mlserver.log", "ab")  # noqa: SIM115 (the child keeps it)
        self.process = subprocess.Popen([str(MLSERVER), "start", str(self.root)],
                                        stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if httpx.get(f"{self.url}/v2/models/digits/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.kill()
        pytest.fail("mlserver did not start:\n"
                    + (self.root / "mlserver.log").read_text()[-4000:])

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash would end it."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """MLServer's own answer for ``x``, asked directly in JSON."""
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                            "data": x.ravel().tolist()}],
                "outputs": [{"name": n} for n in SKLEARN_OUTPUTS.values()]}
        answer = httpx.post(f"{self.url}/v2/models/digits/infer", json=body, timeout=10)
        answer.raise_for_status()
        return {o["name"]: np.asarray(o["data"]).reshape(o["shape"])
                for o in answer.json()["outputs"]}


def model_repository(root: Path) -> Path:
    """A logistic regression on the digits training split (deterministic: lbfgs from zeros),
    with MLServer's settings for it, under ``root``."""
    split = digits_split()
    model = LogisticRegression(max_iter=5000).fit(split.x_train, split.y_train)
    (root / "digits").mkdir(parents=True)
    joblib.dump(model, root / "digits" / "model.joblib")
    (root / "digits" / "model-settings.json").write_text(json.dumps({
        "name": "digits", "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "v1"}}))
    http, grpc, metrics = MLSERVER_PORTS
    (root / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": http, "grpc_port": grpc, "metrics_port": metrics,
        "parallel_workers": 0, "metrics_dir": str(root / "metrics")}))
    return root


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServerProcess]:
    if not (MLSERVER_VENV / ".installed").exists():
        pytest.skip(f"MLServer is not installed in {MLSERVER_VENV}: `make mlserver` installs "
                    "it from the package index")
    server = MLServerProcess(model_repository(tmp_path_factory.mktemp("mlserver")))
    server.start()
    try:
        yield server
    finally:
        server.kill()


def mlserver_policy() -> dict[str, Any]:
    """``mlserver-only`` reaches MLServer alone; ``always-edge`` takes the fastest edge
    target, MLServer while it runs (the edge workers' links are slower), and falls back
    to the others."""
    document = priced_policy()
    document["policies"]["mlserver-only"] = {
        **document["policies"]["always-edge"], "allowed_targets": ["mlserver"]}
    document["anonymous"]["allowed_policies"] = sorted(document["policies"])
    return document


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, models: Any,
          mlserver: MLServerProcess) -> Iterator[RunningStack]:
    config = stack_config(PORT, EDGE_PORTS)
    config["cloud"]["link"] = {"base_ms": 150.0, "jitter_ms": 3.0}
    for edge, base_ms in zip(config["edges"], (30.0, 40.0), strict=True):
        edge["link"] = {"base_ms": base_ms, "jitter_ms": 2.0}
    config["external"] = [{"name": "mlserver", "url": mlserver.url, "tier": "edge",
                           "quality": "small", "binary": False,
                           "output_names": SKLEARN_OUTPUTS}]
    with running_stack(tmp_path_factory.mktemp("mlserver-stack"), config,
                       mlserver_policy()) as running:
        yield running


def routed(stack: RunningStack, x: np.ndarray, **parameters: Any) -> httpx.Response:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                        "data": x.ravel().tolist()}],
            "parameters": {"deadline_ms": RELAXED_MS, **parameters}}
    return httpx.post(f"{stack.endpoint}/v2/models/digits/infer", json=body, timeout=10)


def mlserver_target(stack: RunningStack) -> dict[str, Any]:
    return next(t for t in stack.admin_get("/v1/targets")["targets"]
                if (t["model"], t["name"]) == ("digits", "mlserver"))


def served_by_mlserver(stack: RunningStack, tries: int = 5) -> bool:
    x = digits_split().x_test[:1].astype(np.float32)
    return any(routed(stack, x, policy="always-edge").json().get("parameters", {}).get(
        "target") == "mlserver" for _ in range(tries))


def wait_until(check: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def test_answers_through_edgeroute_equal_mlservers_own(
        stack: RunningStack, mlserver: MLServerProcess) -> None:
    x = digits_split().x_test[:40].astype(np.float32)
    for rows in np.array_split(x, 4):
        answer = routed(stack, rows, policy="mlserver-only")
        assert answer.status_code == 200, answer.text
        document = answer.json()
        assert document["parameters"]["target"] == "mlserver"
        outputs = {o["name"]: o for o in document["outputs"]}
        assert {n: (o["datatype"], o["shape"]) for n, o in outputs.items()} == {
            "probabilities": ("FP32", [len(rows), 10]), "label": ("INT64", [len(rows)])}
        direct = mlserver.infer(rows)
        np.testing.assert_array_equal(outputs["label"]["data"], direct["predict"].ravel())
        np.testing.assert_array_equal(
            np.asarray(outputs["probabilities"]["data"], np.float32).reshape(len(rows), 10),
            direct["predict_proba"].astype(np.float32))


def test_a_bad_input_is_a_400_that_never_reaches_mlserver(stack: RunningStack) -> None:
    before = mlserver_target(stack)["breaker"]
    wrong_shape = routed(stack, np.zeros((2, 63), np.float32), policy="mlserver-only")
    assert wrong_shape.status_code == 400
    assert "[N, 64]" in wrong_shape.json()["error"]
    out_of_range = routed(stack, np.full((1, 64), 99.0, np.float32), policy="mlserver-only")
    assert out_of_range.status_code == 400
    after = mlserver_target(stack)["breaker"]
    assert after["state"] == "closed"
    assert after["consecutive_failures"] == before["consecutive_failures"] == 0


def test_targets_show_mlserver_as_an_edge_target_of_digits(
        stack: RunningStack, mlserver: MLServerProcess) -> None:
    target = mlserver_target(stack)
    assert (target["tier"], target["quality"]) == ("edge", "small")
    assert target["available"] is True
    assert target["breaker"]["state"] == "closed"
    assert mlserver.url in json.dumps(target)


def test_killed_mlserver_is_ejected_without_failed_requests_and_used_again_on_restart(
        stack: RunningStack, mlserver: MLServerProcess) -> None:
    """SIGKILL MLServer, the fastest edge target, under 20 rps open-loop load at a relaxed
    deadline: every request is answered (by the edge workers), its breaker opens, and once
    restarted it serves again."""
    assert wait_until(lambda: served_by_mlserver(stack), 30), "mlserver never served"
    ejections = mlserver_target(stack)["breaker"]["ejections"]
    killed_at: list[float] = []

    def kill_at_2_s(elapsed_s: float) -> None:
        if elapsed_s >= 2.0 and not killed_at:
            mlserver.kill()
            killed_at.append(elapsed_s)

    outcomes = asyncio.run(open_loop(stack.endpoint, 20.0, 8.0, on_send=kill_at_2_s,
                                     deadline_ms=RELAXED_MS, policy="always-edge"))
    failed = [o for o in outcomes if o[0] != 200]
    served = [target for _, target in outcomes]
    print("served by, in 2 s windows:",
          [dict(Counter(served[i:i + 40])) for i in range(0, len(served), 40)])
    assert killed_at and not failed, failed[:5]
    assert "mlserver" in served[:40], "mlserver carried traffic before the kill"
    assert set(served[-40:]) <= {"edge-a", "edge-b", "cloud"}, served[-40:]
    breaker = mlserver_target(stack)["breaker"]
    assert breaker["ejections"] > ejections, breaker
    assert breaker["state"] != "closed", breaker
    mlserver.start()
    restarted = time.monotonic()
    assert wait_until(lambda: served_by_mlserver(stack), 60), mlserver_target(stack)
    print(f"served by mlserver again {time.monotonic() - restarted:.1f} s after it was ready")
    assert mlserver_target(stack)["breaker"]["state"] == "closed"

"""Two models from one endpoint on the real stack: the bundled ``digits`` and a ``sensor``
pair whose ONNX files this test builds in a temporary directory (never in the repository),
with another input name, width and class count.

``always-edge`` answers equal onnxruntime's run of the small file, ``always-cloud`` answers
equal the large file's, in JSON and in binary tensors through tritonclient; ``quality=high``
lands on the cloud; a wrong shape is a 400 naming the expected shape.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton

from tests.integration.conftest import test_policy as priced_policy
from tests.onnx_models import sensor_pair, wine
from tests.stackkit import RunningStack, running_stack, stack_config

pytestmark = pytest.mark.integration

PORT = 18400
EDGE_PORTS = (18401, 18402)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return sensor_pair(tmp_path_factory.mktemp("held-out"))


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory, pair: tuple[Path, Path],
               models: Any) -> Iterator[RunningStack]:
    config = stack_config(PORT, EDGE_PORTS)
    config["models"] = [
        {"name": "digits"},
        {"name": "sensor", "edge_model": str(pair[0]), "cloud_model": str(pair[1]),
         "confidence_output": "scores"},
    ]
    with running_stack(tmp_path_factory.mktemp("models"), config, priced_policy()) as running:
        yield running


def run_onnx(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"readings": x}), strict=True))


def sensor_infer(stack: RunningStack, x: np.ndarray, binary: bool,
                 **parameters: Any) -> triton.InferResult:
    c = triton.InferenceServerClient(stack.endpoint.removeprefix("http://"),
                                     connection_timeout=10, network_timeout=10)
    inputs = [triton.InferInput("readings", list(x.shape), "FP32")]
    inputs[0].set_data_from_numpy(x, binary_data=binary)
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("scores", "label")]
    return c.infer("sensor", inputs, outputs=outputs, parameters=parameters)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize(("policy", "tier", "variant"),
                         [("always-edge", "edge", 0), ("always-cloud", "cloud", 1)])
def test_each_policy_answers_what_its_variant_computes(
        two_models: RunningStack, pair: tuple[Path, Path], binary: bool, policy: str,
        tier: str, variant: int) -> None:
    x = wine()[0][::17][:8].copy()
    result = sensor_infer(two_models, x, binary, policy=policy, deadline_ms=5000)
    assert result.get_response()["parameters"]["tier"] == tier
    assert result.get_response()["model_name"] == "sensor"
    want = run_onnx(pair[variant], x)
    np.testing.assert_allclose(result.as_numpy("scores"), want["scores"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("label"), want["label"])
    other = run_onnx(pair[1 - variant], x)
    assert not np.allclose(want["scores"], other["scores"]), "the variants must differ"


def test_quality_high_lands_on_the_cloud_for_either_model(two_models: RunningStack) -> None:
    x = wine()[0][:1].copy()
    tiers = {sensor_infer(two_models, x, True, quality="high").get_response()[
        "parameters"]["tier"] for _ in range(5)}
    assert tiers == {"cloud"}
    c = triton.InferenceServerClient(two_models.endpoint.removeprefix("http://"))
    digits = triton.InferInput("input", [1, 64], "FP32")
    digits.set_data_from_numpy(np.zeros((1, 64), np.float32))
    answer = c.infer("digits", [digits], parameters={"quality": "high"})
    assert answer.get_response()["parameters"]["tier"] == "cloud"
    assert answer.as_numpy("probabilities").shape == (1, 10)


def test_a_wrong_shape_is_a_400_naming_the_expected_shape(two_models: RunningStack) -> None:
    body = {"inputs": [{"name": "readings", "datatype": "FP32", "shape": [1, 12],
                        "data": [0.0] * 12}]}
    answer = httpx.post(f"{two_models.endpoint}/v2/models/sensor/infer", json=body, timeout=10)
    assert answer.status_code == 400
    assert "[N, 13]" in answer.json()["error"]


def test_every_model_is_listed_and_described(two_models: RunningStack) -> None:
    index = httpx.post(f"{two_models.endpoint}/v2/repository/index", timeout=10).json()
    assert [(m["name"], m["state"]) for m in index] == [("digits", "READY"), ("sensor", "READY")]
    c = triton.InferenceServerClient(two_models.endpoint.removeprefix("http://"))
    assert c.get_model_metadata("sensor")["inputs"] == [
        {"name": "readings", "datatype": "FP32", "shape": [-1, 13]}]
    edge_url = next(p["url"] for p in two_models.state["processes"] if p["kind"] == "edge")
    edge_index = httpx.post(f"{edge_url}/v2/repository/index", timeout=10).json()
    assert [m["name"] for m in edge_index] == ["digits", "sensor"]
    targets = two_models.admin_get("/v1/targets")["targets"]
    assert {(t["model"], t["name"]) for t in targets} >= {
        ("digits", "cloud"), ("sensor", "cloud"), ("sensor", "edge-a"), ("digits", "edge-b")}

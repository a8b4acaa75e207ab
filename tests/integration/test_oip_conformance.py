"""Open Inference Protocol conformance as Triton's own client sees it, against the running
stack's router and against a real edge worker process.

Every ``tritonclient.http`` and ``tritonclient.http.aio`` method the servers support is
called: health, server and model metadata (versioned too), model configuration,
statistics, infer in JSON and binary tensors with request ids, requested outputs, a
model version, gzip and deflate request bodies and compressed answers, ``async_infer``;
and the errors a client decodes: an unknown model, version or route, a zip bomb.
"""

from __future__ import annotations

import asyncio
import gzip
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from tritonclient.utils import InferenceServerException

from edgeroute.dataset import digits_split
from edgeroute.models.store import ModelSet
from tests.stackkit import RunningStack

pytestmark = pytest.mark.integration

EDGE_PORT = 18195
EXTENSIONS = {"binary_tensor_data", "statistics", "model_configuration"}


@pytest.fixture(scope="module")
def edge_worker(tmp_path_factory: pytest.TempPathFactory, models: ModelSet) -> Iterator[str]:
    """``edgeroute edge`` in its own process, as an operator runs one; its URL."""
    log = tmp_path_factory.mktemp("edge") / "edge.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "edgeroute", "edge", "--port", str(EDGE_PORT),
             "--name", "edge-oip"], stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{EDGE_PORT}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the edge worker did not start:\n{Path(log).read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture(params=["router", "edge"])
def server(request: pytest.FixtureRequest) -> str:
    """The URL of an OIP server: the router of the session stack, or one edge worker."""
    if request.param == "router":
        stack: RunningStack = request.getfixturevalue("stack")
        return stack.endpoint
    return str(request.getfixturevalue("edge_worker"))


def client(url: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url.removeprefix("http://"), connection_timeout=10,
                                        network_timeout=10)


def inputs(rows: np.ndarray, binary: bool = True) -> list[triton.InferInput]:
    tensor = triton.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows.astype(np.float32), binary_data=binary)
    return [tensor]


def successes(c: triton.InferenceServerClient) -> int:
    stats = c.get_inference_statistics("digits")["model_stats"][0]
    return int(stats["inference_stats"]["success"]["count"])


def test_health_metadata_config(server: str) -> None:
    c = client(server)
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("digits") and c.is_model_ready("digits", "1")
    assert not c.is_model_ready("digits", "7") and not c.is_model_ready("mnist")
    assert set(c.get_server_metadata()["extensions"]) >= EXTENSIONS
    metadata = c.get_model_metadata("digits")
    assert metadata["versions"] == ["1"]
    assert c.get_model_metadata("digits", "1")["versions"] == ["1"]
    assert metadata["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 64]}
    config = c.get_model_config("digits")
    assert config["name"] == "digits" and config["max_batch_size"] >= 1
    assert [i["name"] for i in config["input"]] == ["input"]
    assert [o["name"] for o in config["output"]] == ["probabilities", "label"]
    assert c.get_model_config("digits", "1") == config


def test_router_metadata_names_the_targets_of_each_version(stack: RunningStack) -> None:
    metadata = client(stack.endpoint).get_model_metadata("digits")
    served = metadata["parameters"]["version_targets"]
    assert served == {"1": ["cloud", "edge-a", "edge-b"]}
    assert set(metadata["parameters"]["target_model_versions"]) <= set(served["1"])


@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_infer_every_way_the_client_asks(server: str, compression: str | None) -> None:
    split = digits_split()
    c = client(server)
    before = successes(c)
    rows, labels = split.x_test[:32], split.y_test[:32]
    binary = c.infer("digits", inputs(rows), model_version="1", request_id="conf-1",
                     parameters={"deadline_ms": 2000},
                     request_compression_algorithm=compression,
                     response_compression_algorithm=compression)
    assert binary.get_response()["id"] == "conf-1"
    assert (binary.as_numpy("label") == labels).mean() >= 0.9
    assert binary.as_numpy("probabilities").shape == (32, 10)
    json_tensors = c.infer("digits", inputs(rows, binary=False),
                           outputs=[triton.InferRequestedOutput("label", binary_data=False)],
                           request_compression_algorithm=compression,
                           response_compression_algorithm=compression)
    assert [o["name"] for o in json_tensors.get_response()["outputs"]] == ["label"]
    assert (json_tensors.as_numpy("label") == labels).mean() >= 0.9
    pending = c.async_infer("digits", inputs(rows[:1]), model_version="1")
    assert pending.get_result(timeout=10).as_numpy("label").shape == (1,)
    assert successes(c) - before == 3


def test_statistics_count_per_model_and_per_target(server: str) -> None:
    c = client(server)
    c.infer("digits", inputs(digits_split().x_test[:4]))
    stats = c.get_inference_statistics("digits")["model_stats"][0]
    assert stats["name"] == "digits" and stats["version"] == "1"
    assert stats["inference_count"] >= 4 and stats["last_inference"] > 0
    assert stats["inference_stats"]["success"]["ns"] > 0
    everything = c.get_inference_statistics()["model_stats"]
    assert [m["name"] for m in everything] == ["digits"]
    if "targets" in stats.get("parameters", {}):  # the router: per target as well
        per_target = stats["parameters"]["targets"]
        assert sum(t["execution_count"] for t in per_target.values()) == stats["execution_count"]
        assert all(t["model_version"].startswith("1-") for t in per_target.values())


def test_errors_decode_with_their_messages(server: str) -> None:
    c = client(server)
    with pytest.raises(InferenceServerException) as unknown_model:
        c.infer("mnist", inputs(digits_split().x_test[:1]))
    assert unknown_model.value.status() == "404" and "mnist" in unknown_model.value.message()
    with pytest.raises(InferenceServerException) as unknown_version:
        c.infer("digits", inputs(digits_split().x_test[:1]), model_version="7")
    assert unknown_version.value.status() == "404"
    assert "version '7'" in unknown_version.value.message()
    assert [m["name"] for m in c.get_model_repository_index()] == ["digits"]
    with pytest.raises(InferenceServerException) as unknown_route:
        c.load_model("digits")
    assert unknown_route.value.status() == "404"
    assert unknown_route.value.message() == "Not Found"
    with pytest.raises(InferenceServerException) as unserved_extension:
        c.get_trace_settings()
    assert unserved_extension.value.status() == "404"
    with pytest.raises(InferenceServerException) as bad_input:
        c.infer("digits", inputs(np.full((1, 64), 99.0)))
    assert bad_input.value.status() == "400" and "0, 16" in bad_input.value.message()


def test_a_zip_bomb_is_a_413_and_a_wrong_method_a_405(server: str) -> None:
    bomb = gzip.compress(b" " * (64 * 1024 * 1024))
    response = httpx.post(f"{server}/v2/models/digits/infer", content=bomb, timeout=30,
                          headers={"content-type": "application/json",
                                   "content-encoding": "gzip"})
    assert response.status_code == 413
    assert "decompressed" in response.json()["error"]
    wrong = httpx.delete(f"{server}/v2/models/digits/infer", timeout=10)
    assert wrong.status_code == 405 and wrong.json()["error"]


def test_gzipped_binary_answer_keeps_its_headers(server: str) -> None:
    body, json_size = triton.InferenceServerClient.generate_request_body(
        inputs(digits_split().x_test[:64]))
    response = httpx.post(
        f"{server}/v2/models/digits/infer", content=body, timeout=10,
        headers={"content-type": "application/octet-stream", "accept-encoding": "gzip",
                 "inference-header-content-length": str(json_size)})
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert response.headers["server-timing"]
    header_length = int(response.headers["inference-header-content-length"])
    stats = httpx.get(f"{server}/v2/models/digits/stats", headers={"accept-encoding": "gzip"},
                      timeout=10)
    assert "content-encoding" not in stats.headers, "only inference answers are compressed"
    result = triton.InferenceServerClient.parse_response_body(
        response.content, header_length=header_length)  # httpx inflated it
    assert result.as_numpy("label").shape == (64,)


def test_aio_client(server: str) -> None:
    split = digits_split()

    async def main() -> dict[str, Any]:
        c = triton_aio.InferenceServerClient(server.removeprefix("http://"),
                                             conn_timeout=10)
        try:
            assert await c.is_server_live() and await c.is_server_ready()
            assert await c.is_model_ready("digits", "1")
            assert set((await c.get_server_metadata())["extensions"]) >= EXTENSIONS
            assert (await c.get_model_metadata("digits"))["versions"] == ["1"]
            assert (await c.get_model_config("digits"))["name"] == "digits"
            tensor = triton_aio.InferInput("input", [16, 64], "FP32")
            tensor.set_data_from_numpy(split.x_test[:16].astype(np.float32))
            result = await c.infer("digits", [tensor], model_version="1", request_id="aio",
                                   request_compression_algorithm="gzip",
                                   response_compression_algorithm="gzip")
            assert (result.as_numpy("label") == split.y_test[:16]).mean() >= 0.9
            try:
                await c.get_model_metadata("mnist")
            except InferenceServerException as error:
                assert error.status() == "404" and "mnist" in error.message()
            else:
                raise AssertionError("an unknown model must be an error")
            return dict(await c.get_inference_statistics("digits"))
        finally:
            await c.close()

    stats = asyncio.run(main())
    assert stats["model_stats"][0]["execution_count"] >= 1

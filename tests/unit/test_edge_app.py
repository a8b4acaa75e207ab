"""The edge worker's OIP app in-process over httpx: what a client of one edge worker sees.

A real onnxruntime session serves held-out digits; overload is made with a model whose
``predict`` blocks until the test releases it, so no assertion depends on timing.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from edge.server import EdgeWorker, create_app
from edgeroute.dataset import Split, digits_split
from edgeroute.http import parse_server_timing
from edgeroute.models.runtime import OnnxModel
from edgeroute.models.store import ModelSet
from tests.unit.fakes import run_async

T = TypeVar("T")
INFER = "/v2/models/digits/infer"
ROWS = 200


@pytest.fixture(scope="module")
def data() -> Split:
    return digits_split(seed=0)


@pytest.fixture(scope="module")
def model(models: ModelSet) -> OnnxModel:
    return OnnxModel(models.student_int8, threads=1)


@pytest.fixture
def worker(model: OnnxModel) -> Iterator[EdgeWorker]:
    worker = EdgeWorker(model, name="edge-test", concurrency=2, max_queue=8,
                        max_body_bytes=1024 * 1024)
    yield worker
    worker.close()


class GatedModel:
    """Wraps a model so that ``predict`` blocks until ``release()``: a worker kept busy."""

    def __init__(self, model: OnnxModel) -> None:
        self._model = model
        self._gate = threading.Event()
        self.name = model.name
        self.version = model.version
        self.signature = model.signature
        self.calls = 0

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        assert self._gate.wait(timeout=30), "the test never released the model"
        return self._model.run(inputs)

    def release(self) -> None:
        self._gate.set()


def serve(worker: EdgeWorker, main: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    async def run() -> T:
        transport = httpx.ASGITransport(app=create_app(worker))
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            return await main(client)

    return run_async(run)


def json_body(x: np.ndarray, *, datatype: str = "FP32", **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [{"name": "input", "datatype": datatype, "shape": list(x.shape),
                    "data": x.reshape(-1).tolist()}],
        **extra,
    }


def triton_body(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    infer_input = triton.InferInput("input", list(x.shape), triton.np_to_triton_dtype(x.dtype))
    infer_input.set_data_from_numpy(x, binary_data=True)
    outputs = [
        triton.InferRequestedOutput("probabilities", binary_data=True),
        triton.InferRequestedOutput("label", binary_data=True),
    ]
    body, json_size = triton.InferenceServerClient.generate_request_body(
        [infer_input], outputs=outputs
    )
    headers = {"Content-Type": "application/octet-stream"}
    if json_size is not None:
        headers["Inference-Header-Content-Length"] = str(json_size)
    return body, headers


def assert_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    message = response.json()["error"]
    assert isinstance(message, str) and message
    return message


def test_health_and_metadata(worker: EdgeWorker, model: OnnxModel) -> None:
    async def main(client: httpx.AsyncClient) -> dict[str, httpx.Response]:
        paths = ["/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/digits",
                 "/v2/models/digits/ready", "/v1/stats"]
        return {path: await client.get(path) for path in paths}

    got = serve(worker, main)
    assert all(r.status_code == 200 for r in got.values())
    assert got["/v2/health/live"].json() == {"live": True}
    assert got["/v2/health/ready"].json() == {"ready": True}
    server = got["/v2"].json()
    assert server["version"] == model.version
    assert "binary_tensor_data" in server["extensions"]
    metadata = got["/v2/models/digits"].json()
    assert metadata["name"] == "digits"
    assert metadata["versions"] == ["1"]
    assert metadata["parameters"]["model_version"] == model.version
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert [o["name"] for o in metadata["outputs"]] == ["probabilities", "label"]
    assert got["/v2/models/digits/ready"].json() == {"name": "digits", "ready": True}
    assert got["/v1/stats"].json()["name"] == "edge-test"


@pytest.mark.parametrize("path", ["/v2/models/mnist", "/v2/models/mnist/ready"])
def test_unknown_model_metadata_is_a_404(worker: EdgeWorker, path: str) -> None:
    async def main(client: httpx.AsyncClient) -> httpx.Response:
        return await client.get(path)

    assert "mnist" in assert_error(serve(worker, main), 404)


def test_json_inference_labels_held_out_digits(
    worker: EdgeWorker, model: OnnxModel, data: Split
) -> None:
    x, y = data.x_test[:ROWS], data.y_test[:ROWS]

    async def main(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post(INFER, json=json_body(x, id="req-7"))

    response = serve(worker, main)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["model_name"] == "digits"
    assert body["model_version"] == model.version
    assert body["id"] == "req-7"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["probabilities"]["shape"] == [ROWS, 10]
    assert outputs["label"]["datatype"] == "INT64"
    probabilities = np.array(outputs["probabilities"]["data"]).reshape(ROWS, 10)
    labels = np.array(outputs["label"]["data"])
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    assert np.array_equal(labels, probabilities.argmax(axis=1))
    assert np.array_equal(labels, model.predict(x)[1])
    assert (labels == y).mean() >= 0.9


def test_binary_inference_from_tritonclient(
    worker: EdgeWorker, model: OnnxModel, data: Split
) -> None:
    x, y = data.x_test[-ROWS:], data.y_test[-ROWS:]
    body, headers = triton_body(x)

    async def main(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post(INFER, content=body, headers=headers)

    response = serve(worker, main)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    result = triton.InferenceServerClient.parse_response_body(
        response.content, header_length=int(response.headers["inference-header-content-length"])
    )
    probabilities, labels = result.as_numpy("probabilities"), result.as_numpy("label")
    assert probabilities.dtype == np.float32 and probabilities.shape == (ROWS, 10)
    assert labels.dtype == np.int64
    want_probabilities, want_labels = model.predict(x)
    assert np.array_equal(labels, want_labels)
    assert np.allclose(probabilities, want_probabilities)
    assert (labels == y).mean() >= 0.9


def test_server_timing_reports_queue_and_inference(worker: EdgeWorker, data: Split) -> None:
    async def main(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post(INFER, json=json_body(data.x_test[:1]))

    response = serve(worker, main)
    timing = parse_server_timing(response.headers["server-timing"])
    assert set(timing) == {"queue", "infer"}
    assert timing["queue"] >= 0.0
    assert timing["infer"] > 0.0


def nan_binary() -> tuple[bytes, dict[str, str]]:
    x = np.zeros((1, 64), dtype=np.float32)
    x[0, 5] = np.nan
    return triton_body(x)


def oversize() -> tuple[bytes, dict[str, str]]:
    return b"{" + b" " * (1024 * 1024), {"content-type": "application/json"}


def as_json(document: Any) -> tuple[bytes, dict[str, str]]:
    return json.dumps(document).encode(), {"content-type": "application/json"}


ONE = np.ones((1, 64), dtype=np.float32)
MALFORMED: dict[str, tuple[Callable[[], tuple[bytes, dict[str, str]]], int, str]] = {
    "bad-json": (lambda: (b'{"inputs": [', {"content-type": "application/json"}), 400, "JSON"),
    "not-an-object": (lambda: as_json([1, 2, 3]), 400, "object"),
    "no-inputs": (lambda: as_json({"inputs": []}), 400, "empty"),
    "wrong-shape": (lambda: as_json(json_body(np.ones((1, 63), np.float32))), 400, "shape"),
    "flat-shape": (lambda: as_json(json_body(np.ones(64, np.float32))), 400, "shape"),
    "fp64": (lambda: as_json(json_body(ONE, datatype="FP64")), 400, "FP32"),
    "nan": (nan_binary, 400, "NaN"),
    "out-of-range": (lambda: as_json(json_body(ONE * 17)), 400, "values"),
    "too-many-rows": (lambda: as_json(json_body(np.ones((300, 64), np.float32))), 400, "batch"),
    "wrong-input-name": (
        lambda: as_json({"inputs": [{**json_body(ONE)["inputs"][0], "name": "pixels"}]}),
        400,
        "input",
    ),
    "short-binary": (
        lambda: (triton_body(ONE)[0][:-4], triton_body(ONE)[1]),
        400,
        "binary",
    ),
    "wrong-content-type": (lambda: (b"<digits/>", {"content-type": "application/xml"}), 415,
                           "content type"),
    "truncated-gzip": (
        lambda: (gzip.compress(b'{"inputs": []}')[:-6],
                 {"content-type": "application/json", "content-encoding": "gzip"}),
        400,
        "gzip",
    ),
    "brotli": (
        lambda: (b"\x0b\x02\x80", {"content-type": "application/json", "content-encoding": "br"}),
        415,
        "encoding",
    ),
    "gzip-bomb": (
        lambda: (gzip.compress(b" " * (64 * 1024 * 1024)),
                 {"content-type": "application/json", "content-encoding": "gzip"}),
        413,
        "decompressed",
    ),
    "oversize": (oversize, 413, "limit"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_requests_get_a_4xx_and_the_worker_keeps_serving(
    worker: EdgeWorker, data: Split, case: str
) -> None:
    make, status, words = MALFORMED[case]
    content, headers = make()

    async def main(client: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response]:
        bad = await client.post(INFER, content=content, headers=headers)
        good = await client.post(INFER, json=json_body(data.x_test[:4]))
        return bad, good

    bad, good = serve(worker, main)
    assert words.lower() in assert_error(bad, status).lower()
    assert good.status_code == 200
    assert worker.served == 1


def test_an_unknown_model_is_a_404(worker: EdgeWorker) -> None:
    async def main(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post("/v2/models/mnist/infer", json=json_body(ONE))

    assert "mnist" in assert_error(serve(worker, main), 404)


def test_infer_only_accepts_post(worker: EdgeWorker) -> None:
    async def main(client: httpx.AsyncClient) -> httpx.Response:
        return await client.get(INFER)

    assert "not allowed" in assert_error(serve(worker, main), 405).lower()


def test_unknown_routes_and_versions_are_oip_404s(worker: EdgeWorker) -> None:
    async def main(client: httpx.AsyncClient) -> list[httpx.Response]:
        return [await client.get("/v2/no/such/route"),
                await client.post("/v2/models/digits/versions/7/infer", json=json_body(ONE)),
                await client.get("/v2/models/digits/versions/7/ready")]

    route, infer, ready = serve(worker, main)
    assert "not found" in assert_error(route, 404).lower()
    assert "version '7'" in assert_error(infer, 404)
    assert "version '7'" in assert_error(ready, 404)


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_compressed_requests_and_gzipped_binary_answers(
    worker: EdgeWorker, data: Split, coding: str
) -> None:
    body, headers = triton_body(data.x_test[:32])
    packed = gzip.compress(body) if coding == "gzip" else zlib.compress(body)

    async def main(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post("/v2/models/digits/versions/1/infer", content=packed,
                                 headers={**headers, "content-encoding": coding,
                                          "accept-encoding": "gzip"})

    response = serve(worker, main)
    assert response.status_code == 200, response.text
    assert response.headers["content-encoding"] == "gzip"
    assert "infer" in parse_server_timing(response.headers["server-timing"])
    result = triton.InferenceServerClient.parse_response_body(
        gzip.compress(response.content),  # httpx inflated it; tritonclient inflates its own
        header_length=int(response.headers["inference-header-content-length"]),
        content_encoding="gzip")
    assert (result.as_numpy("label") == data.y_test[:32]).mean() >= 0.9


def test_statistics_count_successes_and_failures(worker: EdgeWorker, data: Split) -> None:
    async def main(client: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response]:
        for _ in range(3):
            await client.post(INFER, json=json_body(data.x_test[:2]))
        await client.post(INFER, content=b"{", headers={"content-type": "application/json"})
        return await client.get("/v2/models/digits/stats"), await client.get(
            "/v2/models/digits/config")

    stats, config = serve(worker, main)
    model = stats.json()["model_stats"][0]
    assert model["name"] == "digits" and model["version"] == "1"
    assert model["inference_count"] == 6 and model["execution_count"] == 3
    assert model["inference_stats"]["success"]["count"] == 3
    assert model["inference_stats"]["fail"]["count"] == 1
    assert model["inference_stats"]["compute_infer"]["ns"] > 0
    assert model["last_inference"] > 0
    assert config.json()["max_batch_size"] == worker.max_batch
    assert [i["name"] for i in config.json()["input"]] == ["input"]


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout_s
    while not condition():
        assert loop.time() < give_up, "condition never held"
        await asyncio.sleep(0.001)


def test_requests_beyond_capacity_get_503_with_retry_after(model: OnnxModel, data: Split) -> None:
    gated = GatedModel(model)
    worker = EdgeWorker(gated, concurrency=1, max_queue=0)  # type: ignore[arg-type]
    x = data.x_test[:2]

    async def main(client: httpx.AsyncClient) -> tuple[httpx.Response, list[httpx.Response],
                                                       httpx.Response]:
        try:
            first = asyncio.create_task(client.post(INFER, json=json_body(x)))
            await until(lambda: worker.admission.running == 1)
            overflow = await asyncio.gather(
                *(client.post(INFER, json=json_body(x)) for _ in range(3))
            )
        finally:
            gated.release()
        served = await first
        after = await client.post(INFER, json=json_body(x))
        return served, list(overflow), after

    try:
        served, overflow, after = serve(worker, main)
    finally:
        gated.release()
        worker.close()
    for response in overflow:
        assert "queue full" in assert_error(response, 503)
        assert float(response.headers["retry-after"]) > 0
    assert served.status_code == 200
    assert after.status_code == 200, "capacity comes back once the busy request is done"
    assert worker.stats()["rejected"] == 3
    assert worker.served == 2


def test_a_queued_request_reports_its_wait_in_server_timing(
    model: OnnxModel, data: Split
) -> None:
    gated = GatedModel(model)
    worker = EdgeWorker(gated, concurrency=1, max_queue=1)  # type: ignore[arg-type]
    x = data.x_test[:1]
    held_s = 0.05

    async def main(client: httpx.AsyncClient) -> tuple[httpx.Response, ...]:
        try:
            first = asyncio.create_task(client.post(INFER, json=json_body(x)))
            await until(lambda: worker.admission.running == 1)
            queued = asyncio.create_task(client.post(INFER, json=json_body(x)))
            await until(lambda: worker.admission.waiting == 1)
            refused = await client.post(INFER, json=json_body(x))
            await asyncio.sleep(held_s)
        finally:
            gated.release()
        return await first, await queued, refused

    try:
        first, queued, refused = serve(worker, main)
    finally:
        gated.release()
        worker.close()
    assert first.status_code == 200 and queued.status_code == 200
    assert_error(refused, 503)
    queue_ms = parse_server_timing(queued.headers["server-timing"])["queue"]
    assert queue_ms >= held_s * 1000 * 0.9


def test_an_oversize_body_without_a_length_is_cut_off_while_streaming(worker: EdgeWorker) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b" " * (256 * 1024)

    async def main(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post(INFER, content=chunks(),
                                 headers={"content-type": "application/json"})

    response = serve(worker, main)
    assert "content-length" not in response.request.headers
    assert "limit" in assert_error(response, 413)


def test_the_app_starts_and_shuts_down_as_uvicorn_drives_it(model: OnnxModel) -> None:
    worker = EdgeWorker(model)
    app = create_app(worker)
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    answered: list[str] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        answered.append(message["type"])

    async def main() -> None:
        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)

    run_async(main)
    assert answered == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_work_whose_caller_deadline_passed_in_the_queue_is_dropped(
    model: OnnxModel, data: Split
) -> None:
    gated = GatedModel(model)
    worker = EdgeWorker(gated, concurrency=1, max_queue=4)  # type: ignore[arg-type]
    x = data.x_test[:1]
    tight = {"x-edgeroute-deadline-ms": "20", "x-request-id": "req-42"}

    async def main(client: httpx.AsyncClient) -> tuple[httpx.Response, ...]:
        try:
            first = asyncio.create_task(client.post(INFER, json=json_body(x)))
            await until(lambda: worker.admission.running == 1)
            late = asyncio.create_task(client.post(INFER, json=json_body(x), headers=tight))
            await until(lambda: worker.admission.waiting == 1)
            await asyncio.sleep(0.05)
        finally:
            gated.release()
        return await first, await late

    try:
        first, late = serve(worker, main)
    finally:
        gated.release()
        worker.close()
    assert first.status_code == 200
    assert "deadline passed" in assert_error(late, 504)
    assert late.headers["x-request-id"] == "req-42"
    assert worker.stats()["expired"] == 1
    assert gated.calls == 1, "the expired request must not reach the model"

"""HttpTransport against a real edge worker in-process, and against httpx mocks for the
failures a real worker cannot be made to show here: every foreign error becomes a TargetError.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import httpx
import numpy as np
import pytest

from edge.server import EdgeWorker, create_app
from edgeroute.contract import output_tensors
from edgeroute.dataset import Split, digits_split
from edgeroute.models.runtime import OnnxModel
from edgeroute.models.store import ModelSet
from edgeroute.oip import InferResponse, Tensor, decode_request, encode_response
from edgeroute.signature import Batch
from router.transport import (
    HttpTransport,
    Reply,
    TargetRejected,
    TargetTimeout,
    TargetUnavailable,
)
from tests.unit.fakes import run_async

T = TypeVar("T")
URL = "http://edge"
Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(scope="module")
def data() -> Split:
    return digits_split(seed=0)


@pytest.fixture(scope="module")
def model(models: ModelSet) -> OnnxModel:
    return OnnxModel(models.student, threads=1)


@pytest.fixture
def worker(model: OnnxModel) -> Iterator[EdgeWorker]:
    worker = EdgeWorker(model, name="edge-a", concurrency=1, max_queue=4, max_batch=64)
    yield worker
    worker.close()


def over_edge(worker: EdgeWorker, main: Callable[[HttpTransport], Awaitable[T]]) -> T:
    """Run ``main`` with a transport whose client talks to ``worker``'s app in-process."""

    async def run() -> T:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(worker)),
                                   base_url=URL)
        transport = HttpTransport("edge-a", URL, client=client)
        try:
            return await main(transport)
        finally:
            await transport.aclose()

    return run_async(run)


def over_mock(handler: Handler, main: Callable[[HttpTransport], Awaitable[T]]) -> T:
    async def run() -> T:
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        transport = HttpTransport("edge-a", URL + "/", client=client)
        try:
            return await main(transport)
        finally:
            await transport.aclose()

    return run_async(run)


def digits_batch(x: np.ndarray) -> Batch:
    return Batch("digits", (Tensor("input", np.asarray(x, dtype=np.float32)),), len(x))


def infer(x: np.ndarray, timeout_s: float = 5.0) -> Callable[[HttpTransport], Awaitable[Reply]]:
    async def main(transport: HttpTransport) -> Reply:
        return await transport.infer(digits_batch(x), timeout_s)

    return main


async def probe(transport: HttpTransport) -> None:
    await transport.probe(1.0)


def test_infer_returns_the_workers_labels_and_timing(
    worker: EdgeWorker, model: OnnxModel, data: Split
) -> None:
    x, y = data.x_test[:64], data.y_test[:64]
    reply = over_edge(worker, infer(x))
    want_probabilities, want_labels = model.predict(x)
    assert np.array_equal(reply.output("label"), want_labels)
    assert reply.probabilities.dtype == np.float32
    assert reply.probabilities.shape == (64, 10)
    assert np.allclose(reply.probabilities, want_probabilities)
    assert (reply.output("label") == y).mean() >= 0.9
    assert reply.model_version == model.version
    assert reply.batch_rows == 64
    assert reply.server_ms > 0, "compute time comes from Server-Timing"
    assert reply.queue_ms >= 0
    assert worker.served == 1


def test_probe_passes_on_a_ready_worker(worker: EdgeWorker) -> None:
    over_edge(worker, probe)


def test_a_full_admission_queue_is_unavailable_with_retry_after(
    model: OnnxModel, data: Split
) -> None:
    gate = threading.Event()

    class Busy:
        name, version, signature = model.name, model.version, model.signature

        def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            assert gate.wait(timeout=30), "the test never released the model"
            return model.run(inputs)

    worker = EdgeWorker(Busy(), concurrency=1, max_queue=0)  # type: ignore[arg-type]
    x = data.x_test[:1]

    async def main(transport: HttpTransport) -> tuple[Reply, TargetUnavailable]:
        first = asyncio.create_task(transport.infer(digits_batch(x), 5.0))
        try:
            while worker.admission.running == 0:
                await asyncio.sleep(0.001)
            with pytest.raises(TargetUnavailable) as caught:
                await transport.infer(digits_batch(x), 5.0)
        finally:
            gate.set()
        return await first, caught.value

    try:
        reply, error = over_edge(worker, main)
    finally:
        gate.set()
        worker.close()
    assert reply.output("label").shape == (1,)
    assert error.retry_after_s == 1.0
    assert error.retryable
    assert "503" in error.reason


@pytest.mark.parametrize(
    "x",
    [np.full((2, 64), 99.0, np.float32), np.zeros((65, 64), np.float32)],
    ids=["pixels-out-of-range", "batch-over-the-worker-limit"],
)
def test_a_4xx_from_the_worker_is_rejected_not_retryable(worker: EdgeWorker, x: np.ndarray) -> None:
    with pytest.raises(TargetRejected) as caught:
        over_edge(worker, infer(x))
    assert "HTTP 400" in caught.value.reason
    assert not caught.value.retryable
    assert caught.value.target == "edge-a"


@pytest.mark.parametrize(
    "error",
    [httpx.ConnectError("refused"), httpx.ReadError("reset"), httpx.RemoteProtocolError("eof")],
    ids=["connect", "read", "protocol"],
)
def test_connection_failures_are_unavailable(error: httpx.TransportError) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    with pytest.raises(TargetUnavailable) as caught:
        over_mock(handler, infer(np.zeros((1, 64), np.float32)))
    assert caught.value.retry_after_s is None
    with pytest.raises(TargetUnavailable):
        over_mock(handler, probe)


@pytest.mark.parametrize(
    "error",
    [httpx.ConnectTimeout("slow"), httpx.ReadTimeout("slow"), httpx.PoolTimeout("busy")],
    ids=["connect", "read", "pool"],
)
def test_httpx_timeouts_are_target_timeouts(error: httpx.TimeoutException) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    with pytest.raises(TargetTimeout, match="250 ms"):
        over_mock(handler, infer(np.zeros((1, 64), np.float32), timeout_s=0.25))


def test_each_call_is_bounded_by_its_own_timeout() -> None:
    seen: list[dict[str, float]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(200, json={"ready": True})

    async def main(transport: HttpTransport) -> None:
        await transport.probe(0.2)
        await transport.probe(0.0)

    over_mock(handler, main)
    assert seen[0] == {"connect": 0.2, "read": 0.2, "write": 0.2, "pool": 0.2}
    assert seen[1]["read"] > 0, "a spent budget still gets a finite, positive timeout"


def reply_for(request: httpx.Request, headers: dict[str, str] | None = None) -> httpx.Response:
    decoded = decode_request(request.content, dict(request.headers))
    rows = decoded.inputs[0].data.shape[0]
    response = InferResponse(
        "digits", output_tensors(np.full((rows, 10), 0.1, np.float32), np.zeros(rows)), "9"
    )
    body, wire = encode_response(response, frozenset({"probabilities", "label"}))
    return httpx.Response(200, content=body, headers={**wire, **(headers or {})})


@pytest.mark.parametrize(
    ("status", "retry_after", "want"),
    [(503, "2.5", 2.5), (429, "7", 7.0), (503, None, None),
     (503, "Wed, 21 Oct 2015 07:28:00 GMT", None), (500, None, None), (502, "1", 1.0)],
)
def test_overload_and_server_errors_are_unavailable(
    status: int, retry_after: str | None, want: float | None
) -> None:
    headers = {} if retry_after is None else {"retry-after": retry_after}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": "busy"}, headers=headers)

    with pytest.raises(TargetUnavailable) as caught:
        over_mock(handler, infer(np.zeros((1, 64), np.float32)))
    assert caught.value.retry_after_s == want
    assert f"HTTP {status}" in caught.value.reason


def test_a_4xx_probe_is_rejected() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": "no such path"})

    with pytest.raises(TargetRejected, match="404"):
        over_mock(handler, probe)


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, content=b"<html>ok</html>"),
        httpx.Response(200, json={"error": "model crashed"}),
        httpx.Response(200, json={"model_name": "digits", "outputs": []}),
    ],
    ids=["not-json", "error-body", "missing-outputs"],
)
def test_a_malformed_success_is_rejected(response: httpx.Response) -> None:
    with pytest.raises(TargetRejected, match="malformed response"):
        over_mock(lambda request: response, infer(np.zeros((1, 64), np.float32)))


def test_the_request_is_binary_oip_and_timing_is_optional() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return reply_for(request)

    x = np.arange(3 * 64, dtype=np.float32).reshape(3, 64) % 17
    reply = over_mock(handler, infer(x))
    request = sent[0]
    assert str(request.url) == "http://edge/v2/models/digits/infer"
    assert request.headers["content-type"] == "application/octet-stream"
    decoded = decode_request(request.content, dict(request.headers))
    assert np.array_equal(decoded.input("input").data, x)
    assert decoded.binary_output_default
    assert reply.model_version == "9"
    assert reply.server_ms == 0.0 and reply.queue_ms == 0.0
    assert reply.output("label").tolist() == [0, 0, 0]


def test_server_timing_is_parsed_from_any_server() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return reply_for(request, {"server-timing": "queue;dur=1.5, infer;dur=4.25, db;dur=9"})

    reply = over_mock(handler, infer(np.zeros((2, 64), np.float32)))
    assert reply.server_ms == 4.25
    assert reply.queue_ms == 1.5

"""An external OIP server that speaks JSON tensors only and names outputs its own way
(as MLServer's scikit-learn runtime does), against an httpx mock of its answers; the real
server is exercised in ``tests/integration/test_mlserver.py``."""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from edgeroute.config import ExternalTarget, StackConfig
from edgeroute.oip import Tensor
from edgeroute.signature import Batch, TensorSpec
from router.transport import HttpTransport, Reply, TargetRejected, conform
from tests.unit.fakes import run_async

SKLEARN_NAMES = {"probabilities": "predict_proba", "label": "predict"}


def sklearn_server(seen: list[dict[str, Any]], label_shape: str = "column") -> httpx.MockTransport:
    """Answers as MLServer's scikit-learn runtime: FP64 probabilities, INT64 labels as a
    column [N, 1], in JSON, only the outputs asked for."""

    def handler(request: httpx.Request) -> httpx.Response:
        document = json.loads(request.content)
        seen.append({"document": document, "content_type": request.headers["content-type"]})
        rows = document["inputs"][0]["shape"][0]
        x = np.asarray(document["inputs"][0]["data"], dtype=np.float64).reshape(rows, -1)
        proba = np.full((rows, 10), 0.05)
        proba[np.arange(rows), x[:, 0].astype(int)] = 0.55
        labels = x[:, 0].astype(np.int64)
        shape = [rows, 1] if label_shape == "column" else [rows, 2]
        data = labels.tolist() if label_shape == "column" else labels.tolist() * 2
        outputs = {"predict_proba": {"name": "predict_proba", "datatype": "FP64",
                                     "shape": [rows, 10], "data": proba.ravel().tolist()},
                   "predict": {"name": "predict", "datatype": "INT64", "shape": shape,
                               "data": data}}
        asked = [o["name"] for o in document.get("outputs", [{"name": "predict"}])]
        return httpx.Response(200, json={"model_name": "digits", "model_version": "v1",
                                         "outputs": [outputs[n] for n in asked]})

    return httpx.MockTransport(handler)


def call(transport: httpx.MockTransport, x: np.ndarray, **options: Any) -> Reply:
    async def run() -> Reply:
        target = HttpTransport("mlserver", "http://mlserver",
                               client=httpx.AsyncClient(transport=transport), **options)
        try:
            batch = Batch("digits", (Tensor("input", x),), len(x))
            return await target.infer(batch, 5.0)
        finally:
            await target.aclose()

    return run_async(run)


def digit_rows(labels: list[int]) -> np.ndarray:
    x = np.zeros((len(labels), 64), np.float32)
    x[:, 0] = labels
    return x


def test_json_server_with_its_own_output_names_answers_the_model_outputs() -> None:
    seen: list[dict[str, Any]] = []
    reply = call(sklearn_server(seen), digit_rows([3, 7, 0]), binary=False,
                 output_names=SKLEARN_NAMES)
    assert seen[0]["content_type"] == "application/json"
    sent = seen[0]["document"]
    assert "binary_data_output" not in sent.get("parameters", {})
    assert sent["inputs"][0]["data"][:1] == [3.0], "inputs travel as JSON numbers"
    assert [o["name"] for o in sent["outputs"]] == ["predict_proba", "predict"]
    assert [t.name for t in reply.outputs] == ["probabilities", "label"]
    assert reply.output("label").tolist() == [3, 7, 0]
    assert reply.output("label").dtype == np.int64
    assert reply.probabilities.dtype == np.float32
    assert reply.probabilities.shape == (3, 10)
    assert reply.probabilities.argmax(axis=1).tolist() == [3, 7, 0]
    assert reply.model_version == "v1"


def test_an_answer_that_cannot_be_read_as_the_signature_is_rejected() -> None:
    with pytest.raises(TargetRejected, match=r"output 'label' has shape \[2, 2\]"):
        call(sklearn_server([], label_shape="pair"), digit_rows([1, 2]), binary=False,
             output_names=SKLEARN_NAMES)


def test_without_the_name_map_the_server_outputs_are_missing() -> None:
    with pytest.raises(TargetRejected, match="no output 'probabilities'"):
        call(sklearn_server([]), digit_rows([1]), binary=False)


def test_output_names_must_name_model_outputs() -> None:
    with pytest.raises(ValueError, match="scores, not outputs of model 'digits'"):
        HttpTransport("mlserver", "http://mlserver", output_names={"scores": "predict_proba"})


def test_conform_converts_within_a_kind_and_refuses_across_kinds() -> None:
    spec = TensorSpec("label", "INT64", (-1,))
    assert conform(spec, np.array([[4], [5]], np.int32), 2).tolist() == [4, 5]
    with pytest.raises(ValueError, match="is float64, the model's is INT64"):
        conform(spec, np.array([4.0, 5.0]), 2)
    small = TensorSpec("code", "UINT8", (-1,))
    with pytest.raises(ValueError, match="the model's is UINT8"):
        conform(small, np.array([300], np.int64), 1)
    same = np.zeros((2, 10), np.float32)
    assert conform(TensorSpec("p", "FP32", (-1, 10)), same, 2) is same


def test_external_target_config_reads_the_documented_shape() -> None:
    config = StackConfig.model_validate({"external": [{
        "name": "mlserver", "url": "http://127.0.0.1:8080", "tier": "edge",
        "quality": "small", "binary": False, "output_names": SKLEARN_NAMES}]})
    target = config.external[0]
    assert (target.binary, target.output_names) == (False, SKLEARN_NAMES)
    assert ExternalTarget(name="triton", url="http://triton:8000").binary is True
    with pytest.raises(ValidationError, match="maps two outputs to one server output"):
        ExternalTarget(name="x", url="http://x", output_names={"probabilities": "predict",
                                                               "label": "predict"})

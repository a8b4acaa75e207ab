"""The OIP codec: round trips, wire compatibility with tritonclient, and 4xx on every bad body."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgeroute.oip import (
    BINARY_CONTENT,
    DATATYPES,
    HEADER_LENGTH,
    JSON_CONTENT,
    InferRequest,
    InferResponse,
    OIPError,
    Tensor,
    binary_set,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    error_body,
    select_outputs,
)

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_same_array(got: np.ndarray, want: np.ndarray, *, exact_nan: bool = True) -> None:
    """Same dtype (byte order aside), shape and bits; JSON may only lose NaN sign and payload."""
    assert got.dtype == want.dtype.newbyteorder("=")
    assert got.shape == want.shape
    want = want.astype(got.dtype)
    if exact_nan or want.dtype.kind != "f":
        assert got.tobytes() == want.tobytes()
        return
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert got[~nan].tobytes() == want[~nan].tobytes()


def assert_same_tensors(
    got: tuple[Tensor, ...], want: tuple[Tensor, ...], *, exact_nan: bool = True
) -> None:
    assert [t.name for t in got] == [t.name for t in want]
    for g, w in zip(got, want, strict=True):
        assert_same_array(g.data, w.data, exact_nan=exact_nan)


def header_length(headers: dict[str, str]) -> int | None:
    raw = headers.get(HEADER_LENGTH)
    return None if raw is None else int(raw)


def json_input(**fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]}
    entry.update(fields)
    return entry


def body_of(document: Any) -> bytes:
    return json.dumps(document).encode()


def binary_body(entries: list[dict[str, Any]], tail: bytes) -> tuple[bytes, dict[str, str]]:
    head = body_of({"inputs": entries})
    return head + tail, {"Inference-Header-Content-Length": str(len(head))}


def expect_4xx(body: bytes, headers: dict[str, str] | None = None) -> OIPError:
    with pytest.raises(OIPError) as caught:
        decode_request(body, headers or {})
    assert 400 <= caught.value.status < 500
    assert caught.value.message
    return caught.value


SAMPLE_ARRAYS = [
    np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    np.array([[1.5, -0.0], [np.inf, -np.inf]], dtype=np.float64),
    np.array([0.1, 65504.0, -2.0], dtype=np.float16),
    np.array([[True, False, True]]),
    np.array([0, 255, 7], dtype=np.uint8),
    np.array([2**64 - 1, 0], dtype=np.uint64),
    np.array([-(2**63), 2**63 - 1], dtype=np.int64),
    np.array([-128, 127], dtype=np.int8),
    np.array([-(2**15), 2**15 - 1], dtype=np.int16),
    np.array([-(2**31), 2**31 - 1], dtype=np.int32),
    np.array([0, 2**16 - 1], dtype=np.uint16),
    np.array([0, 2**32 - 1], dtype=np.uint32),
    np.array(3.25, dtype=np.float32),
    np.zeros((0,), dtype=np.float32),
    np.zeros((2, 0, 3), dtype=np.int64),
]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("array", SAMPLE_ARRAYS, ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_request_round_trip_keeps_every_dtype_and_shape(array: np.ndarray, binary: bool) -> None:
    request = InferRequest(
        inputs=(Tensor("a", array), Tensor("b", np.array([1, 2], dtype=np.int32))),
        id="req-7",
        parameters={"deadline_ms": 25, "quality": "high", "ratio": 0.5, "flag": False},
    )
    body, headers = encode_request(request, binary=binary)
    decoded = decode_request(body, headers)
    assert_same_tensors(decoded.inputs, request.inputs)
    assert decoded.id == "req-7"
    assert decoded.parameters == {"deadline_ms": 25, "quality": "high", "ratio": 0.5, "flag": False}
    assert decoded.outputs is None
    assert decoded.input("a").datatype == Tensor("a", array).datatype
    assert decoded.input("a").shape == list(array.shape)


def test_binary_request_carries_the_header_length_and_octet_stream() -> None:
    request = InferRequest(inputs=(Tensor("x", np.ones((2, 2), dtype=np.float32)),))
    body, headers = encode_request(request, binary=True)
    length = header_length(headers)
    assert headers["content-type"] == BINARY_CONTENT
    assert length is not None
    assert body[length:] == np.ones((2, 2), dtype="<f4").tobytes()
    assert json.loads(body[:length])["inputs"][0]["parameters"] == {"binary_data_size": 16}


def test_json_request_is_plain_json() -> None:
    request = InferRequest(inputs=(Tensor("x", np.array([[1, 2], [3, 4]], dtype=np.int16)),))
    body, headers = encode_request(request, binary=False)
    assert headers == {"content-type": JSON_CONTENT}
    entry = json.loads(body)["inputs"][0]
    assert entry == {"name": "x", "datatype": "INT16", "shape": [2, 2], "data": [1, 2, 3, 4]}


def test_request_round_trip_keeps_requested_outputs_and_binary_choices() -> None:
    request = InferRequest(
        inputs=(Tensor("x", np.zeros(3, dtype=np.float32)),),
        outputs=("label", "probabilities"),
        binary_outputs=frozenset({"probabilities"}),
    )
    decoded = decode_request(*encode_request(request))
    assert decoded.outputs == ("label", "probabilities")
    assert decoded.binary_outputs == frozenset({"probabilities"})
    assert decoded.wants_binary("probabilities")
    assert not decoded.wants_binary("label")


def test_request_round_trip_keeps_binary_output_default() -> None:
    request = InferRequest(
        inputs=(Tensor("x", np.zeros(3, dtype=np.float32)),), binary_output_default=True
    )
    decoded = decode_request(*encode_request(request, binary=False))
    assert decoded.outputs is None
    assert decoded.binary_output_default
    assert decoded.wants_binary("anything")


def test_non_contiguous_and_big_endian_inputs_encode_their_values() -> None:
    transposed = np.arange(6, dtype=np.float32).reshape(2, 3).T
    big_endian = np.array([1, -2, 300], dtype=">i4")
    request = InferRequest(inputs=(Tensor("t", transposed), Tensor("b", big_endian)))
    for binary in (True, False):
        decoded = decode_request(*encode_request(request, binary=binary))
        np.testing.assert_array_equal(decoded.input("t").data, transposed)
        assert decoded.input("b").datatype == "INT32"
        np.testing.assert_array_equal(decoded.input("b").data, [1, -2, 300])


def test_nested_json_data_equals_flat_json_data() -> None:
    flat = json_input(datatype="INT32", shape=[2, 3], data=[1, 2, 3, 4, 5, 6])
    nested = json_input(datatype="INT32", shape=[2, 3], data=[[1, 2, 3], [4, 5, 6]])
    want = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int32)
    for entry in (flat, nested):
        tensor = decode_request(body_of({"inputs": [entry]}), {}).input("x")
        assert_same_array(tensor.data, want)


def test_json_fp_data_accepts_integers_and_infinities() -> None:
    body = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[3],"data":[1,-Infinity,NaN]}]}'
    data = decode_request(body, {}).input("x").data
    assert data.dtype == np.float32
    assert data[0] == 1.0
    assert data[1] == -np.inf
    assert np.isnan(data[2])


def test_header_names_are_case_insensitive() -> None:
    body, headers = encode_request(InferRequest(inputs=(Tensor("x", np.ones(2, np.float32)),)))
    shouted = {"INFERENCE-HEADER-CONTENT-LENGTH": headers[HEADER_LENGTH]}
    np.testing.assert_array_equal(decode_request(body, shouted).input("x").data, [1, 1])


def test_response_round_trip_mixes_binary_and_json_outputs() -> None:
    response = InferResponse(
        model_name="digits",
        model_version="3",
        id="r1",
        parameters={"served_by": "edge", "latency_ms": 4.5},
        outputs=(
            Tensor("probabilities", np.random.default_rng(0).random((2, 10), dtype=np.float32)),
            Tensor("label", np.array([3, 9], dtype=np.int64)),
            Tensor("mask", np.array([[True], [False]])),
            Tensor("empty", np.zeros((0, 4), dtype=np.float16)),
        ),
    )
    body, headers = encode_response(response, binary={"probabilities", "mask", "empty"})
    assert headers["content-type"] == BINARY_CONTENT
    document = json.loads(body[: header_length(headers)])
    assert [("data" in o) for o in document["outputs"]] == [False, True, False, False]
    decoded = decode_response(body, headers)
    assert (decoded.model_name, decoded.model_version, decoded.id) == ("digits", "3", "r1")
    assert decoded.parameters == {"served_by": "edge", "latency_ms": 4.5}
    assert_same_tensors(decoded.outputs, response.outputs)


def test_response_without_binary_outputs_is_plain_json() -> None:
    response = InferResponse("digits", (Tensor("label", np.array([1], dtype=np.int64)),))
    body, headers = encode_response(response)
    assert headers == {"content-type": JSON_CONTENT}
    assert json.loads(body) == {
        "model_name": "digits",
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [1], "data": [1]}],
    }
    decoded = decode_response(body, headers)
    assert decoded.model_version is None
    assert decoded.id is None
    assert decoded.parameters == {}


def test_decode_response_accepts_a_hand_written_triton_response() -> None:
    probabilities = np.array([[0.25, 0.75]], dtype="<f4")
    head = body_of(
        {
            "model_name": "digits",
            "model_version": 1,
            "outputs": [
                {"name": "label", "datatype": "INT64", "shape": [1], "data": [[1]]},
                {
                    "name": "probabilities",
                    "datatype": "FP32",
                    "shape": [1, 2],
                    "parameters": {"binary_data_size": 8},
                },
            ],
        }
    )
    decoded = decode_response(head + probabilities.tobytes(), {HEADER_LENGTH: str(len(head))})
    assert decoded.model_version == "1"
    assert_same_array(decoded.outputs[1].data, probabilities)
    np.testing.assert_array_equal(decoded.outputs[0].data, [1])


@pytest.mark.parametrize(
    ("body", "status_message"),
    [
        (b'{"error": "model is not ready"}', "model is not ready"),
        (b'{"outputs": []}', "model_name"),
        (b'{"model_name": "digits", "id": 5, "outputs": []}', "'id'"),
        (b"not json", "JSON"),
    ],
)
def test_decode_response_refuses_errors_and_malformed_bodies(
    body: bytes, status_message: str
) -> None:
    with pytest.raises(OIPError, match=status_message) as caught:
        decode_response(body, {})
    assert 400 <= caught.value.status < 500


def test_select_outputs_follows_the_request_order_and_refuses_unknown_names() -> None:
    outputs = (Tensor("a", np.zeros(1)), Tensor("b", np.ones(1)))
    everything = InferRequest(inputs=outputs[:1])
    assert select_outputs(everything, outputs) == outputs
    reordered = InferRequest(inputs=outputs[:1], outputs=("b", "a"))
    assert [t.name for t in select_outputs(reordered, outputs)] == ["b", "a"]
    unknown = InferRequest(inputs=outputs[:1], outputs=("a", "zz"))
    with pytest.raises(OIPError, match="zz") as caught:
        select_outputs(unknown, outputs)
    assert caught.value.status == 400


def test_binary_set_names_only_outputs_that_want_binary() -> None:
    outputs = (Tensor("a", np.zeros(1)), Tensor("b", np.ones(1)))
    assert binary_set(InferRequest(inputs=outputs), outputs) == frozenset()
    every = InferRequest(inputs=outputs, binary_output_default=True)
    assert binary_set(every, outputs) == {"a", "b"}
    some = InferRequest(inputs=outputs, outputs=("a", "b"), binary_outputs=frozenset({"b"}))
    assert binary_set(some, outputs) == {"b"}


def test_unsupported_dtypes_are_refused_when_encoding() -> None:
    response = InferResponse("digits", (Tensor("c", np.array([1j])),))
    with pytest.raises(OIPError, match="unsupported dtype"):
        encode_response(response)


def test_error_body_is_the_json_error_object() -> None:
    assert json.loads(error_body('bad "shape"')) == {"error": 'bad "shape"'}


def test_missing_input_is_a_400() -> None:
    request = decode_request(body_of({"inputs": [json_input()]}), {})
    with pytest.raises(OIPError, match="missing input 'input'") as caught:
        request.input("input")
    assert caught.value.status == 400


# --- compatibility with tritonclient's own encoder and decoder -------------------------------


TRITON_ARRAYS: dict[str, np.ndarray] = {
    "FP32": np.arange(6, dtype=np.float32).reshape(2, 3) / 3,
    "FP64": np.array([1e300, -1e-300], dtype=np.float64),
    "FP16": np.array([[0.5, -1.0]], dtype=np.float16),
    "INT64": np.array([-(2**63), 2**63 - 1], dtype=np.int64),
    "UINT8": np.array([[0, 128, 255]], dtype=np.uint8),
    "INT8": np.array([-128, 127], dtype=np.int8),
    "UINT64": np.array([2**64 - 1], dtype=np.uint64),
    "BOOL": np.array([[True, False], [False, True]]),
}


def triton_request(
    arrays: dict[str, np.ndarray],
    *,
    binary: bool,
    outputs: list[Any] | None = None,
    request_id: str = "",
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    inputs = []
    for name, array in arrays.items():
        infer_input = triton.InferInput(
            name, list(array.shape), triton.np_to_triton_dtype(array.dtype)
        )
        infer_input.set_data_from_numpy(array, binary_data=binary)
        inputs.append(infer_input)
    body, json_size = triton.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, request_id=request_id, parameters=parameters
    )
    headers = {"Content-Type": "application/octet-stream"}
    if json_size is not None:
        headers["Inference-Header-Content-Length"] = str(json_size)
    return body, headers


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_decodes_tritonclient_requests_exactly(binary: bool) -> None:
    body, headers = triton_request(
        TRITON_ARRAYS,
        binary=binary,
        request_id="abc-1",
        parameters={"deadline_ms": 40, "quality": "best"},
    )
    request = decode_request(body, headers)
    assert request.id == "abc-1"
    assert request.parameters["deadline_ms"] == 40
    assert request.parameters["quality"] == "best"
    assert [t.name for t in request.inputs] == list(TRITON_ARRAYS)
    for name, array in TRITON_ARRAYS.items():
        assert request.input(name).datatype == name
        assert_same_array(request.input(name).data, array)


def test_tritonclient_without_outputs_asks_for_every_output_in_binary() -> None:
    body, headers = triton_request({"FP32": TRITON_ARRAYS["FP32"]}, binary=True)
    request = decode_request(body, headers)
    assert request.id is None
    assert request.outputs is None
    assert request.binary_output_default
    produced = (
        Tensor("probabilities", np.zeros((2, 10), np.float32)),
        Tensor("label", np.zeros(2)),
    )
    assert binary_set(request, select_outputs(request, produced)) == {"probabilities", "label"}


def test_tritonclient_requested_outputs_choose_binary_per_output() -> None:
    outputs = [
        triton.InferRequestedOutput("label", binary_data=False),
        triton.InferRequestedOutput("probabilities", binary_data=True),
    ]
    body, headers = triton_request({"FP32": TRITON_ARRAYS["FP32"]}, binary=False, outputs=outputs)
    request = decode_request(body, headers)
    assert request.outputs == ("label", "probabilities")
    assert request.binary_outputs == frozenset({"probabilities"})
    assert not request.binary_output_default
    assert request.wants_binary("probabilities")
    assert not request.wants_binary("label")


@pytest.mark.parametrize("label_binary", [True, False])
def test_tritonclient_parses_our_responses(label_binary: bool) -> None:
    outputs = [
        triton.InferRequestedOutput("probabilities", binary_data=True),
        triton.InferRequestedOutput("label", binary_data=label_binary),
    ]
    body, headers = triton_request(
        {"input": np.full((2, 64), 3.0, np.float32)}, binary=True, outputs=outputs
    )
    request = decode_request(body, headers)
    probabilities = np.random.default_rng(1).random((2, 10), dtype=np.float32)
    labels = np.array([4, 7], dtype=np.int64)
    produced = (Tensor("label", labels), Tensor("probabilities", probabilities))
    chosen = select_outputs(request, produced)
    response = InferResponse(
        model_name="digits",
        model_version="1",
        id=request.id,
        parameters={"served_by": "cloud", "queue_ms": 1.5},
        outputs=chosen,
    )
    body, headers = encode_response(response, binary_set(request, chosen))
    result = triton.InferenceServerClient.parse_response_body(
        body, header_length=header_length(headers)
    )
    assert_same_array(result.as_numpy("probabilities"), probabilities)
    assert_same_array(result.as_numpy("label"), labels)
    reply = result.get_response()
    assert reply["parameters"] == {"served_by": "cloud", "queue_ms": 1.5}
    assert reply["model_name"] == "digits"
    assert [o["name"] for o in reply["outputs"]] == ["probabilities", "label"]
    assert ("data" in reply["outputs"][1]) is not label_binary


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_parses_every_dtype_we_send(binary: bool) -> None:
    outputs = tuple(Tensor(name, array) for name, array in TRITON_ARRAYS.items())
    outputs += (Tensor("empty", np.zeros((0, 3), np.float32)),)
    names = {t.name for t in outputs} if binary else set()
    body, headers = encode_response(InferResponse("digits", outputs), names)
    result = triton.InferenceServerClient.parse_response_body(
        body, header_length=header_length(headers)
    )
    for tensor in outputs:
        assert_same_array(result.as_numpy(tensor.name), tensor.data)


# --- malformed requests: always an OIPError with a 4xx ----------------------------------------


BAD_JSON_BODIES = {
    "empty body": b"",
    "truncated": b'{"inputs": [',
    "not json": b"hello",
    "mismatched brackets": b"{]",
    "trailing garbage": b'{"inputs": []} x',
    "invalid utf-8": b'{"inputs": "\xff\xfe\xfa"}',
    "invalid utf-8 in a name": b'{"inputs": [{"name": "\xc3\x28"}]}',
    "deeply nested": b"[" * 100_000,
    "deeply nested inside an object": b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "huge integer literal": b'{"id": ' + b"9" * 5000 + b"}",
    "number beyond double": b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1],'
    b' "data": [1e400]}]}',
    "array": b"[]",
    "string": b'"inputs"',
    "number": b"1",
    "null": b"null",
}


@pytest.mark.parametrize("body", BAD_JSON_BODIES.values(), ids=BAD_JSON_BODIES.keys())
def test_bodies_that_are_not_a_json_object_are_a_400(body: bytes) -> None:
    expect_4xx(body)


BAD_DOCUMENTS: dict[str, Any] = {
    "no inputs": {},
    "null inputs": {"inputs": None},
    "empty inputs": {"inputs": []},
    "inputs object": {"inputs": {"name": "x"}},
    "input not object": {"inputs": [1]},
    "id not string": {"id": 5, "inputs": [json_input()]},
    "parameters list": {"parameters": [], "inputs": [json_input()]},
    "input parameters string": {"inputs": [json_input(parameters="x")]},
    "missing name": {"inputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]},
    "empty name": {"inputs": [json_input(name="")]},
    "name not string": {"inputs": [json_input(name=7)]},
    "duplicate input names": {"inputs": [json_input(), json_input()]},
    "unknown datatype": {"inputs": [json_input(datatype="FP128")]},
    "BYTES unsupported": {"inputs": [json_input(datatype="BYTES", data=["a", "b"])]},
    "lowercase datatype": {"inputs": [json_input(datatype="fp32")]},
    "datatype not string": {"inputs": [json_input(datatype=3)]},
    "missing datatype": {"inputs": [{"name": "x", "shape": [1], "data": [1]}]},
    "shape missing": {"inputs": [{"name": "x", "datatype": "FP32", "data": [1]}]},
    "shape string": {"inputs": [json_input(shape="2")]},
    "shape int": {"inputs": [json_input(shape=2)]},
    "shape negative": {"inputs": [json_input(shape=[-1, 2], data=[1, 2])]},
    "shape bool": {"inputs": [json_input(shape=[True, 2], data=[1, 2])]},
    "shape float": {"inputs": [json_input(shape=[2.0])]},
    "shape nested": {"inputs": [json_input(shape=[[2]])]},
    "shape too many elements": {"inputs": [json_input(shape=[1 << 20, 1 << 20])]},
    "shape too many dims": {"inputs": [json_input(shape=[1] * 100, data=[1])]},
    "zero-size shape spanning huge dims": {"inputs": [json_input(shape=[0, 2**70], data=[])]},
    "data missing": {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]},
    "data scalar": {"inputs": [json_input(shape=[1], data=1.0)]},
    "data object": {"inputs": [json_input(shape=[1], data={"0": 1.0})]},
    "too few values": {"inputs": [json_input(shape=[3], data=[1, 2])]},
    "too many values": {"inputs": [json_input(shape=[1], data=[1, 2])]},
    "nested count mismatch": {"inputs": [json_input(shape=[2, 2], data=[[1, 2], [3, 4], [5, 6]])]},
    "ragged": {"inputs": [json_input(shape=[3], data=[[1, 2], [3]])]},
    "ragged deeper": {"inputs": [json_input(shape=[4], data=[[1, 2], [3, [4]]])]},
    "string in data": {"inputs": [json_input(data=["1", 2])]},
    "null in data": {"inputs": [json_input(data=[None, 2])]},
    "object in data": {"inputs": [json_input(data=[{}, 2])]},
    "bool in FP32": {"inputs": [json_input(data=[True, 2.0])]},
    "bool in INT32": {"inputs": [json_input(datatype="INT32", data=[1, False])]},
    "int in BOOL": {"inputs": [json_input(datatype="BOOL", data=[1, 0])]},
    "float in INT64": {"inputs": [json_input(datatype="INT64", data=[1.5, 2])]},
    "integral float in INT64": {"inputs": [json_input(datatype="INT64", data=[1.0, 2])]},
    "1e300 into FP32": {"inputs": [json_input(data=[1e300, 1.0])]},
    "1e5 into FP16": {"inputs": [json_input(datatype="FP16", data=[1e5, 1.0])]},
    "huge int into FP64": {"inputs": [json_input(datatype="FP64", data=[10**400, 1])]},
    "2**70 into INT64": {"inputs": [json_input(datatype="INT64", data=[2**70, 1])]},
    "2**63 into INT64": {"inputs": [json_input(datatype="INT64", data=[2**63, 1])]},
    "2**64 into UINT64": {"inputs": [json_input(datatype="UINT64", data=[2**64, 1])]},
    "-1 into UINT8": {"inputs": [json_input(datatype="UINT8", data=[-1, 1])]},
    "256 into UINT8": {"inputs": [json_input(datatype="UINT8", data=[256, 1])]},
    "-129 into INT8": {"inputs": [json_input(datatype="INT8", data=[-129, 1])]},
    "binary size without bytes": {
        "inputs": [json_input(data=None, parameters={"binary_data_size": 8})]
    },
    "binary size negative": {"inputs": [json_input(parameters={"binary_data_size": -8})]},
    "binary size bool": {"inputs": [json_input(parameters={"binary_data_size": True})]},
    "binary size float": {"inputs": [json_input(parameters={"binary_data_size": 8.0})]},
    "binary size string": {"inputs": [json_input(parameters={"binary_data_size": "8"})]},
    "outputs string": {"inputs": [json_input()], "outputs": "label"},
    "outputs object": {"inputs": [json_input()], "outputs": {"name": "label"}},
    "outputs of strings": {"inputs": [json_input()], "outputs": ["label"]},
    "output without name": {"inputs": [json_input()], "outputs": [{}]},
    "output name not string": {"inputs": [json_input()], "outputs": [{"name": 1}]},
    "output name empty": {"inputs": [json_input()], "outputs": [{"name": ""}]},
    "duplicate output names": {
        "inputs": [json_input()],
        "outputs": [{"name": "label"}, {"name": "label"}],
    },
    "output parameters list": {
        "inputs": [json_input()],
        "outputs": [{"name": "label", "parameters": []}],
    },
    "binary_data string": {
        "inputs": [json_input()],
        "outputs": [{"name": "label", "parameters": {"binary_data": "true"}}],
    },
    "binary_data int": {
        "inputs": [json_input()],
        "outputs": [{"name": "label", "parameters": {"binary_data": 1}}],
    },
    "binary_data null": {
        "inputs": [json_input()],
        "outputs": [{"name": "label", "parameters": {"binary_data": None}}],
    },
    "binary_data_output string": {
        "parameters": {"binary_data_output": "yes"},
        "inputs": [json_input()],
    },
}


@pytest.mark.parametrize("document", BAD_DOCUMENTS.values(), ids=BAD_DOCUMENTS.keys())
def test_malformed_json_requests_are_a_400(document: Any) -> None:
    expect_4xx(body_of(document))


def test_error_messages_say_what_is_wrong() -> None:
    assert "appears twice" in expect_4xx(body_of(BAD_DOCUMENTS["duplicate input names"])).message
    assert "FP32" in expect_4xx(body_of(BAD_DOCUMENTS["1e300 into FP32"])).message
    assert "INT64" in expect_4xx(body_of(BAD_DOCUMENTS["2**70 into INT64"])).message
    assert "do not fill" in expect_4xx(body_of(BAD_DOCUMENTS["too few values"])).message
    assert "shape" in expect_4xx(body_of(BAD_DOCUMENTS["shape negative"])).message
    assert "FP128" in expect_4xx(body_of(BAD_DOCUMENTS["unknown datatype"])).message


FOUR_FLOATS = np.arange(4, dtype="<f4").tobytes()


def fp32_binary(size: int, shape: list[int] | None = None, name: str = "x") -> dict[str, Any]:
    return {
        "name": name,
        "datatype": "FP32",
        "shape": shape or [4],
        "parameters": {"binary_data_size": size},
    }


BAD_BINARY: dict[str, tuple[list[dict[str, Any]], bytes]] = {
    "size larger than the bytes sent": ([fp32_binary(20, [5])], FOUR_FLOATS),
    "size does not match the shape": ([fp32_binary(16, [3])], FOUR_FLOATS),
    "size not a multiple of the itemsize": ([fp32_binary(15, [4])], FOUR_FLOATS[:15]),
    "trailing bytes": ([fp32_binary(16)], FOUR_FLOATS + b"\0"),
    "bytes but no binary tensor": ([json_input()], FOUR_FLOATS),
    "second tensor short": ([fp32_binary(16), fp32_binary(16, name="y")], FOUR_FLOATS),
    "duplicate binary names": ([fp32_binary(8, [2]), fp32_binary(8, [2])], FOUR_FLOATS),
    "zero-size shape spanning huge dims": ([fp32_binary(0, [0, 2**70])], b""),
    "too many dims": ([fp32_binary(4, [1] * 100)], FOUR_FLOATS[:4]),
}


@pytest.mark.parametrize(("entries", "tail"), BAD_BINARY.values(), ids=BAD_BINARY.keys())
def test_malformed_binary_requests_are_a_400(entries: list[dict[str, Any]], tail: bytes) -> None:
    expect_4xx(*binary_body(entries, tail))


def test_binary_bytes_without_a_header_length_are_a_400() -> None:
    body, _ = binary_body([fp32_binary(16)], FOUR_FLOATS)
    expect_4xx(body)


@pytest.mark.parametrize(
    "value",
    ["abc", "", "1.5", "0", "-3", "10000", "0x10", "9" * 5000],
    ids=["word", "empty", "float", "zero", "negative", "past the body", "hex", "5000 digits"],
)
def test_bad_header_lengths_are_a_400(value: str) -> None:
    body, _ = binary_body([fp32_binary(16)], FOUR_FLOATS)
    expect_4xx(body, {"Inference-Header-Content-Length": value})


def test_header_length_cutting_the_json_short_is_a_400() -> None:
    body, headers = binary_body([fp32_binary(16)], FOUR_FLOATS)
    expect_4xx(body, {HEADER_LENGTH: str(int(headers["Inference-Header-Content-Length"]) - 1)})


def test_header_length_covering_the_binary_tail_is_a_400() -> None:
    body, _ = binary_body([fp32_binary(16)], FOUR_FLOATS)
    expect_4xx(body, {HEADER_LENGTH: str(len(body))})


def test_zero_size_binary_tensor_needs_no_bytes() -> None:
    body, headers = binary_body([fp32_binary(0, [0, 4])], b"")
    assert decode_request(body, headers).input("x").shape == [0, 4]


def test_binary_tensors_take_their_bytes_in_order() -> None:
    first = np.array([1, 2], dtype="<i8")
    second = np.array([[0.5]], dtype="<f8")
    entries = [
        {"name": "a", "datatype": "INT64", "shape": [2], "parameters": {"binary_data_size": 16}},
        json_input(name="j", shape=[1], data=[9]),
        {"name": "b", "datatype": "FP64", "shape": [1, 1], "parameters": {"binary_data_size": 8}},
    ]
    request = decode_request(*binary_body(entries, first.tobytes() + second.tobytes()))
    assert_same_array(request.input("a").data, first)
    assert_same_array(request.input("b").data, second)
    assert_same_array(request.input("j").data, np.array([9], dtype=np.float32))


# --- property-based tests ----------------------------------------------------------------------

HEADER_KEYS = st.sampled_from(
    ["Inference-Header-Content-Length", HEADER_LENGTH, "Content-Type", "X-Other"]
) | st.text(max_size=20)
HEADER_VALUES = st.text(max_size=30) | st.integers(-10, 500).map(str)


@FUZZ
@given(body=st.binary(max_size=400), headers=st.dictionaries(HEADER_KEYS, HEADER_VALUES))
def test_arbitrary_bytes_only_ever_raise_oip_errors(body: bytes, headers: dict[str, str]) -> None:
    for decode in (decode_request, decode_response):
        try:
            decode(body, headers)
        except OIPError as exc:
            assert 400 <= exc.status < 500


def valid_binary_body() -> st.SearchStrategy[tuple[bytes, dict[str, str]]]:
    return st.builds(
        lambda arrays: encode_request(
            InferRequest(inputs=tuple(Tensor(f"in{i}", a) for i, a in enumerate(arrays)))
        ),
        st.lists(
            hnp.arrays(st.sampled_from(list(DATATYPES.values())), hnp.array_shapes(max_side=3)),
            min_size=1,
            max_size=3,
        ),
    )


@FUZZ
@given(
    encoded=valid_binary_body(),
    cut=st.integers(0, 1000),
    junk=st.binary(max_size=8),
    shift=st.integers(-8, 8),
    flip=st.integers(0, 1000),
)
def test_mutated_binary_requests_only_ever_raise_oip_errors(
    encoded: tuple[bytes, dict[str, str]], cut: int, junk: bytes, shift: int, flip: int
) -> None:
    body, headers = encoded
    length = int(headers.get(HEADER_LENGTH, len(body)))
    flipped = bytearray(body)
    flipped[flip % len(body)] ^= 0xFF
    variants = [
        (body[: cut % (len(body) + 1)], headers),
        (body + junk, headers),
        (body, {HEADER_LENGTH: str(length + shift)}),
        (bytes(flipped), headers),
    ]
    for variant, variant_headers in variants:
        try:
            decode_request(variant, variant_headers)
        except OIPError as exc:
            assert 400 <= exc.status < 500


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**62, max_value=2**80)
    | st.floats()
    | st.text(max_size=10)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


def junk_or(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return valid | JSON_VALUES


NEAR_VALID_INPUT = st.fixed_dictionaries(
    {},
    optional={
        "name": junk_or(st.sampled_from(["input", "x", ""])),
        "datatype": junk_or(st.sampled_from([*DATATYPES, "BYTES", "fp32"])),
        "shape": junk_or(
            st.lists(st.integers(-2, 4) | st.sampled_from([2**31, 2**63, 2**70]), max_size=3)
        ),
        "data": junk_or(
            st.lists(st.integers(-300, 300) | st.floats(width=32) | st.booleans(), max_size=12)
        ),
        "parameters": junk_or(
            st.fixed_dictionaries({"binary_data_size": junk_or(st.integers(-4, 64))})
        ),
    },
)
NEAR_VALID_OUTPUT = st.fixed_dictionaries(
    {},
    optional={
        "name": junk_or(st.sampled_from(["label", "probabilities", ""])),
        "parameters": junk_or(st.fixed_dictionaries({"binary_data": junk_or(st.booleans())})),
    },
)
NEAR_VALID_REQUEST = st.fixed_dictionaries(
    {},
    optional={
        "id": junk_or(st.text(max_size=8)),
        "parameters": junk_or(
            st.fixed_dictionaries(
                {"binary_data_output": junk_or(st.booleans())},
                optional={"deadline_ms": JSON_SCALARS},
            )
        ),
        "inputs": junk_or(st.lists(junk_or(NEAR_VALID_INPUT), max_size=3)),
        "outputs": junk_or(st.lists(junk_or(NEAR_VALID_OUTPUT), max_size=3)),
    },
)


@FUZZ
@given(document=JSON_VALUES | NEAR_VALID_REQUEST, tail=st.binary(max_size=64))
def test_arbitrary_json_documents_only_ever_raise_oip_errors(document: Any, tail: bytes) -> None:
    head = json.dumps(document).encode()
    for body, headers in ((head, {}), (head + tail, {HEADER_LENGTH: str(len(head))})):
        try:
            request = decode_request(body, headers)
        except OIPError as exc:
            assert 400 <= exc.status < 500
        else:
            assert request.inputs
            assert all(isinstance(t.data, np.ndarray) for t in request.inputs)


PARAMETER_VALUES = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10)
)
PARAMETERS = st.dictionaries(
    st.text(max_size=10).filter(lambda k: k != "binary_data_output"), PARAMETER_VALUES, max_size=4
)
ARRAYS = hnp.arrays(
    st.sampled_from(list(DATATYPES.values())),
    hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
)
NAMES = st.text(min_size=1, max_size=8)


@st.composite
def requests(draw: st.DrawFn) -> InferRequest:
    names = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
    outputs = draw(st.none() | st.lists(NAMES, max_size=3, unique=True).map(tuple))
    return InferRequest(
        inputs=tuple(Tensor(name, draw(ARRAYS)) for name in names),
        id=draw(st.none() | st.text(max_size=8)),
        parameters=draw(PARAMETERS),
        outputs=outputs,
        binary_outputs=frozenset(draw(st.sets(st.sampled_from(outputs))))
        if outputs
        else frozenset(),
        binary_output_default=outputs is None and draw(st.booleans()),
    )


@FUZZ
@given(request=requests(), binary=st.booleans())
def test_valid_requests_round_trip_exactly(request: InferRequest, binary: bool) -> None:
    decoded = decode_request(*encode_request(request, binary=binary))
    assert_same_tensors(decoded.inputs, request.inputs, exact_nan=binary)
    assert decoded.id == request.id
    expected_parameters = dict(request.parameters)
    if request.binary_output_default:
        expected_parameters["binary_data_output"] = True
    assert decoded.parameters == expected_parameters
    assert decoded.outputs == request.outputs
    assert decoded.binary_outputs == request.binary_outputs
    assert decoded.binary_output_default == request.binary_output_default


@FUZZ
@given(
    outputs=st.lists(
        st.tuples(NAMES, ARRAYS, st.booleans()), min_size=1, max_size=3, unique_by=lambda o: o[0]
    ),
    version=st.none() | st.text(max_size=4),
    response_id=st.none() | st.text(max_size=8),
    parameters=PARAMETERS,
)
def test_valid_responses_round_trip_exactly(
    outputs: list[tuple[str, np.ndarray, bool]],
    version: str | None,
    response_id: str | None,
    parameters: dict[str, Any],
) -> None:
    response = InferResponse(
        model_name="digits",
        outputs=tuple(Tensor(name, array) for name, array, _ in outputs),
        model_version=version,
        id=response_id,
        parameters=parameters,
    )
    binary = {name for name, _, as_binary in outputs if as_binary}
    decoded = decode_response(*encode_response(response, binary))
    for got, (name, array, as_binary) in zip(decoded.outputs, outputs, strict=True):
        assert got.name == name
        assert_same_array(got.data, array, exact_nan=as_binary)
    assert (decoded.model_version, decoded.id) == (version, response_id)
    assert decoded.parameters == parameters

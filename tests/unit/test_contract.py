"""The digits contract: what the edge and the cloud both accept, and what they refuse with a 4xx."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeroute.contract import (
    CLASSES,
    DEFAULT_MAX_BATCH,
    FEATURES,
    INPUT_NAME,
    MODEL_NAME,
    OUTPUT_LABEL,
    OUTPUT_PROBABILITIES,
    PIXEL_MAX,
    check_model_name,
    input_batch,
    model_metadata,
    output_tensors,
)
from edgeroute.oip import (
    InferRequest,
    InferResponse,
    OIPError,
    Tensor,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)


def request_of(*tensors: Tensor) -> InferRequest:
    return InferRequest(inputs=tensors)


def pixels(rows: int, value: float = 8.0, dtype: type = np.float32) -> np.ndarray:
    return np.full((rows, FEATURES), value, dtype=dtype)


def refused(request: InferRequest, max_batch: int = DEFAULT_MAX_BATCH) -> OIPError:
    with pytest.raises(OIPError) as caught:
        input_batch(request, max_batch)
    assert caught.value.status == 400
    return caught.value


def test_the_served_model_name_passes() -> None:
    check_model_name(MODEL_NAME)


@pytest.mark.parametrize("name", ["", "Digits", "digits ", "resnet50"])
def test_unknown_models_are_a_404(name: str) -> None:
    with pytest.raises(OIPError, match=MODEL_NAME) as caught:
        check_model_name(name)
    assert caught.value.status == 404


def test_a_valid_batch_comes_back_as_contiguous_float32() -> None:
    x = np.random.default_rng(0).uniform(0, PIXEL_MAX, (3, FEATURES)).astype(np.float32)
    batch = input_batch(request_of(Tensor(INPUT_NAME, x)))
    assert batch.dtype == np.float32
    assert batch.shape == (3, FEATURES)
    assert batch.flags.c_contiguous
    np.testing.assert_array_equal(batch, x)


def test_a_non_contiguous_or_big_endian_batch_is_made_contiguous_float32() -> None:
    x = np.arange(2 * FEATURES, dtype=np.float32).reshape(FEATURES, 2).T % PIXEL_MAX
    assert not x.flags.c_contiguous
    for data in (x, x.astype(">f4")):
        batch = input_batch(request_of(Tensor(INPUT_NAME, data)))
        assert batch.dtype == np.dtype(np.float32)
        assert batch.flags.c_contiguous
        np.testing.assert_array_equal(batch, x)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_a_decoded_wire_request_passes_the_contract(binary: bool) -> None:
    x = np.random.default_rng(1).integers(0, 17, (3, FEATURES)).astype(np.float32)
    wire = encode_request(request_of(Tensor(INPUT_NAME, x)), binary=binary)
    batch = input_batch(decode_request(*wire))
    assert batch.dtype == np.float32
    assert batch.flags.c_contiguous
    np.testing.assert_array_equal(batch, x)


def test_integer_json_pixels_are_accepted_as_fp32() -> None:
    document = {
        "inputs": [
            {"name": INPUT_NAME, "datatype": "FP32", "shape": [1, FEATURES], "data": [16] * 64}
        ]
    }
    batch = input_batch(decode_request(json.dumps(document).encode(), {}))
    np.testing.assert_array_equal(batch, pixels(1, 16.0))


@pytest.mark.parametrize("value", [0.0, PIXEL_MAX], ids=["zero", "sixteen"])
def test_the_pixel_range_is_inclusive(value: float) -> None:
    np.testing.assert_array_equal(
        input_batch(request_of(Tensor(INPUT_NAME, pixels(2, value)))), pixels(2, value)
    )


def test_batch_sizes_up_to_the_maximum_pass() -> None:
    assert input_batch(request_of(Tensor(INPUT_NAME, pixels(1))), max_batch=1).shape == (1, 64)
    assert input_batch(request_of(Tensor(INPUT_NAME, pixels(DEFAULT_MAX_BATCH)))).shape == (
        DEFAULT_MAX_BATCH,
        FEATURES,
    )


def test_a_wrong_input_name_is_a_400() -> None:
    assert "missing input 'input'" in refused(request_of(Tensor("pixels", pixels(1)))).message


def test_extra_inputs_are_a_400() -> None:
    request = request_of(Tensor(INPUT_NAME, pixels(1)), Tensor("extra", pixels(1)))
    assert "exactly one input" in refused(request).message


@pytest.mark.parametrize(
    "dtype", [np.float64, np.int64, np.float16, np.uint8], ids=lambda d: np.dtype(d).name
)
def test_a_wrong_datatype_is_a_400(dtype: type) -> None:
    assert "must be FP32" in refused(request_of(Tensor(INPUT_NAME, pixels(1, 1, dtype)))).message


@pytest.mark.parametrize(
    "shape", [[FEATURES], [1, FEATURES - 1], [1, FEATURES + 1], [1, FEATURES, 1], [FEATURES, 1]]
)
def test_a_wrong_shape_is_a_400(shape: list[int]) -> None:
    tensor = Tensor(INPUT_NAME, np.ones(shape, dtype=np.float32))
    assert "shape" in refused(request_of(tensor)).message


def test_an_empty_batch_is_a_400() -> None:
    assert "batch size" in refused(request_of(Tensor(INPUT_NAME, pixels(0)))).message


def test_a_batch_over_the_maximum_is_a_400() -> None:
    assert "batch size" in refused(request_of(Tensor(INPUT_NAME, pixels(5))), max_batch=4).message
    over_default = request_of(Tensor(INPUT_NAME, pixels(DEFAULT_MAX_BATCH + 1)))
    assert "batch size" in refused(over_default).message


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_pixels_are_a_400(bad: float) -> None:
    x = pixels(3)
    x[1, 7] = bad
    assert "NaN or infinite" in refused(request_of(Tensor(INPUT_NAME, x))).message


@pytest.mark.parametrize("bad", [-0.001, -16.0, 16.001, 255.0])
def test_pixels_outside_zero_to_sixteen_are_a_400(bad: float) -> None:
    x = pixels(3)
    x[2, 63] = bad
    assert "[0, 16]" in refused(request_of(Tensor(INPUT_NAME, x))).message


def test_output_tensors_carry_the_contract_names_and_dtypes() -> None:
    probabilities = np.full((2, CLASSES), 0.1, dtype=np.float64)
    labels = np.array([3, 8], dtype=np.int32)
    tensors = output_tensors(probabilities, labels)
    assert [t.name for t in tensors] == [OUTPUT_PROBABILITIES, OUTPUT_LABEL]
    assert [t.datatype for t in tensors] == ["FP32", "INT64"]
    assert [t.shape for t in tensors] == [[2, CLASSES], [2]]
    np.testing.assert_array_equal(tensors[1].data, [3, 8])


def test_output_tensors_survive_the_wire() -> None:
    tensors = output_tensors(np.eye(2, CLASSES, dtype=np.float32), np.array([0, 1]))
    response = InferResponse(MODEL_NAME, tensors)
    decoded = decode_response(*encode_response(response, {OUTPUT_PROBABILITIES}))
    np.testing.assert_array_equal(decoded.outputs[0].data, np.eye(2, CLASSES))
    np.testing.assert_array_equal(decoded.outputs[1].data, [0, 1])
    assert decoded.outputs[1].datatype == "INT64"


def test_model_metadata_describes_the_contract() -> None:
    metadata = model_metadata(["1", "2"])
    assert metadata == {
        "name": MODEL_NAME,
        "versions": ["1", "2"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, FEATURES]}],
        "outputs": [
            {"name": OUTPUT_PROBABILITIES, "datatype": "FP32", "shape": [-1, CLASSES]},
            {"name": OUTPUT_LABEL, "datatype": "INT64", "shape": [-1]},
        ],
    }
    assert json.loads(json.dumps(metadata)) == metadata
    assert model_metadata([], platform="python")["platform"] == "python"

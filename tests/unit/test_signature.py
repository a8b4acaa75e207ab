"""Signatures read from ONNX graphs, and the generic contract checked against them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeroute import contract
from edgeroute.models.runtime import OnnxModel
from edgeroute.oip import InferRequest, OIPError, Tensor
from edgeroute.signature import (
    Signature,
    TensorSpec,
    blank_batch,
    check_inputs,
    model_config,
    signature_from_onnx,
)
from tests.onnx_models import sensor_pair, typed_model


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return sensor_pair(tmp_path_factory.mktemp("sensor"))


@pytest.fixture(scope="module")
def typed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return typed_model(tmp_path_factory.mktemp("typed") / "typed.onnx")


def refused(request: InferRequest, signature: Signature, **kwargs: object) -> str:
    with pytest.raises(OIPError) as caught:
        check_inputs(request, signature, 8, **kwargs)  # type: ignore[arg-type]
    assert caught.value.status == 400
    return caught.value.message


def test_the_signature_comes_from_the_graph(pair: tuple[Path, Path]) -> None:
    signature = signature_from_onnx(pair[0], "sensor")
    assert signature.inputs == (TensorSpec("readings", "FP32", (-1, 13)),)
    assert signature.outputs == (TensorSpec("scores", "FP32", (-1, 3)),
                                 TensorSpec("label", "INT64", (-1,)))
    assert signature.batched
    assert signature.mismatches(signature_from_onnx(pair[1], "sensor")) == []


def test_the_bundled_digits_graph_has_the_contracts_signature(models: object) -> None:
    from edgeroute.models.store import ensure_models

    for path in (ensure_models().student, ensure_models().teacher):
        assert signature_from_onnx(path, "digits") == contract.SIGNATURE


def test_a_wrong_shape_names_the_expected_shape(pair: tuple[Path, Path]) -> None:
    signature = signature_from_onnx(pair[0], "sensor")
    message = refused(InferRequest((Tensor("readings", np.zeros((2, 12), np.float32)),)),
                      signature)
    assert "[N, 13]" in message and "[2, 12]" in message


@pytest.mark.parametrize(("tensors", "expected"), [
    ((Tensor("input", np.zeros((1, 13), np.float32)),), "takes input(s) readings"),
    ((Tensor("readings", np.zeros((1, 13), np.float64)),), "must be FP32, got FP64"),
    ((Tensor("readings", np.zeros((13,), np.float32)),), "[N, 13]"),
    ((Tensor("readings", np.full((1, 13), np.nan, np.float32)),), "NaN"),
    ((Tensor("readings", np.zeros((9, 13), np.float32)),), "between 1 and 8, got 9"),
    ((Tensor("readings", np.zeros((0, 13), np.float32)),), "between 1 and 8, got 0"),
])
def test_bad_inputs_are_a_400_naming_the_expected_value(
        pair: tuple[Path, Path], tensors: tuple[Tensor, ...], expected: str) -> None:
    signature = signature_from_onnx(pair[0], "sensor")
    assert expected in refused(InferRequest(tensors), signature)


def test_an_input_range_is_checked_only_when_configured(pair: tuple[Path, Path]) -> None:
    signature = signature_from_onnx(pair[0], "sensor")
    request = InferRequest((Tensor("readings", np.full((1, 13), 50.0, np.float32)),))
    assert check_inputs(request, signature, 8).rows == 1
    assert "[0, 16]" in refused(request, signature, input_range=(0.0, 16.0))


def test_several_inputs_of_other_datatypes_run_and_keep_their_types(typed: Path) -> None:
    model = OnnxModel(typed, served_as="typed", sha256=_sha(typed))
    ids = np.arange(12, dtype=np.int64).reshape(3, 4)
    mask = (ids % 2 == 0)
    request = InferRequest((Tensor("mask", mask), Tensor("ids", ids)))
    batch = check_inputs(request, model.signature, 8)
    assert [t.name for t in batch.tensors] == ["ids", "mask"] and len(batch) == 3
    out = model.run({t.name: t.data for t in batch.tensors})
    np.testing.assert_array_equal(out["kept"], np.where(mask, ids, 0))
    assert out["half"].dtype == np.float16
    message = refused(InferRequest((Tensor("ids", ids), Tensor("mask", mask[:2]))),
                      model.signature)
    assert "batch size" in message
    assert "must be BOOL, got INT64" in refused(
        InferRequest((Tensor("ids", ids), Tensor("mask", ids))), model.signature)
    config = model_config(model.signature, 8)
    assert config["input"][1] == {"name": "mask", "data_type": "TYPE_BOOL", "dims": [4]}
    assert blank_batch(model.signature).tensors[1].data.dtype == np.bool_


def test_a_file_is_checked_against_its_pinned_sha256(typed: Path, tmp_path: Path) -> None:
    from edgeroute.models.card import ModelIntegrityError

    with pytest.raises(ModelIntegrityError):
        OnnxModel(typed, sha256="0" * 64)
    assert OnnxModel(typed, sha256=_sha(typed)).version.startswith("1-")


def _sha(path: Path) -> str:
    from edgeroute.models.card import sha256_of

    return sha256_of(path)


def test_egress_is_priced_on_the_models_own_wire_bytes(pair: tuple[Path, Path]) -> None:
    from edgeroute.signature import bytes_per_row
    from router.cost import marginal_cost_usd
    from router.policy import TierPrices

    sensor = bytes_per_row(signature_from_onnx(pair[0], "sensor"))
    assert sensor == 13 * 4 + 3 * 4 + 8
    assert bytes_per_row(contract.SIGNATURE) == 64 * 4 + 10 * 4 + 8
    prices = TierPrices(usd_per_gb_egress=1.0)
    assert marginal_cost_usd(prices, 1, 0.0, 1, sensor) == pytest.approx(72e-9)

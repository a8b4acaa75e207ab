"""The bundled ``digits`` model's contract, checked the same everywhere.

Model ``digits``: input ``input`` FP32 [N, 64] on scikit-learn's digits pixel
scale (0..16); outputs ``probabilities`` FP32 [N, 10] and ``label`` INT64 [N].
:data:`SIGNATURE` states it in the generic form every model has
(:mod:`edgeroute.signature`); :data:`INPUT_RANGE` is its per-model input range.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeroute.oip import InferRequest, OIPError, Tensor
from edgeroute.signature import Signature, TensorSpec

MODEL_NAME = "digits"
INPUT_NAME = "input"
FEATURES = 64
CLASSES = 10
PIXEL_MAX = 16.0
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_LABEL = "label"
DEFAULT_MAX_BATCH = 256
INPUT_RANGE = (0.0, PIXEL_MAX)
SIGNATURE = Signature(
    MODEL_NAME,
    inputs=(TensorSpec(INPUT_NAME, "FP32", (-1, FEATURES)),),
    outputs=(TensorSpec(OUTPUT_PROBABILITIES, "FP32", (-1, CLASSES)),
             TensorSpec(OUTPUT_LABEL, "INT64", (-1,))),
)


def check_model_name(name: str) -> None:
    if name != MODEL_NAME:
        raise OIPError(f"unknown model '{name}' (this server serves '{MODEL_NAME}')", status=404)


def input_batch(request: InferRequest, max_batch: int = DEFAULT_MAX_BATCH) -> np.ndarray:
    """The request's pixels as a contiguous float32 [N, 64] array, or a 400 saying why not."""
    if len(request.inputs) != 1:
        raise OIPError(f"expected exactly one input '{INPUT_NAME}', got {len(request.inputs)}")
    tensor = request.input(INPUT_NAME)
    if tensor.datatype != "FP32":
        raise OIPError(f"input '{INPUT_NAME}' must be FP32, got {tensor.datatype}")
    shape = tensor.shape
    if len(shape) != 2 or shape[1] != FEATURES:
        raise OIPError(f"input '{INPUT_NAME}' must have shape [N, {FEATURES}], got {shape}")
    if not 1 <= shape[0] <= max_batch:
        raise OIPError(f"batch size must be between 1 and {max_batch}, got {shape[0]}")
    x = np.ascontiguousarray(tensor.data, dtype=np.float32)
    if not np.isfinite(x).all():
        raise OIPError(f"input '{INPUT_NAME}' holds NaN or infinite values")
    if x.min() < 0.0 or x.max() > PIXEL_MAX:
        raise OIPError(f"input '{INPUT_NAME}' values must lie in [0, {PIXEL_MAX:g}]")
    return x


def output_tensors(probabilities: np.ndarray, labels: np.ndarray) -> tuple[Tensor, ...]:
    return (
        Tensor(OUTPUT_PROBABILITIES, np.asarray(probabilities, dtype=np.float32)),
        Tensor(OUTPUT_LABEL, np.asarray(labels, dtype=np.int64)),
    )


def model_metadata(versions: list[str], platform: str = "onnxruntime_onnx",
                   parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """The body of ``GET /v2/models/digits``."""
    return {
        "name": MODEL_NAME,
        "versions": versions,
        "platform": platform,
        **({"parameters": parameters} if parameters else {}),
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, FEATURES]}],
        "outputs": [
            {"name": OUTPUT_PROBABILITIES, "datatype": "FP32", "shape": [-1, CLASSES]},
            {"name": OUTPUT_LABEL, "datatype": "INT64", "shape": [-1]},
        ],
    }


MODEL_VERSION = "1"
"""The version of the model contract above. Every artifact that serves it reports a
``model_version`` of ``1-<digest>``: version ``1``, the digest naming the artifact."""


def version_of(model_version: str) -> str:
    """The model version an artifact's ``model_version`` (``1-<digest>``) belongs to."""
    return model_version.split("-", 1)[0]


def check_version(version: str, served: set[str]) -> None:
    """A 404 in OIP form unless ``version`` is one of the ``served`` versions."""
    if version not in served:
        raise OIPError(f"unknown version '{version}' of model '{MODEL_NAME}' "
                       f"(served: {', '.join(sorted(served))})", status=404)


def model_config(max_batch_size: int, platform: str = "onnxruntime_onnx") -> dict[str, Any]:
    """The body of ``GET /v2/models/digits/config``: the fields Triton's clients read, in
    Triton's model configuration form (dims without the batch dimension)."""
    return {
        "name": MODEL_NAME,
        "platform": platform,
        "backend": "onnxruntime" if platform == "onnxruntime_onnx" else platform,
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": max_batch_size,
        "input": [{"name": INPUT_NAME, "data_type": "TYPE_FP32", "dims": [FEATURES]}],
        "output": [
            {"name": OUTPUT_PROBABILITIES, "data_type": "TYPE_FP32", "dims": [CLASSES]},
            {"name": OUTPUT_LABEL, "data_type": "TYPE_INT64", "dims": [1],
             "reshape": {"shape": []}},
        ],
    }

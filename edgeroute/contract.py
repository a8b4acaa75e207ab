"""The served model's contract: one name, one input, two outputs, checked the same everywhere.

Model ``digits``: input ``input`` FP32 [N, 64] on scikit-learn's digits pixel
scale (0..16); outputs ``probabilities`` FP32 [N, 10] and ``label`` INT64 [N].
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeroute.oip import InferRequest, OIPError, Tensor

MODEL_NAME = "digits"
INPUT_NAME = "input"
FEATURES = 64
CLASSES = 10
PIXEL_MAX = 16.0
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_LABEL = "label"
DEFAULT_MAX_BATCH = 256


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


def model_metadata(versions: list[str], platform: str = "onnxruntime_onnx") -> dict[str, Any]:
    """The body of ``GET /v2/models/digits``."""
    return {
        "name": MODEL_NAME,
        "versions": versions,
        "platform": platform,
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, FEATURES]}],
        "outputs": [
            {"name": OUTPUT_PROBABILITIES, "datatype": "FP32", "shape": [-1, CLASSES]},
            {"name": OUTPUT_LABEL, "datatype": "INT64", "shape": [-1]},
        ],
    }

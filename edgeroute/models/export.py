"""Export trained MLP weights as an ONNX graph that honours the digits contract.

The graph takes raw pixels (0..16) and scales them itself, so every client sends the same
thing whatever model serves it. Serialisation is byte-for-byte deterministic: no timestamps,
a fixed producer name and version, fixed node and initializer names, and a fixed opset and IR
version.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeroute.contract import (
    CLASSES,
    FEATURES,
    INPUT_NAME,
    OUTPUT_LABEL,
    OUTPUT_PROBABILITIES,
    PIXEL_MAX,
)
from edgeroute.models.mlp import MLPParams

OPSET = 17
IR_VERSION = 8
"""The IR version that opset 17 shipped with; every onnxruntime since 1.11 loads it."""
PRODUCER_NAME = "edgeroute.models.export"
PRODUCER_VERSION = "1"
PIXEL_SCALE = np.float32(1.0 / PIXEL_MAX)
"""Multiplies raw pixels into [0, 1]; 1/16 is exact in float32, so training matches serving."""


def scale_pixels(x: np.ndarray) -> np.ndarray:
    """The graph's input normalisation, applied in numpy for training."""
    return np.asarray(x, dtype=np.float32) * PIXEL_SCALE


def _layer_nodes(params: MLPParams) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    nodes = [helper.make_node("Mul", [INPUT_NAME, "pixel_scale"], ["h0"], name="scale")]
    initializers = [numpy_helper.from_array(np.array(PIXEL_SCALE), "pixel_scale")]
    current = "h0"
    last = len(params.weights) - 1
    for i, (w, b) in enumerate(zip(params.weights, params.biases, strict=True)):
        initializers.append(numpy_helper.from_array(w.astype(np.float32), f"w{i}"))
        initializers.append(numpy_helper.from_array(b.astype(np.float32), f"b{i}"))
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"mm{i}"], name=f"matmul{i}"))
        out = "logits" if i == last else f"z{i}"
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [out], name=f"add{i}"))
        if i < last:
            current = f"h{i + 1}"
            nodes.append(helper.make_node("Relu", [out], [current], name=f"relu{i}"))
    return nodes, initializers


def to_onnx(params: MLPParams, graph_name: str, doc_string: str = "") -> onnx.ModelProto:
    """A checked ONNX model: ``input`` FP32 [N, 64] -> ``probabilities`` [N, 10], ``label`` [N]."""
    if params.layer_sizes[0] != FEATURES or params.layer_sizes[-1] != CLASSES:
        raise ValueError(f"expected a {FEATURES}->...->{CLASSES} network, got {params.layer_sizes}")
    nodes, initializers = _layer_nodes(params)
    nodes.append(
        helper.make_node("Softmax", ["logits"], [OUTPUT_PROBABILITIES], name="softmax", axis=-1)
    )
    nodes.append(
        helper.make_node("ArgMax", ["logits"], [OUTPUT_LABEL], name="argmax", axis=1, keepdims=0)
    )
    graph = helper.make_graph(
        nodes,
        graph_name,
        inputs=[helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", FEATURES])],
        outputs=[
            helper.make_tensor_value_info(OUTPUT_PROBABILITIES, TensorProto.FLOAT, ["N", CLASSES]),
            helper.make_tensor_value_info(OUTPUT_LABEL, TensorProto.INT64, ["N"]),
        ],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER_NAME,
        producer_version=PRODUCER_VERSION,
        doc_string=doc_string,
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def write_onnx(model: onnx.ModelProto, path: Path) -> Path:
    """Write ``model`` with deterministic protobuf serialisation."""
    path.write_bytes(model.SerializeToString(deterministic=True))
    return path

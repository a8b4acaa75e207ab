"""Small ONNX models the tests build in a temporary directory (never in the repository).

``sensor_pair`` fits two linear softmax classifiers of different size on scikit-learn's
bundled wine data (13 features, 3 classes): a "small" one on a few features and a "large"
one on all of them, both taking ``readings`` FP32 [N, 13] and answering ``scores`` FP32
[N, 3] and ``label`` INT64 [N]. ``typed_model`` takes several inputs of other datatypes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
FEATURES = 13
CLASSES = 3


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString(deterministic=True))
    return path


def wine() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_wine

    data = load_wine()
    return data.data.astype(np.float32), data.target.astype(np.int64)


def _fit(x: np.ndarray, y: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares one-hot fit on the standardised chosen features, folded into (W, b)
    that act on raw readings."""
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / std
    mask = np.zeros(x.shape[1], dtype=bool)
    mask[features] = True
    design = np.hstack([z[:, mask], np.ones((len(z), 1), dtype=np.float32)])
    onehot = np.eye(CLASSES, dtype=np.float32)[y] * 4.0
    coef, *_ = np.linalg.lstsq(design, onehot, rcond=None)
    w = np.zeros((x.shape[1], CLASSES), dtype=np.float32)
    w[mask] = coef[:-1] / std[mask, None]
    b = coef[-1] - (mean[mask, None] * coef[:-1] / std[mask, None]).sum(axis=0)
    return w.astype(np.float32), b.astype(np.float32)


def _classifier(w: np.ndarray, b: np.ndarray, path: Path, name: str) -> Path:
    nodes = [
        helper.make_node("MatMul", ["readings", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=-1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, name,
        inputs=[helper.make_tensor_value_info("readings", TensorProto.FLOAT, ["N", FEATURES])],
        outputs=[helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", CLASSES]),
                 helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return _save(graph, path)


def sensor_pair(directory: Path) -> tuple[Path, Path]:
    """(small, large) ONNX files; the two give different scores for the same readings."""
    x, y = wine()
    small = _classifier(*_fit(x, y, np.array([0, 6, 9, 12])), directory / "small.onnx", "small")
    large = _classifier(*_fit(x, y, np.arange(FEATURES)), directory / "large.onnx", "large")
    return small, large


def typed_model(path: Path) -> Path:
    """``ids`` INT64 [N, 4] and ``mask`` BOOL [N, 4] -> ``kept`` INT64 [N, 4] (ids where
    mask, else 0) and ``half`` FP16 [N, 4]."""
    nodes = [
        helper.make_node("Where", ["mask", "ids", "zero"], ["kept"]),
        helper.make_node("Cast", ["kept"], ["kept16"], to=TensorProto.FLOAT16),
        helper.make_node("Mul", ["kept16", "halfscale"], ["half"]),
    ]
    graph = helper.make_graph(
        nodes, "typed",
        inputs=[helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 4]),
                helper.make_tensor_value_info("mask", TensorProto.BOOL, ["N", 4])],
        outputs=[helper.make_tensor_value_info("kept", TensorProto.INT64, ["N", 4]),
                 helper.make_tensor_value_info("half", TensorProto.FLOAT16, ["N", 4])],
        initializer=[numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
                     numpy_helper.from_array(np.array(0.5, dtype=np.float16), "halfscale")])
    return _save(graph, path)

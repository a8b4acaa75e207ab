"""The second bundled example, ``wine``: a tabular classifier with another signature.

Input ``measurements`` FP32 [N, 13] (scikit-learn's bundled wine data: 13 chemical
measurements in their own units; the graph standardises them itself); outputs
``class_probabilities`` FP32 [N, 3] and ``cultivar`` INT64 [N]. A teacher MLP and a student
distilled from it are built deterministically (seeded numpy, deterministic serialisation)
from data the package ships, with a card beside each file, into a directory of their own.
It shows that nothing on the serving path is tuned to ``digits``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeroute.models.card import (
    Distillation,
    LatencyFigures,
    ModelCard,
    ModelIntegrityError,
    TensorSpec,
    load_card,
    sha256_of,
)
from edgeroute.models.export import IR_VERSION, OPSET, PRODUCER_NAME, PRODUCER_VERSION, write_onnx
from edgeroute.models.mlp import DistillConfig, MLPParams, TrainConfig, logits_of, train
from edgeroute.models.store import build_once, default_models_dir

NAME = "wine"
INPUT = "measurements"
PROBABILITIES = "class_probabilities"
LABEL = "cultivar"
FEATURES, CLASSES = 13, 3
TEACHER, STUDENT = "wine-teacher", "wine-student"
RECIPE_VERSION = "wine-r1"
DATASET = "scikit-learn load_wine (13 measurements of 178 wines, 3 cultivars)"
TEACHER_RECIPE = TrainConfig(hidden_sizes=(256, 256), epochs=150, batch_size=32,
                             learning_rate=1e-3)
STUDENT_RECIPE = TrainConfig(hidden_sizes=(4,), epochs=300, batch_size=32, learning_rate=1e-2)
DISTILL = DistillConfig(temperature=3.0, soft_weight=0.7)
Progress = Callable[[str], None]


@dataclass(frozen=True)
class WineSplit:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True)
class WineModels:
    directory: Path
    teacher: Path
    student: Path


def wine_split(seed: int = 0) -> WineSplit:
    """A stratified 70/30 split of the bundled data (no download)."""
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split

    data = load_wine()
    x, y = data.data.astype(np.float32), data.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, stratify=y,
                                              random_state=seed)
    return WineSplit(x_tr, y_tr, x_te, y_te)


def models_dir() -> Path:
    """Beside the digits models: ``<digits dir>-wine`` (``$EDGEROUTE_MODELS-wine`` if set)."""
    digits = default_models_dir()
    return digits.with_name(f"{digits.name}-{NAME}")


def to_onnx(params: MLPParams, mean: np.ndarray, inv_std: np.ndarray,
            graph_name: str) -> onnx.ModelProto:
    """The MLP with its input standardisation in the graph: raw measurements in."""
    nodes = [helper.make_node("Sub", [INPUT, "mean"], ["centred"]),
             helper.make_node("Mul", ["centred", "inv_std"], ["h0"])]
    inits = [numpy_helper.from_array(mean.astype(np.float32), "mean"),
             numpy_helper.from_array(inv_std.astype(np.float32), "inv_std")]
    current, last = "h0", len(params.weights) - 1
    for i, (w, b) in enumerate(zip(params.weights, params.biases, strict=True)):
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(b.astype(np.float32), f"b{i}")]
        out = "logits" if i == last else f"z{i}"
        nodes += [helper.make_node("MatMul", [current, f"w{i}"], [f"mm{i}"]),
                  helper.make_node("Add", [f"mm{i}", f"b{i}"], [out])]
        if i < last:
            current = f"h{i + 1}"
            nodes.append(helper.make_node("Relu", [out], [current]))
    nodes += [helper.make_node("Softmax", ["logits"], [PROBABILITIES], axis=-1),
              helper.make_node("ArgMax", ["logits"], [LABEL], axis=1, keepdims=0)]
    graph = helper.make_graph(
        nodes, graph_name,
        inputs=[helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", FEATURES])],
        outputs=[helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["N", CLASSES]),
                 helper.make_tensor_value_info(LABEL, TensorProto.INT64, ["N"])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name=PRODUCER_NAME, producer_version=PRODUCER_VERSION)
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def _card(path: Path, name: str, role: str, description: str, params: MLPParams,
          split: WineSplit, distillation: Distillation | None) -> ModelCard:
    from edgeroute.models.runtime import OnnxModel

    digest = sha256_of(path)
    model = OnnxModel(path, sha256=digest)
    labels = model.run({INPUT: split.x_test})[LABEL]

    def p50_ms(rows: np.ndarray) -> float:
        times = []
        for _ in range(50):
            started = time.perf_counter()
            model.run({INPUT: rows})
            times.append(time.perf_counter() - started)
        return round(float(np.median(times) * 1000), 4)

    return ModelCard(
        name=name, role=role, version=f"1-{digest[:12]}",  # type: ignore[arg-type]
        description=description, dataset=DATASET, train_rows=len(split.x_train),
        heldout_rows=len(split.x_test),
        heldout_accuracy=round(float((labels == split.y_test).mean()), 6),
        parameters=params.parameter_count, macs_per_row=params.macs_per_row,
        latency=LatencyFigures(p50_ms_batch1=p50_ms(split.x_test[:1]),
                               p50_ms_batch32=p50_ms(split.x_test[:32]), threads=1,
                               provider="CPUExecutionProvider"),
        inputs=[TensorSpec(name=INPUT, datatype="FP32", shape=[-1, FEATURES])],
        outputs=[TensorSpec(name=PROBABILITIES, datatype="FP32", shape=[-1, CLASSES]),
                 TensorSpec(name=LABEL, datatype="INT64", shape=[-1])],
        opset=OPSET, onnx_file=path.name, sha256=digest, distillation=distillation)


def build_wine(out_dir: Path, *, seed: int = 0,
               progress: Progress | None = None) -> list[ModelCard]:
    """Train the teacher, distil the student, export both with a card each."""
    say: Progress = progress or (lambda _message: None)
    split = wine_split(seed)
    mean = split.x_train.mean(axis=0)
    inv_std = 1.0 / (split.x_train.std(axis=0) + 1e-6)
    z = (split.x_train - mean) * inv_std
    say(f"wine: training teacher {TEACHER_RECIPE.hidden_sizes} on {len(z)} rows")
    teacher = train(z, split.y_train, TEACHER_RECIPE.model_copy(update={"seed": seed}),
                    n_classes=CLASSES)
    say(f"wine: distilling student {STUDENT_RECIPE.hidden_sizes} from the teacher")
    student = train(z, split.y_train, STUDENT_RECIPE.model_copy(update={"seed": seed}),
                    n_classes=CLASSES, teacher_logits=logits_of(teacher, z), distill=DISTILL)
    distillation = Distillation(teacher=TEACHER, temperature=DISTILL.temperature,
                                soft_weight=DISTILL.soft_weight)
    cards = []
    for name, role, params, facts in (
            (TEACHER, "teacher", teacher, None), (STUDENT, "student", student, distillation)):
        path = write_onnx(to_onnx(params, mean, inv_std, name), out_dir / f"{name}.onnx")
        sizes = "->".join(str(n) for n in params.layer_sizes)
        card = _card(path, name, role, f"wine {role} MLP {sizes} (seed {seed})", params,
                     split, facts)
        card.write(out_dir)
        say(f"wine: {name} held-out accuracy {card.heldout_accuracy:.4f}, "
            f"{card.parameters:,} parameters")
        cards.append(card)
    return cards


def _models(directory: Path) -> WineModels:
    return WineModels(directory, directory / f"{TEACHER}.onnx", directory / f"{STUDENT}.onnx")


def _complete(directory: Path) -> bool:
    try:
        return all(load_card(p).name == p.stem for p in (_models(directory).teacher,
                                                         _models(directory).student))
    except (OSError, ValueError, ModelIntegrityError):
        return False


def ensure_wine(directory: Path | None = None, progress: Progress | None = None,
                force: bool = False) -> WineModels:
    """The checked wine models, built (once, under a lock, swapped in whole) if missing."""
    directory = Path(directory) if directory is not None else models_dir()
    build_once(directory, complete=_complete, build=lambda d: build_wine(d, progress=progress),
               what="wine models", force=force)
    return _models(directory)

"""The model build: accuracy, cost, quantization, integrity, distillation maths and the cache."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeroute.models import store
from edgeroute.models.build import MODEL_NAMES, digits_split
from edgeroute.models.card import ModelIntegrityError, load_card
from edgeroute.models.export import to_onnx
from edgeroute.models.mlp import (
    DistillConfig,
    MLPParams,
    init_params,
    logit_loss,
    loss_and_gradients,
)
from edgeroute.models.runtime import OnnxModel
from edgeroute.models.store import ModelSet, ensure_models, is_complete, model_path

MIN_ACCURACY = {"teacher": 0.97, "student": 0.94, "student-int8": 0.94}
QUANTIZED_OPS = {"DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul", "QuantizeLinear"}


@pytest.fixture(scope="module")
def heldout() -> tuple[np.ndarray, np.ndarray]:
    split = digits_split(seed=0)
    return split.x_heldout, split.y_heldout


def _paths(models: ModelSet) -> dict[str, Path]:
    return {
        "teacher": models.teacher,
        "student": models.student,
        "student-int8": models.student_int8,
    }


def _copy_set(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.suffix in (".onnx", ".json"):
            shutil.copy2(path, target / path.name)


def _flip_byte(path: Path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_card_accuracy_meets_threshold(models: ModelSet, name: str) -> None:
    card = load_card(_paths(models)[name])
    assert card.heldout_accuracy >= MIN_ACCURACY[name]
    assert card.heldout_rows == 450


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_served_file_reproduces_card_accuracy(
    models: ModelSet, heldout: tuple[np.ndarray, np.ndarray], name: str
) -> None:
    x, y = heldout
    model = OnnxModel(_paths(models)[name])
    probabilities, labels = model.predict(x)
    accuracy = float((labels == y).mean())
    assert accuracy >= MIN_ACCURACY[name]
    assert accuracy == pytest.approx(model.card.heldout_accuracy, abs=1e-6)
    assert probabilities.shape == (len(x), 10) and probabilities.dtype == np.float32
    assert labels.shape == (len(x),) and labels.dtype == np.int64
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(labels, probabilities.argmax(axis=1))


def test_student_is_at_least_20x_cheaper_than_teacher(models: ModelSet) -> None:
    teacher, student = load_card(models.teacher), load_card(models.student)
    assert student.macs_per_row * 20 <= teacher.macs_per_row
    assert teacher.parameters >= 1_000_000
    assert student.distillation is not None and student.distillation.teacher == "teacher"


def test_int8_student_is_quantized_and_agrees_with_fp32(
    models: ModelSet, heldout: tuple[np.ndarray, np.ndarray]
) -> None:
    op_types = {node.op_type for node in onnx.load(str(models.student_int8)).graph.node}
    assert op_types & QUANTIZED_OPS
    x, _ = heldout
    _, fp32_labels = OnnxModel(models.student).predict(x)
    _, int8_labels = OnnxModel(models.student_int8).predict(x)
    assert float((fp32_labels == int8_labels).mean()) >= 0.98


def test_graph_scales_raw_pixels_itself(models: ModelSet) -> None:
    graph = onnx.load(str(models.student)).graph
    assert graph.node[0].op_type == "Mul"
    assert graph.node[0].input[0] == "input"


def test_tampered_onnx_file_is_refused(models: ModelSet, tmp_path: Path) -> None:
    _copy_set(models.directory, tmp_path)
    OnnxModel(tmp_path / "student.onnx")
    _flip_byte(tmp_path / "student.onnx")
    with pytest.raises(ModelIntegrityError):
        OnnxModel(tmp_path / "student.onnx")


def test_onnx_without_card_is_refused(models: ModelSet, tmp_path: Path) -> None:
    shutil.copy2(models.student, tmp_path / "student.onnx")
    with pytest.raises(ModelIntegrityError):
        OnnxModel(tmp_path / "student.onnx")


def _tiny_problem() -> tuple[MLPParams, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    params = init_params((5, 4, 3), rng)
    params = MLPParams(
        tuple(w.astype(np.float64) for w in params.weights),
        tuple(rng.normal(0, 0.1, b.shape) for b in params.biases),
    )
    x = rng.normal(size=(6, 5))
    labels = rng.integers(0, 3, size=6)
    teacher_logits = rng.normal(0, 3, size=(6, 3))
    return params, x, labels, teacher_logits


@pytest.mark.parametrize(("temperature", "soft_weight"), [(4.0, 0.7), (1.0, 0.0), (2.5, 1.0)])
def test_distillation_gradient_matches_finite_differences(
    temperature: float, soft_weight: float
) -> None:
    params, x, labels, teacher_logits = _tiny_problem()
    distill = DistillConfig(temperature=temperature, soft_weight=soft_weight)
    _, grads = loss_and_gradients(params, x, labels, teacher_logits, distill)
    eps = 1e-6
    for array, grad in zip(params.arrays(), grads, strict=True):
        numeric = np.zeros_like(array)
        for index in np.ndindex(array.shape):
            saved = array[index]
            array[index] = saved + eps
            up, _ = loss_and_gradients(params, x, labels, teacher_logits, distill)
            array[index] = saved - eps
            down, _ = loss_and_gradients(params, x, labels, teacher_logits, distill)
            array[index] = saved
            numeric[index] = (up - down) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


def test_distillation_gradient_wrt_logits_is_the_hinton_form() -> None:
    rng = np.random.default_rng(3)
    logits, teacher = rng.normal(size=(4, 10)), rng.normal(size=(4, 10))
    labels = rng.integers(0, 10, size=4)
    a, t = 0.7, 4.0

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    _, grad = logit_loss(logits, labels, teacher, DistillConfig(temperature=t, soft_weight=a))
    onehot = np.eye(10)[labels]
    expected = (1 - a) * (softmax(logits) - onehot) + a * t * (
        softmax(logits / t) - softmax(teacher / t)
    )
    np.testing.assert_allclose(grad, expected / 4, rtol=1e-12)


def test_export_is_byte_for_byte_deterministic() -> None:
    params = init_params((64, 8, 10), np.random.default_rng(0))
    first = to_onnx(params, "tiny").SerializeToString(deterministic=True)
    second = to_onnx(params, "tiny").SerializeToString(deterministic=True)
    assert first == second


def test_second_ensure_models_does_not_rebuild(
    models: ModelSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in models.directory.iterdir()}

    def no_build(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("ensure_models rebuilt a complete model set")

    monkeypatch.setattr(store, "build_models", no_build)
    assert ensure_models(models.directory) == models
    assert {p.name: p.stat().st_mtime_ns for p in models.directory.iterdir()} == before


def _copying_build(source: Path, calls: list[Path]):
    def build(out_dir: Path, **_kwargs: object) -> None:
        calls.append(out_dir)
        _copy_set(source, out_dir)

    return build


def test_ensure_models_rebuilds_a_tampered_set(
    models: ModelSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "set"
    _copy_set(models.directory, directory)
    _flip_byte(directory / "teacher.onnx")
    assert not is_complete(directory)
    calls: list[Path] = []
    monkeypatch.setattr(store, "build_models", _copying_build(models.directory, calls))
    rebuilt = ensure_models(directory)
    assert len(calls) == 1
    assert is_complete(directory)
    assert rebuilt.teacher.read_bytes() == models.teacher.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".set.lock", "set"]


def test_ensure_models_keeps_unrelated_files(
    models: ModelSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "mine"
    directory.mkdir()
    (directory / "notes.txt").write_text("keep me")
    monkeypatch.setattr(store, "build_models", _copying_build(models.directory, []))
    ensure_models(directory)
    assert is_complete(directory)
    assert (directory / "notes.txt").read_text() == "keep me"


def test_concurrent_callers_build_once(
    models: ModelSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "shared"
    calls: list[Path] = []
    building, release = threading.Event(), threading.Event()
    copy = _copying_build(models.directory, calls)

    def slow_build(out_dir: Path, **kwargs: object) -> None:
        building.set()
        assert release.wait(10)
        copy(out_dir, **kwargs)

    monkeypatch.setattr(store, "build_models", slow_build)
    results: list[ModelSet] = []
    first = threading.Thread(target=lambda: results.append(ensure_models(directory)))
    second = threading.Thread(target=lambda: results.append(ensure_models(directory)))
    first.start()
    assert building.wait(10)
    second.start()
    second.join(timeout=0.2)
    assert second.is_alive(), "the second caller should wait for the first one's build"
    assert not directory.exists(), "a half-built set must not be visible"
    release.set()
    first.join(10)
    second.join(10)
    assert len(calls) == 1
    assert len(results) == 2 and results[0] == results[1]
    assert is_complete(directory)


def test_model_path_resolves_known_names(tmp_path: Path) -> None:
    assert model_path("student-int8", tmp_path) == tmp_path / "student-int8.onnx"
    with pytest.raises(ValueError, match="unknown model"):
        model_path("giant", tmp_path)


def test_default_dir_follows_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(store.MODELS_ENV, str(tmp_path))
    assert store.default_models_dir() == tmp_path
    monkeypatch.delenv(store.MODELS_ENV)
    assert store.default_models_dir().name == store.RECIPE_VERSION

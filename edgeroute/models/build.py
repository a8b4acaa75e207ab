"""The deterministic model build: train the teacher, distil the student, quantize, measure.

``build_models`` writes ``teacher``, ``student`` and ``student-int8`` as ONNX files with a model
card each. Every figure on a card is measured on the exported file in onnxruntime, not on the
numpy weights, so the card describes what is actually served. For a fixed seed on one machine the
FP32 ONNX bytes are identical from build to build (seeded numpy, deterministic serialisation);
the INT8 file is a deterministic function of the FP32 student. Latencies are measurements and
vary from run to run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from edgeroute.contract import (
    CLASSES,
    FEATURES,
    INPUT_NAME,
    OUTPUT_LABEL,
    OUTPUT_PROBABILITIES,
)
from edgeroute.models.card import (
    Distillation,
    LatencyFigures,
    ModelCard,
    TensorSpec,
    sha256_of,
)
from edgeroute.models.export import scale_pixels, to_onnx, write_onnx
from edgeroute.models.mlp import DistillConfig, MLPParams, TrainConfig, logits_of, train

TEACHER, STUDENT, STUDENT_INT8 = "teacher", "student", "student-int8"
MODEL_NAMES = (TEACHER, STUDENT, STUDENT_INT8)
DATASET = "scikit-learn load_digits (8x8 grey-level digits, 1797 rows)"
HELDOUT_FRACTION = 0.25
TEACHER_RECIPE = TrainConfig(
    hidden_sizes=(2048, 1024), epochs=6, batch_size=128, learning_rate=1e-3
)
STUDENT_RECIPE = TrainConfig(hidden_sizes=(48,), epochs=100, batch_size=64, learning_rate=3e-3)
DISTILL = DistillConfig(temperature=4.0, soft_weight=0.7)
LATENCY_THREADS = 1
LATENCY_RUNS = 200
LATENCY_WARMUP = 20
CPU_PROVIDER = "CPUExecutionProvider"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class DigitsSplit:
    """Raw-pixel (0..16) float32 rows: a stratified training split and a held-out split."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_heldout: np.ndarray
    y_heldout: np.ndarray


def digits_split(seed: int = 0) -> DigitsSplit:
    """The held-out split every card's accuracy is measured on (bundled data, no network)."""
    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    x_tr, x_ho, y_tr, y_ho = train_test_split(
        x, y, test_size=HELDOUT_FRACTION, stratify=y, random_state=seed
    )
    return DigitsSplit(x_tr, y_tr, x_ho, y_ho)


def with_shifted_copies(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows plus their 1-pixel shifts up, down, left and right (zero fill)."""
    images = x.reshape(-1, 8, 8)
    copies = [images]
    for axis, step in ((1, 1), (1, -1), (2, 1), (2, -1)):
        shifted = np.roll(images, step, axis=axis)
        edge = 0 if step > 0 else -1
        if axis == 1:
            shifted[:, edge, :] = 0
        else:
            shifted[:, :, edge] = 0
        copies.append(shifted)
    return np.concatenate(copies).reshape(-1, FEATURES), np.tile(y, len(copies))


def session(path: Path, threads: int = LATENCY_THREADS) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=[CPU_PROVIDER])


def onnx_accuracy(sess: ort.InferenceSession, x: np.ndarray, y: np.ndarray) -> float:
    (labels,) = sess.run([OUTPUT_LABEL], {INPUT_NAME: np.ascontiguousarray(x, np.float32)})
    return float((labels == y).mean())


def p50_latency_ms(sess: ort.InferenceSession, x: np.ndarray) -> float:
    """Median wall time of one ``run`` on batch ``x``, after a warm-up."""
    feed = {INPUT_NAME: np.ascontiguousarray(x, np.float32)}
    outputs = [OUTPUT_PROBABILITIES, OUTPUT_LABEL]
    for _ in range(LATENCY_WARMUP):
        sess.run(outputs, feed)
    times = np.empty(LATENCY_RUNS)
    for i in range(LATENCY_RUNS):
        start = time.perf_counter()
        sess.run(outputs, feed)
        times[i] = time.perf_counter() - start
    return float(np.median(times) * 1000)


def quantize_student(fp32_path: Path, int8_path: Path) -> Path:
    """Dynamic INT8 quantization: INT8 weights, activations quantized per batch at run time."""
    quantize_dynamic(fp32_path, int8_path, weight_type=QuantType.QInt8, per_channel=False)
    return int8_path


@dataclass(frozen=True)
class _CardFacts:
    name: str
    role: Literal["teacher", "student"]
    description: str
    params: MLPParams
    distillation: Distillation | None = None
    quantization: str | None = None


def measure_card(
    path: Path, facts: _CardFacts, split: DigitsSplit, progress: Progress
) -> ModelCard:
    """Measure the exported file in onnxruntime and describe it in a card beside it."""
    sess = session(path)
    accuracy = onnx_accuracy(sess, split.x_heldout, split.y_heldout)
    latency = LatencyFigures(
        p50_ms_batch1=round(p50_latency_ms(sess, split.x_heldout[:1]), 4),
        p50_ms_batch32=round(p50_latency_ms(sess, split.x_heldout[:32]), 4),
        threads=LATENCY_THREADS,
        provider=CPU_PROVIDER,
    )
    digest = sha256_of(path)
    opset = next(
        o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")
    )
    card = ModelCard(
        name=facts.name,
        role=facts.role,
        version=f"1-{digest[:12]}",
        description=facts.description,
        dataset=DATASET,
        train_rows=len(split.x_train),
        heldout_rows=len(split.x_heldout),
        heldout_accuracy=round(accuracy, 6),
        parameters=facts.params.parameter_count,
        macs_per_row=facts.params.macs_per_row,
        latency=latency,
        inputs=[TensorSpec(name=INPUT_NAME, datatype="FP32", shape=[-1, FEATURES])],
        outputs=[
            TensorSpec(name=OUTPUT_PROBABILITIES, datatype="FP32", shape=[-1, CLASSES]),
            TensorSpec(name=OUTPUT_LABEL, datatype="INT64", shape=[-1]),
        ],
        opset=opset,
        onnx_file=path.name,
        sha256=digest,
        distillation=facts.distillation,
        quantization=facts.quantization,
    )
    progress(
        f"{facts.name}: held-out accuracy {accuracy:.4f}, {card.parameters:,} parameters, "
        f"{card.macs_per_row:,} MACs/row, p50 {latency.p50_ms_batch1:.3f} ms (batch 1), "
        f"{latency.p50_ms_batch32:.3f} ms (batch 32)"
    )
    return card


def _architecture(params: MLPParams) -> str:
    return "->".join(str(n) for n in params.layer_sizes)


def _train_teacher(split: DigitsSplit, seed: int, progress: Progress) -> MLPParams:
    x, y = with_shifted_copies(split.x_train, split.y_train)
    recipe = TEACHER_RECIPE.model_copy(update={"seed": seed})
    progress(f"training teacher {recipe.hidden_sizes} on {len(x)} rows (with 1-pixel shifts)")
    started = time.monotonic()
    params = train(scale_pixels(x), y, recipe, n_classes=CLASSES, progress=progress)
    progress(f"teacher trained in {time.monotonic() - started:.1f} s")
    return params


def _train_student(
    split: DigitsSplit, teacher: MLPParams, seed: int, progress: Progress
) -> MLPParams:
    x, y = with_shifted_copies(split.x_train, split.y_train)
    x = scale_pixels(x)
    recipe = STUDENT_RECIPE.model_copy(update={"seed": seed})
    progress(
        f"distilling student {recipe.hidden_sizes} from the teacher "
        f"(T={DISTILL.temperature:g}, soft weight {DISTILL.soft_weight:g})"
    )
    started = time.monotonic()
    params = train(
        x,
        y,
        recipe,
        n_classes=CLASSES,
        teacher_logits=logits_of(teacher, x),
        distill=DISTILL,
        progress=progress,
    )
    progress(f"student trained in {time.monotonic() - started:.1f} s")
    return params


def build_models(
    out_dir: Path, *, seed: int = 0, progress: Progress | None = None
) -> list[ModelCard]:
    """Build, export and measure the three models into ``out_dir``; return their cards."""
    say: Progress = progress if progress is not None else (lambda _message: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    split = digits_split(seed)
    teacher = _train_teacher(split, seed, say)
    student = _train_student(split, teacher, seed, say)
    say(f"exporting ONNX files to {out_dir}")
    paths = {name: out_dir / f"{name}.onnx" for name in MODEL_NAMES}
    write_onnx(
        to_onnx(teacher, TEACHER, f"digits teacher {_architecture(teacher)}"), paths[TEACHER]
    )
    write_onnx(
        to_onnx(student, STUDENT, f"digits student {_architecture(student)}"), paths[STUDENT]
    )
    quantize_student(paths[STUDENT], paths[STUDENT_INT8])
    distillation = Distillation(
        teacher=TEACHER, temperature=DISTILL.temperature, soft_weight=DISTILL.soft_weight
    )
    data = f"trained on the training rows and their 1-pixel shifts (seed {seed})"
    facts = [
        _CardFacts(
            TEACHER, "teacher", f"large cloud MLP {_architecture(teacher)}, {data}", teacher
        ),
        _CardFacts(
            STUDENT,
            "student",
            f"edge MLP {_architecture(student)} distilled from the teacher, {data}",
            student,
            distillation,
        ),
        _CardFacts(
            STUDENT_INT8,
            "student",
            f"the student {_architecture(student)} with dynamically quantized INT8 weights",
            student,
            distillation,
            "onnxruntime quantize_dynamic: INT8 per-tensor weights, UINT8 dynamic activations",
        ),
    ]
    say("measuring each model in onnxruntime (CPU, 1 thread)")
    cards = [measure_card(paths[f.name], f, split, say) for f in facts]
    for card in cards:
        card.write(out_dir)
    return cards

"""A small pure-numpy multilayer perceptron: ReLU hidden layers, softmax output, Adam.

The loss supports knowledge distillation (Hinton, Vinyals and Dean 2015, "Distilling the
Knowledge in a Neural Network")::

    loss = (1 - a) * CE(y, softmax(s)) + a * T^2 * KL(softmax(t / T) || softmax(s / T))

for student logits ``s``, teacher logits ``t``, temperature ``T`` and soft weight ``a``. Its
gradient with respect to ``s`` is ``(1 - a) * (softmax(s) - onehot(y)) + a * T * (softmax(s / T)
- softmax(t / T))``; the ``T^2`` factor keeps the soft term's gradient scale independent of ``T``.

Training is deterministic for a given seed: initialisation and batch order come from one
``numpy.random.Generator``; the arithmetic is plain float32 numpy.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class TrainConfig(BaseModel):
    """How to train one network: its hidden layer widths and the optimiser's schedule."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hidden_sizes: tuple[int, ...]
    epochs: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    learning_rate: float = Field(gt=0)
    """Adam's peak step size; it follows a cosine decay to zero over the epochs."""
    seed: int = 0


class DistillConfig(BaseModel):
    """The distillation term's temperature ``T`` and its weight ``a`` in the loss."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(gt=0)
    soft_weight: float = Field(ge=0, le=1)


@dataclass(frozen=True)
class MLPParams:
    """Weights ``[in, out]`` and biases ``[out]`` per layer; the last layer emits logits."""

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        return (self.weights[0].shape[0], *(w.shape[1] for w in self.weights))

    @property
    def parameter_count(self) -> int:
        return sum(w.size + b.size for w, b in zip(self.weights, self.biases, strict=True))

    @property
    def macs_per_row(self) -> int:
        """Multiply-accumulates of the matrix products for one input row."""
        return sum(w.size for w in self.weights)

    def arrays(self) -> list[np.ndarray]:
        return [*self.weights, *self.biases]


def init_params(layer_sizes: tuple[int, ...], rng: np.random.Generator) -> MLPParams:
    """He-normal weights (He et al. 2015, suited to ReLU) and zero biases, in float32."""
    weights, biases = [], []
    for fan_in, fan_out in itertools.pairwise(layer_sizes):
        std = math.sqrt(2.0 / fan_in)
        weights.append((rng.standard_normal((fan_in, fan_out)) * std).astype(np.float32))
        biases.append(np.zeros(fan_out, dtype=np.float32))
    return MLPParams(tuple(weights), tuple(biases))


def forward(params: MLPParams, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Logits for ``x``, and each layer's input (kept for backprop)."""
    activations = [x]
    h = x
    last = len(params.weights) - 1
    for i, (w, b) in enumerate(zip(params.weights, params.biases, strict=True)):
        h = h @ w + b
        if i < last:
            h = np.maximum(h, 0)
            activations.append(h)
    return h, activations


def logits_of(params: MLPParams, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    return np.concatenate(
        [forward(params, x[i : i + batch_size])[0] for i in range(0, len(x), batch_size)]
    )


def log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def logit_loss(
    logits: np.ndarray,
    labels: np.ndarray,
    teacher_logits: np.ndarray | None = None,
    distill: DistillConfig | None = None,
) -> tuple[float, np.ndarray]:
    """Batch-mean loss and its gradient with respect to ``logits``.

    Plain cross-entropy when no teacher is given; otherwise the distillation loss of the module
    docstring.
    """
    n = len(logits)
    log_p = log_softmax(logits)
    hard_grad = np.exp(log_p)
    hard_grad[np.arange(n), labels] -= 1
    hard_loss = float(-log_p[np.arange(n), labels].mean())
    if teacher_logits is None or distill is None:
        return hard_loss, hard_grad / n
    a, t = distill.soft_weight, distill.temperature
    log_ps = log_softmax(logits / t)
    log_pt = log_softmax(teacher_logits / t)
    p_t = np.exp(log_pt)
    kl = float((p_t * (log_pt - log_ps)).sum(axis=1).mean())
    loss = (1 - a) * hard_loss + a * t * t * kl
    grad = (1 - a) * hard_grad + a * t * (np.exp(log_ps) - p_t)
    return loss, grad / n


def loss_and_gradients(
    params: MLPParams,
    x: np.ndarray,
    labels: np.ndarray,
    teacher_logits: np.ndarray | None = None,
    distill: DistillConfig | None = None,
) -> tuple[float, list[np.ndarray]]:
    """The loss on one batch and its gradients, ordered as :meth:`MLPParams.arrays`."""
    logits, activations = forward(params, x)
    loss, grad = logit_loss(logits, labels, teacher_logits, distill)
    n_layers = len(params.weights)
    w_grads: list[np.ndarray] = [np.empty(0)] * n_layers
    b_grads: list[np.ndarray] = [np.empty(0)] * n_layers
    for i in reversed(range(n_layers)):
        w_grads[i] = activations[i].T @ grad
        b_grads[i] = grad.sum(axis=0)
        if i > 0:
            grad = (grad @ params.weights[i].T) * (activations[i] > 0)
    return loss, [*w_grads, *b_grads]


class Adam:
    """Adam (Kingma and Ba 2015), updating the parameter arrays in place."""

    def __init__(
        self, arrays: list[np.ndarray], beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8
    ) -> None:
        self.arrays = arrays
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.m = [np.zeros_like(a) for a in arrays]
        self.v = [np.zeros_like(a) for a in arrays]
        self.steps = 0

    def step(self, grads: list[np.ndarray], learning_rate: float) -> None:
        self.steps += 1
        b1, b2 = self.beta1, self.beta2
        scale = learning_rate * math.sqrt(1 - b2**self.steps) / (1 - b1**self.steps)
        for p, g, m, v in zip(self.arrays, grads, self.m, self.v, strict=True):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * np.square(g)
            p -= (scale * m / (np.sqrt(v) + self.eps)).astype(p.dtype, copy=False)


def train(
    x: np.ndarray,
    labels: np.ndarray,
    config: TrainConfig,
    *,
    n_classes: int,
    teacher_logits: np.ndarray | None = None,
    distill: DistillConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> MLPParams:
    """Train a fresh network on float rows ``x`` (already scaled) with mini-batch Adam."""
    rng = np.random.default_rng(config.seed)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if teacher_logits is not None:
        teacher_logits = np.asarray(teacher_logits, dtype=np.float32)
    params = init_params((x.shape[1], *config.hidden_sizes, n_classes), rng)
    optimiser = Adam(params.arrays())
    report_every = max(1, config.epochs // 5)
    for epoch in range(config.epochs):
        lr = config.learning_rate * 0.5 * (1 + math.cos(math.pi * epoch / config.epochs))
        order = rng.permutation(len(x))
        total = 0.0
        for start in range(0, len(x), config.batch_size):
            idx = order[start : start + config.batch_size]
            soft = None if teacher_logits is None else teacher_logits[idx]
            loss, grads = loss_and_gradients(params, x[idx], labels[idx], soft, distill)
            optimiser.step(grads, lr)
            total += loss * len(idx)
        if progress is not None and (epoch + 1) % report_every == 0:
            progress(f"  epoch {epoch + 1}/{config.epochs}: mean loss {total / len(x):.4f}")
    return params

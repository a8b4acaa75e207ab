"""Model cards: the JSON written beside every ONNX file, and its integrity check."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict


class ModelIntegrityError(RuntimeError):
    """The ONNX file does not match the sha256 its card records (or has no card)."""


class TensorSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    datatype: str
    shape: list[int]
    """-1 marks the batch dimension."""


class LatencyFigures(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    p50_ms_batch1: float
    p50_ms_batch32: float
    threads: int
    provider: str


class Distillation(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    teacher: str
    temperature: float
    soft_weight: float
    """Weight of the softened-teacher term; the hard-label term gets 1 - soft_weight."""


class ModelCard(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    role: Literal["teacher", "student"]
    version: str
    description: str
    dataset: str
    train_rows: int
    heldout_rows: int
    heldout_accuracy: float
    parameters: int
    macs_per_row: int
    latency: LatencyFigures
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opset: int
    onnx_file: str
    sha256: str
    distillation: Distillation | None = None
    quantization: str | None = None

    @staticmethod
    def path_for(onnx_path: Path) -> Path:
        return onnx_path.with_suffix(".card.json")

    def write(self, directory: Path) -> Path:
        path = directory / f"{self.name}.card.json"
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_card(onnx_path: Path) -> ModelCard:
    """Read the card beside ``onnx_path`` and check the file's sha256 against it."""
    card_path = ModelCard.path_for(onnx_path)
    if not card_path.exists():
        raise ModelIntegrityError(f"{onnx_path}: no model card at {card_path}")
    card = ModelCard.model_validate_json(card_path.read_text())
    actual = sha256_of(onnx_path)
    if actual != card.sha256:
        raise ModelIntegrityError(
            f"{onnx_path}: sha256 {actual[:12]}... does not match its card ({card.sha256[:12]}...)"
        )
    return card

"""The models this package builds from a recipe and serves by name alone (``models:`` entries
with only ``name``): their files, signature, cascade output and input range."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeroute import contract
from edgeroute.signature import Signature


@dataclass(frozen=True)
class Bundle:
    signature: Signature
    cloud: Path
    edge: Path | None
    """``None``: each edge worker serves the student variant its config names."""
    confidence: str | None
    input_range: tuple[float, float] | None


def ensure(name: str) -> Bundle:
    """The bundled model ``name``, built (once, cached) if missing."""
    from edgeroute.models.store import ensure_models

    if name == contract.MODEL_NAME:
        models = ensure_models()
        return Bundle(contract.SIGNATURE, models.teacher, None,
                      contract.OUTPUT_PROBABILITIES, contract.INPUT_RANGE)
    if name == "wine":
        from edgeroute.models import wine
        from edgeroute.signature import signature_from_onnx

        built = wine.ensure_wine()
        return Bundle(signature_from_onnx(built.teacher, name), built.teacher, built.student,
                      wine.PROBABILITIES, None)
    raise ValueError(f"no bundled model named '{name}'")

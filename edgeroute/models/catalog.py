"""The served models of a stack config, resolved to files and signatures, and checked.

:func:`resolve` turns each ``models:`` entry into a :class:`ServedModel`: the ONNX file of
its cloud variant (and of its edge variant, unless the worker's own configured digits
student serves it), the signature read from the graph, the output the cascade reads and
the input range. A pair whose variants disagree on inputs or outputs, a confidence output
the model lacks, or a file whose sha256 is not the one pinned is refused with a
:class:`ModelConfigError` naming it. :func:`pinned` records every file's sha256 in the
config, so that every process that loads a file later checks it is the one validated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeroute import contract
from edgeroute.config import ModelEntry, StackConfig
from edgeroute.models.card import ModelIntegrityError
from edgeroute.models.runtime import checked_digest
from edgeroute.signature import Signature, signature_from_onnx


class ModelConfigError(ValueError):
    """A ``models:`` entry that cannot be served, and why."""


@dataclass(frozen=True)
class ServedModel:
    name: str
    signature: Signature
    cloud_path: Path | None
    """``None``: the bundled digits teacher, found by the cloud itself."""
    edge_path: Path | None
    """``None``: each edge worker serves the bundled student its config names."""
    confidence_output: str | None
    input_range: tuple[float, float] | None
    edge_sha256: str | None = None
    cloud_sha256: str | None = None

    def edge_spec(self, default_path: Path) -> dict[str, Any]:
        """What an edge worker is told to host for this model (``--models-json``)."""
        return {"name": self.name, "path": str(self.edge_path or default_path),
                "sha256": self.edge_sha256, "input_range": self.input_range}


def _bundled(entry: ModelEntry) -> ServedModel:
    from edgeroute.models import bundles

    bundle = bundles.ensure(entry.name)
    return ServedModel(
        name=entry.name, signature=bundle.signature, cloud_path=bundle.cloud,
        edge_path=bundle.edge, confidence_output=entry.confidence_output or bundle.confidence,
        input_range=entry.input_range or bundle.input_range)


def digits() -> ServedModel:
    """The bundled ``digits`` model as the router sees it (no file needed)."""
    return ServedModel(contract.MODEL_NAME, contract.SIGNATURE, None, None,
                       contract.OUTPUT_PROBABILITIES, contract.INPUT_RANGE)


def _checked(path: Path, pinned: str | None, where: str) -> str:
    if not path.is_file():
        raise ModelConfigError(f"{where}: {path} is not a file")
    try:
        return checked_digest(path, pinned or _sha256(path))[1]
    except ModelIntegrityError as exc:
        raise ModelConfigError(f"{where}: {exc}") from None


def _sha256(path: Path) -> str:
    from edgeroute.models.card import sha256_of

    return sha256_of(path)


def _pair(entry: ModelEntry) -> ServedModel:
    assert entry.edge_model is not None and entry.cloud_model is not None
    where = f"model '{entry.name}'"
    edge_sha = _checked(entry.edge_model, entry.edge_sha256, f"{where} edge_model")
    cloud_sha = _checked(entry.cloud_model, entry.cloud_sha256, f"{where} cloud_model")
    try:
        edge = signature_from_onnx(entry.edge_model, entry.name)
        cloud = signature_from_onnx(entry.cloud_model, entry.name)
    except (ValueError, OSError) as exc:
        raise ModelConfigError(f"{where}: {exc}") from None
    problems = edge.mismatches(cloud)
    if problems:
        raise ModelConfigError(f"{where}: edge_model and cloud_model disagree: "
                               + "; ".join(problems))
    return ServedModel(entry.name, cloud, entry.cloud_model, entry.edge_model,
                       entry.confidence_output, entry.input_range, edge_sha, cloud_sha)


def served_model(entry: ModelEntry) -> ServedModel:
    """One entry resolved and checked (a bundled model is built first if missing)."""
    model = _bundled(entry) if entry.bundled else _pair(entry)
    name = model.confidence_output
    if name is not None:
        spec = model.signature.output(name)
        if spec is None or spec.datatype not in ("FP16", "FP32", "FP64") or len(spec.shape) != 2:
            raise ModelConfigError(
                f"model '{entry.name}': confidence_output '{name}' must be a floating-point "
                f"output of shape [N, C]; outputs: "
                + ", ".join(f"{s.name} {s.datatype} {list(s.shape)}"
                            for s in model.signature.outputs))
    return model


def resolve(config: StackConfig) -> dict[str, ServedModel]:
    """Every model of the config, by name, in config order."""
    return {entry.name: served_model(entry) for entry in config.models}


def pinned(config: StackConfig) -> StackConfig:
    """The config with each model pair's sha256 recorded (checked against any already
    pinned), for the processes that load the files to check."""
    served = resolve(config)
    entries = [e if e.bundled else e.model_copy(update={
        "edge_sha256": served[e.name].edge_sha256,
        "cloud_sha256": served[e.name].cloud_sha256}) for e in config.models]
    return config.model_copy(update={"models": entries})

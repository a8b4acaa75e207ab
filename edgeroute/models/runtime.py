"""Load a checked ONNX model into an onnxruntime session and run it on named tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgeroute.models.card import ModelCard, ModelIntegrityError, load_card, sha256_of
from edgeroute.signature import SIGNATURE_VERSION, Signature, signature_from_onnx


def pick_providers(use_gpu: bool) -> list[str]:
    """CUDA first when asked for and available, CPU always as the last resort."""
    available = ort.get_available_providers()
    if use_gpu and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def checked_digest(path: Path, sha256: str | None) -> tuple[ModelCard | None, str]:
    """The file's card (if checked by one) and sha256, checked at load: against ``sha256``
    when given (a user's model, pinned when the stack validated it), else against the card
    beside the file (a bundled model). A mismatch or a file with neither is refused."""
    if sha256 is not None:
        actual = sha256_of(path)
        if actual != sha256:
            raise ModelIntegrityError(f"{path}: sha256 {actual[:12]}... is not the "
                                      f"{sha256[:12]}... it was validated with")
        card_path = ModelCard.path_for(path)
        return (load_card(path) if card_path.exists() else None), actual
    card = load_card(path)
    return card, card.sha256


class OnnxModel:
    """One ONNX file in an onnxruntime session, served as model ``served_as`` (default: the
    name on its card); its signature is read from the graph."""

    def __init__(self, path: Path, *, threads: int = 1, use_gpu: bool = False,
                 served_as: str | None = None, sha256: str | None = None) -> None:
        self.path = Path(path)
        self.card, self.sha256 = checked_digest(self.path, sha256)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(self.path), sess_options=options, providers=pick_providers(use_gpu)
        )
        self.served_as = served_as or (self.card.name if self.card else self.path.stem)
        self.signature: Signature = signature_from_onnx(self.path, self.served_as)
        self.input_name = self.signature.inputs[0].name
        self.output_names = [o.name for o in self.signature.outputs]

    @property
    def name(self) -> str:
        return self.card.name if self.card is not None else self.path.stem

    @property
    def version(self) -> str:
        """``1-<digest>``: the card's version, else the file's own sha256 prefix."""
        return self.card.version if self.card is not None else (
            f"{SIGNATURE_VERSION}-{self.sha256[:12]}")

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output of the graph for the named ``inputs``."""
        results = self.session.run(self.output_names, inputs)
        return dict(zip(self.output_names, results, strict=True))

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The digits pair (probabilities, labels) of a model with one input."""
        probabilities, labels = self.session.run(self.output_names[:2], {self.input_name: x})
        return probabilities, labels

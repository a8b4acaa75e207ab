"""Load a checked ONNX model into an onnxruntime session and run the digits contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgeroute.models.card import ModelCard, load_card


def pick_providers(use_gpu: bool) -> list[str]:
    """CUDA first when asked for and available, CPU always as the last resort."""
    available = ort.get_available_providers()
    if use_gpu and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxModel:
    """A digits classifier: float32 [N, 64] in, probabilities [N, 10] and labels [N] out."""

    def __init__(self, path: Path, *, threads: int = 1, use_gpu: bool = False) -> None:
        self.path = Path(path)
        self.card: ModelCard = load_card(self.path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(self.path), sess_options=options, providers=pick_providers(use_gpu)
        )
        self.input_name = self.card.inputs[0].name
        self.output_names = [o.name for o in self.card.outputs]

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probabilities, labels = self.session.run(self.output_names, {self.input_name: x})
        return probabilities, labels

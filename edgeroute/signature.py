"""A model's signature, read from its ONNX graph, and the generic contract built on it.

A :class:`Signature` names a model's inputs and outputs with their OIP datatypes and
shapes (``-1`` marks a dimension the graph leaves free; a free first dimension is the
batch). :func:`check_inputs` validates a request against it and returns a
:class:`Batch`; every refusal is an :class:`~edgeroute.oip.OIPError` 400 that names the
value expected. The same checks run at the router and at the edge worker, so a request
the router accepts is one every variant of the model accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeroute.oip import DATATYPES, InferRequest, OIPError, Tensor

ONNX_DATATYPES = {
    1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64",
    9: "BOOL", 10: "FP16", 11: "FP64", 12: "UINT32", 13: "UINT64",
}
"""ONNX ``TensorProto`` element types the OIP codec carries (strings, BYTES, are not)."""
FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})
SIGNATURE_VERSION = "1"
"""The model version every signature-described model reports (its artifacts: ``1-<digest>``)."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]
    """``-1`` marks a free dimension; a free first dimension is the batch."""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Batch:
    """Validated input tensors of one request, in the signature's order; ``len`` is its rows."""

    model: str
    tensors: tuple[Tensor, ...]
    rows: int

    def __len__(self) -> int:
        return self.rows

    @property
    def nbytes(self) -> int:
        return sum(int(t.data.nbytes) for t in self.tensors)


@dataclass(frozen=True)
class Signature:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def batched(self) -> bool:
        """Every input and output has a free first dimension (the batch)."""
        return all(s.shape and s.shape[0] == -1 for s in (*self.inputs, *self.outputs))

    def output(self, name: str) -> TensorSpec | None:
        return next((s for s in self.outputs if s.name == name), None)

    def renamed(self, name: str) -> Signature:
        return Signature(name, self.inputs, self.outputs)

    def mismatches(self, other: Signature) -> list[str]:
        """How ``other`` differs in inputs or outputs (names, datatypes, shapes); empty if
        a client cannot tell the two apart."""
        problems = []
        for kind, mine, theirs in (("inputs", self.inputs, other.inputs),
                                   ("outputs", self.outputs, other.outputs)):
            a = {s.name: s for s in mine}
            b = {s.name: s for s in theirs}
            if set(a) != set(b):
                problems.append(f"{kind} differ: {sorted(a)} vs {sorted(b)}")
                continue
            for name in a:
                if (a[name].datatype, a[name].shape) != (b[name].datatype, b[name].shape):
                    problems.append(f"{kind[:-1]} '{name}': {a[name].datatype} "
                                    f"{list(a[name].shape)} vs {b[name].datatype} "
                                    f"{list(b[name].shape)}")
        return problems


def _spec(value_info: Any, where: str) -> TensorSpec:
    tensor_type = value_info.type.tensor_type
    datatype = ONNX_DATATYPES.get(tensor_type.elem_type)
    if datatype is None:
        raise ValueError(f"{where} '{value_info.name}': ONNX element type "
                         f"{tensor_type.elem_type} is not supported")
    if not tensor_type.HasField("shape"):
        raise ValueError(f"{where} '{value_info.name}': the graph gives it no shape")
    shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
                  for d in tensor_type.shape.dim)
    return TensorSpec(value_info.name, datatype, shape)


def signature_from_onnx(path: Path, name: str) -> Signature:
    """The signature of the ONNX model at ``path``, served under ``name``; a ``ValueError``
    says what the codec cannot carry."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    inputs = tuple(_spec(v, "input") for v in graph.input if v.name not in initializers)
    outputs = tuple(_spec(v, "output") for v in graph.output)
    if not inputs or not outputs:
        raise ValueError(f"{path}: a model needs at least one input and one output")
    return Signature(name, inputs, outputs)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join("N" if i == 0 and d == -1 else "*" if d == -1 else str(d)
                           for i, d in enumerate(shape)) + "]"


def _check_tensor(spec: TensorSpec, tensor: Tensor,
                  input_range: tuple[float, float] | None) -> np.ndarray:
    if tensor.datatype != spec.datatype:
        raise OIPError(f"input '{spec.name}' must be {spec.datatype}, got {tensor.datatype}")
    shape = tensor.shape
    if len(shape) != len(spec.shape) or any(
            want != -1 and got != want for got, want in zip(shape, spec.shape, strict=True)):
        raise OIPError(f"input '{spec.name}' must have shape {_shape_text(spec.shape)}, "
                       f"got {shape}")
    x = np.ascontiguousarray(tensor.data, dtype=DATATYPES[spec.datatype])
    if spec.datatype in FLOAT_TYPES and not np.isfinite(x).all():
        raise OIPError(f"input '{spec.name}' holds NaN or infinite values")
    if input_range is not None and x.size and spec.datatype != "BOOL":
        low, high = input_range
        if x.min() < low or x.max() > high:
            raise OIPError(f"input '{spec.name}' values must lie in [{low:g}, {high:g}]")
    return x


def check_inputs(request: InferRequest, signature: Signature, max_batch: int,
                 input_range: tuple[float, float] | None = None) -> Batch:
    """The request's inputs checked against ``signature`` (names, datatypes, rank, fixed
    dimensions, batch bounds, finite floats, ``input_range`` if given), or a 400 naming the
    value expected."""
    expected = [s.name for s in signature.inputs]
    given = [t.name for t in request.inputs]
    if sorted(given) != sorted(expected):
        raise OIPError(f"model '{signature.name}' takes input(s) {', '.join(expected)}; "
                       f"got {', '.join(given)}")
    tensors = tuple(Tensor(s.name, _check_tensor(s, request.input(s.name), input_range))
                    for s in signature.inputs)
    batch_dims = {t.shape[0] for t, s in zip(tensors, signature.inputs, strict=True)
                  if s.shape and s.shape[0] == -1}
    if len(batch_dims) > 1:
        raise OIPError(f"inputs disagree on the batch size: {sorted(batch_dims)}")
    rows = batch_dims.pop() if batch_dims else 1
    if not 1 <= rows <= max_batch:
        raise OIPError(f"batch size must be between 1 and {max_batch}, got {rows}")
    return Batch(signature.name, tensors, rows)


def check_outputs(signature: Signature, outputs: dict[str, np.ndarray]) -> tuple[Tensor, ...]:
    """The model's outputs in signature order, each in its declared datatype."""
    return tuple(Tensor(s.name, np.asarray(outputs[s.name], dtype=DATATYPES[s.datatype]))
                 for s in signature.outputs)


def bytes_per_row(signature: Signature) -> float:
    """Wire bytes of one row in and out in binary form (a free non-batch dimension counts 1)."""
    total = 0
    for spec in (*signature.inputs, *signature.outputs):
        dims = spec.shape[1:] if spec.shape and spec.shape[0] == -1 else spec.shape
        total += DATATYPES[spec.datatype].itemsize * int(np.prod([max(d, 1) for d in dims]))
    return float(total)


def blank_batch(signature: Signature, rows: int = 1) -> Batch:
    """A batch of zeros that fits the signature (the prober's trial call)."""
    tensors = []
    for s in signature.inputs:
        shape = tuple(rows if i == 0 and d == -1 else max(d, 1) for i, d in enumerate(s.shape))
        tensors.append(Tensor(s.name, np.zeros(shape, dtype=DATATYPES[s.datatype])))
    return Batch(signature.name, tuple(tensors), rows)


def metadata(signature: Signature, versions: list[str], platform: str = "onnxruntime_onnx",
             parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """The body of ``GET /v2/models/{name}``."""
    return {
        "name": signature.name,
        "versions": versions,
        "platform": platform,
        **({"parameters": parameters} if parameters else {}),
        "inputs": [s.as_dict() for s in signature.inputs],
        "outputs": [s.as_dict() for s in signature.outputs],
    }


def _config_dims(spec: TensorSpec, batched: bool) -> dict[str, Any]:
    dims = list(spec.shape[1:] if batched else spec.shape)
    entry: dict[str, Any] = {"name": spec.name, "data_type": f"TYPE_{spec.datatype}",
                             "dims": dims or [1]}
    if not dims:
        entry["reshape"] = {"shape": []}
    return entry


def model_config(signature: Signature, max_batch_size: int,
                 platform: str = "onnxruntime_onnx") -> dict[str, Any]:
    """The body of ``GET /v2/models/{name}/config`` in Triton's model configuration form
    (dims without the batch dimension when the model is batched)."""
    batched = signature.batched
    return {
        "name": signature.name,
        "platform": platform,
        "backend": "onnxruntime" if platform == "onnxruntime_onnx" else platform,
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": max_batch_size if batched else 0,
        "input": [_config_dims(s, batched) for s in signature.inputs],
        "output": [_config_dims(s, batched) for s in signature.outputs],
    }


def check_version(name: str, version: str, served: set[str]) -> None:
    if version not in served:
        raise OIPError(f"unknown version '{version}' of model '{name}' "
                       f"(served: {', '.join(sorted(served))})", status=404)


def check_model(name: str, served: list[str] | set[str] | dict[str, Any]) -> None:
    if name not in served:
        raise OIPError(f"unknown model '{name}' (this server serves "
                       f"{', '.join(repr(n) for n in sorted(served))})", status=404)


def repository_index(names: list[str] | set[str]) -> list[dict[str, Any]]:
    """``POST /v2/repository/index``: every model, as Triton answers it."""
    return [{"name": n, "version": SIGNATURE_VERSION, "state": "READY"} for n in sorted(names)]

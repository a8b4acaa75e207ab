"""Open Inference Protocol (KServe v2 / Triton HTTP) codec.

Decodes and encodes inference requests and responses in both wire forms:

* plain JSON, tensors carried in ``data`` as flat or nested lists;
* Triton's binary-tensor extension: the body starts with a JSON header of
  ``Inference-Header-Content-Length`` bytes, followed by the raw little-endian
  bytes of every tensor whose ``parameters.binary_data_size`` is set, in order.

Every malformed input raises :class:`OIPError` with an HTTP status in the 4xx
range and a message fit to return to the client as ``{"error": message}``.
Nothing here imports a web framework: the edge worker and the router both wrap
it, so the two speak exactly the same protocol.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

HEADER_LENGTH = "inference-header-content-length"
JSON_CONTENT = "application/json"
BINARY_CONTENT = "application/octet-stream"
EXTENSIONS = ("binary_tensor_data", "parameters", "statistics", "model_configuration")
"""The OIP/Triton extensions the router and every edge worker serve (their server metadata)."""

DATATYPES: Mapping[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_NAMES_BY_DTYPE = {dt: name for name, dt in DATATYPES.items()}
MAX_ELEMENTS = 1 << 24
_MAX_DIMS = 32


class OIPError(Exception):
    """A request the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Tensor:
    name: str
    data: np.ndarray

    @property
    def datatype(self) -> str:
        return datatype_of(self.data)

    @property
    def shape(self) -> list[int]:
        return [int(d) for d in self.data.shape]


@dataclass(frozen=True)
class InferRequest:
    inputs: tuple[Tensor, ...]
    id: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    outputs: tuple[str, ...] | None = None
    """Names of the outputs asked for; ``None`` means all of them."""
    binary_outputs: frozenset[str] = frozenset()
    """Outputs to return as binary data."""
    binary_output_default: bool = False
    model_name: str | None = None
    """The body's ``model_name`` (a batch job names its model there; an infer URL does)."""

    def input(self, name: str) -> Tensor:
        for tensor in self.inputs:
            if tensor.name == name:
                return tensor
        raise OIPError(f"missing input '{name}'")

    def wants_binary(self, output: str) -> bool:
        return output in self.binary_outputs or (
            self.binary_output_default and output not in self.binary_outputs
        )


@dataclass(frozen=True)
class InferResponse:
    model_name: str
    outputs: tuple[Tensor, ...]
    model_version: str | None = None
    id: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)


def datatype_of(array: np.ndarray) -> str:
    try:
        return _NAMES_BY_DTYPE[array.dtype.newbyteorder("<") if array.dtype.byteorder == ">"
                               else array.dtype]
    except KeyError:
        raise OIPError(f"unsupported dtype {array.dtype}") from None


def error_body(message: str, parameters: Mapping[str, Any] | None = None) -> bytes:
    """The OIP error object; ``parameters``, when given, ride beside ``error`` as in a
    response (clients that know only ``error`` ignore them)."""
    document: dict[str, Any] = {"error": message}
    if parameters:
        document["parameters"] = dict(parameters)
    return json.dumps(document).encode()


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def _split(body: bytes, headers: Mapping[str, str]) -> tuple[dict[str, Any], bytes]:
    """Split a body into its JSON header (decoded) and the binary tail."""
    raw = _lower(headers).get(HEADER_LENGTH)
    if raw is None:
        head, tail = body, b""
    else:
        try:
            length = int(raw)
        except ValueError:
            raise OIPError(f"invalid {HEADER_LENGTH} header: {raw!r}") from None
        if not 0 < length <= len(body):
            raise OIPError(f"{HEADER_LENGTH} {length} does not fit a body of {len(body)} bytes")
        head, tail = body[:length], body[length:]
    try:
        document = json.loads(head, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        raise OIPError(f"body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise OIPError("body must be a JSON object")
    return document, tail


def _finite_float(text: str) -> float:
    """Parse a JSON number; one too large for a double (``1e400``) is out of range, not inf."""
    value = float(text)
    if math.isinf(value):
        raise OIPError(f"number {text[:40]} is out of range")
    return value


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise OIPError(f"{where}.parameters must be an object")
    return value


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise OIPError(f"{where}.shape must be a list of non-negative integers")
    if len(value) > _MAX_DIMS:
        raise OIPError(f"{where}.shape has more than {_MAX_DIMS} dimensions")
    if math.prod(max(d, 1) for d in value) > MAX_ELEMENTS:
        raise OIPError(f"{where}.shape {value} spans more than {MAX_ELEMENTS} elements")
    return tuple(value)


def _tensors(entries: Any, tail: bytes, kind: str) -> tuple[Tensor, ...]:
    if not isinstance(entries, list):
        raise OIPError(f"'{kind}' must be a list")
    offset = 0
    tensors = []
    names = set()
    for i, entry in enumerate(entries):
        where = f"{kind}[{i}]"
        if not isinstance(entry, dict):
            raise OIPError(f"{where} must be an object")
        name, datatype = entry.get("name"), entry.get("datatype")
        if not isinstance(name, str) or not name:
            raise OIPError(f"{where}.name must be a non-empty string")
        if name in names:
            raise OIPError(f"{kind} '{name}' appears twice")
        names.add(name)
        if not isinstance(datatype, str) or datatype not in DATATYPES:
            raise OIPError(f"{kind} '{name}': unsupported datatype {datatype!r}")
        dtype = DATATYPES[datatype]
        shape = _shape(entry.get("shape"), f"{kind} '{name}'")
        params = _parameters(entry.get("parameters"), f"{kind} '{name}'")
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise OIPError(f"{kind} '{name}': binary_data_size must be a non-negative integer")
            chunk = tail[offset : offset + size]
            if len(chunk) != size:
                raise OIPError(f"{kind} '{name}': binary data shorter than {size} bytes")
            offset += size
            if size != math.prod(shape) * dtype.itemsize:
                raise OIPError(
                    f"{kind} '{name}': {size} bytes do not hold shape {list(shape)} of {datatype}"
                )
            array = np.frombuffer(chunk, dtype=dtype).reshape(shape)
        else:
            array = _from_json(entry.get("data"), dtype, shape, f"{kind} '{name}'")
        tensors.append(Tensor(name, array))
    if offset != len(tail):
        raise OIPError(f"{len(tail) - offset} bytes of binary data belong to no tensor")
    return tuple(tensors)


def _from_json(data: Any, dtype: np.dtype, shape: tuple[int, ...], where: str) -> np.ndarray:
    if not isinstance(data, list):
        raise OIPError(f"{where}: 'data' must be a list (or send binary data)")
    try:
        flat = np.asarray(data, dtype=object).reshape(-1)
    except ValueError:
        raise OIPError(f"{where}: 'data' is a ragged list") from None
    if flat.size != math.prod(shape):
        raise OIPError(f"{where}: {flat.size} values do not fill shape {list(shape)}")
    kinds = (bool,) if dtype.kind == "b" else (int, float) if dtype.kind == "f" else (int,)
    for value in flat:
        if not isinstance(value, kinds) or (dtype.kind != "b" and isinstance(value, bool)):
            raise OIPError(f"{where}: value {value!r} is not of datatype {_NAMES_BY_DTYPE[dtype]}")
    try:
        with np.errstate(over="raise"):
            return np.array(flat.tolist(), dtype=dtype).reshape(shape)
    except (OverflowError, FloatingPointError, ValueError):
        raise OIPError(f"{where}: a value is out of range for {_NAMES_BY_DTYPE[dtype]}") from None


def decode_request(body: bytes, headers: Mapping[str, str]) -> InferRequest:
    document, tail = _split(body, headers)
    params = _parameters(document.get("parameters"), "request")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise OIPError("'id' must be a string")
    model_name = document.get("model_name")
    if model_name is not None and not isinstance(model_name, str):
        raise OIPError("'model_name' must be a string")
    inputs = _tensors(document.get("inputs"), tail, "inputs")
    if not inputs:
        raise OIPError("'inputs' must not be empty")
    default_binary = params.get("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise OIPError("parameters.binary_data_output must be a boolean")
    outputs = None
    binary: set[str] = set()
    if document.get("outputs") is not None:
        if not isinstance(document["outputs"], list):
            raise OIPError("'outputs' must be a list")
        names: list[str] = []
        for i, entry in enumerate(document["outputs"]):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise OIPError(f"outputs[{i}] must be an object with a string 'name'")
            if not entry["name"] or entry["name"] in names:
                raise OIPError(f"outputs[{i}].name must be non-empty and unique")
            out_params = _parameters(entry.get("parameters"), f"outputs[{i}]")
            wants = out_params.get("binary_data", default_binary)
            if not isinstance(wants, bool):
                raise OIPError(f"outputs[{i}].parameters.binary_data must be a boolean")
            if wants:
                binary.add(entry["name"])
            names.append(entry["name"])
        outputs = tuple(names)
        default_binary = False
    return InferRequest(
        inputs=inputs,
        id=request_id,
        parameters=params,
        outputs=outputs,
        binary_outputs=frozenset(binary),
        binary_output_default=default_binary,
        model_name=model_name,
    )


def _tensor_json(tensor: Tensor, binary: bool) -> tuple[dict[str, Any], bytes]:
    entry: dict[str, Any] = {
        "name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape
    }
    if binary:
        raw = np.ascontiguousarray(tensor.data, dtype=tensor.data.dtype.newbyteorder("<")).tobytes()
        entry["parameters"] = {"binary_data_size": len(raw)}
        return entry, raw
    entry["data"] = tensor.data.reshape(-1).tolist()
    return entry, b""


def _assemble(document: dict[str, Any], chunks: list[bytes]) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(document, separators=(",", ":")).encode()
    if not any(chunks):
        return head, {"content-type": JSON_CONTENT}
    return head + b"".join(chunks), {
        "content-type": BINARY_CONTENT,
        HEADER_LENGTH: str(len(head)),
    }


def encode_request(request: InferRequest, binary: bool = True) -> tuple[bytes, dict[str, str]]:
    """Encode a request; with ``binary`` the inputs travel as raw bytes."""
    document: dict[str, Any] = {}
    if request.id is not None:
        document["id"] = request.id
    if request.model_name is not None:
        document["model_name"] = request.model_name
    params = dict(request.parameters)
    if request.binary_output_default:
        params["binary_data_output"] = True
    if params:
        document["parameters"] = params
    chunks = []
    entries = []
    for tensor in request.inputs:
        entry, raw = _tensor_json(tensor, binary)
        entries.append(entry)
        chunks.append(raw)
    document["inputs"] = entries
    if request.outputs is not None:
        document["outputs"] = [
            {"name": n, "parameters": {"binary_data": n in request.binary_outputs}}
            for n in request.outputs
        ]
    return _assemble(document, chunks)


def encode_response(
    response: InferResponse, binary: frozenset[str] | set[str] = frozenset()
) -> tuple[bytes, dict[str, str]]:
    """Encode a response; outputs named in ``binary`` travel as raw bytes."""
    document: dict[str, Any] = {"model_name": response.model_name}
    if response.model_version is not None:
        document["model_version"] = response.model_version
    if response.id is not None:
        document["id"] = response.id
    if response.parameters:
        document["parameters"] = dict(response.parameters)
    chunks = []
    entries = []
    for tensor in response.outputs:
        entry, raw = _tensor_json(tensor, tensor.name in binary)
        entries.append(entry)
        chunks.append(raw)
    document["outputs"] = entries
    return _assemble(document, chunks)


def decode_response(body: bytes, headers: Mapping[str, str]) -> InferResponse:
    document, tail = _split(body, headers)
    if "error" in document:
        raise OIPError(str(document["error"]))
    name = document.get("model_name")
    if not isinstance(name, str):
        raise OIPError("response has no 'model_name'")
    version = document.get("model_version")
    response_id = document.get("id")
    if response_id is not None and not isinstance(response_id, str):
        raise OIPError("'id' must be a string")
    return InferResponse(
        model_name=name,
        model_version=None if version is None else str(version),
        id=response_id,
        parameters=_parameters(document.get("parameters"), "response"),
        outputs=_tensors(document.get("outputs"), tail, "outputs"),
    )


def select_outputs(request: InferRequest, outputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """The outputs the request asked for, in its order; unknown names are a 400."""
    if request.outputs is None:
        return outputs
    by_name = {t.name: t for t in outputs}
    missing = [n for n in request.outputs if n not in by_name]
    if missing:
        raise OIPError(f"unknown output(s): {', '.join(missing)}")
    return tuple(by_name[n] for n in request.outputs)


def binary_set(request: InferRequest, outputs: tuple[Tensor, ...]) -> frozenset[str]:
    return frozenset(t.name for t in outputs if request.wants_binary(t.name))

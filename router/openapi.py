"""What the published OpenAPI document says about the infer route that FastAPI cannot infer.

The route reads its body raw (JSON, or Triton's binary-tensor extension), so
FastAPI sees no request model. :data:`INFER_OPENAPI` describes the OIP v2 JSON
inference request (KServe's open inference protocol, "Inference Request
JSON Object") and the answers the route gives, so that clients and API
fuzzers (schemathesis) can build requests from the document.
"""

from __future__ import annotations

from typing import Any

_TENSOR: dict[str, Any] = {
    "type": "object",
    "required": ["name", "shape", "datatype", "data"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "datatype": {"type": "string", "enum": [
            "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
            "FP16", "FP32", "FP64", "BYTES"]},
        "parameters": {"type": "object"},
        "data": {"type": "array", "items": {}},
    },
}

_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "deadline_ms": {"type": "number", "exclusiveMinimum": 0},
        "quality": {"type": "string", "enum": ["any", "high"]},
        "policy": {"type": "string"},
        "explain": {"type": "boolean"},
    },
}

INFER_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": _PARAMETERS,
        "inputs": {"type": "array", "items": _TENSOR},
        "outputs": {"type": "array", "items": {
            "type": "object", "required": ["name"],
            "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}}}},
    },
}

_ERROR = {"content": {"application/json": {"schema": {
    "type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}}}}

INFER_OPENAPI: dict[str, Any] = {
    "requestBody": {"required": True,
                    "content": {"application/json": {"schema": INFER_REQUEST}}},
    "responses": {
        "400": {"description": "Malformed request", **_ERROR},
        "401": {"description": "Unknown API key", **_ERROR},
        "403": {"description": "Policy not allowed to this caller", **_ERROR},
        "404": {"description": "Unknown model", **_ERROR},
        "413": {"description": "Body too large", **_ERROR},
        "415": {"description": "Unsupported content type", **_ERROR},
        "503": {"description": "Shed or no target could serve (Retry-After says when to "
                               "come back)", **_ERROR},
        "504": {"description": "The deadline passed", **_ERROR},
    },
}

"""HTTP helpers shared by the edge worker and the router (both Starlette apps).

Reading bodies under a size bound, checking the content type, answering OIP
errors, and writing/reading the ``Server-Timing`` header through which a
server reports its queue and compute time to the caller.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import Response

from edgeroute.oip import (
    BINARY_CONTENT,
    JSON_CONTENT,
    InferResponse,
    OIPError,
    encode_response,
    error_body,
)

REQUEST_ID_HEADER = "x-request-id"
DEADLINE_HEADER = "x-edgeroute-deadline-ms"
"""Milliseconds the caller gives an attempt, counted from when it was sent (relative, so
clocks need not agree); a worker drops work whose budget ran out while it queued."""

ACCEPTED_CONTENT = {JSON_CONTENT, BINARY_CONTENT, "text/plain", ""}


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """The request body, or a 413 as soon as it is known to exceed ``limit_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit_bytes:
        raise OIPError(f"body of {declared} bytes exceeds the limit of {limit_bytes}", status=413)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise OIPError(f"body exceeds the limit of {limit_bytes} bytes", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def check_content_type(headers: Mapping[str, str]) -> None:
    """JSON, or octet-stream for the binary extension; anything else is a 415."""
    media = headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in ACCEPTED_CONTENT:
        raise OIPError(f"unsupported content type '{media}'", status=415)
    if headers.get("content-encoding", "identity").lower() != "identity":
        raise OIPError("compressed request bodies are not supported", status=415)


def error_response(error: OIPError, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        error_body(error.message), status_code=error.status, media_type=JSON_CONTENT,
        headers=dict(headers or {}),
    )


def infer_response(
    response: InferResponse, binary: frozenset[str], headers: Mapping[str, str] | None = None
) -> Response:
    body, wire_headers = encode_response(response, binary)
    merged = {k: v for k, v in wire_headers.items() if k != "content-type"}
    merged.update(headers or {})
    return Response(body, media_type=wire_headers["content-type"], headers=merged)


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` in whole seconds, never 0 (a breaker may half-open in a moment)."""
    return str(max(1, math.ceil(seconds)))


def server_timing(**durations_s: float) -> str:
    """``Server-Timing`` value from durations in seconds, e.g. ``queue;dur=0.12, infer;dur=1.8``."""
    return ", ".join(f"{name};dur={seconds * 1000:.3f}" for name, seconds in durations_s.items())


def parse_server_timing(value: str | None) -> dict[str, float]:
    """Durations in milliseconds by metric name; malformed entries are skipped."""
    timings: dict[str, float] = {}
    for entry in (value or "").split(","):
        name, _, rest = entry.strip().partition(";")
        for param in rest.split(";"):
            key, _, number = param.strip().partition("=")
            if key == "dur" and name:
                try:
                    timings[name] = float(number)
                except ValueError:
                    continue
    return timings


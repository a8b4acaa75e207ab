"""HTTP helpers shared by the edge worker and the router (both Starlette apps).

Reading bodies under a size bound (gzip and deflate bodies are inflated under the
same bound, so a small compressed body cannot expand past it), checking the content
type, answering OIP errors (the framework's own 404, 405 and 413 included), and
writing/reading the ``Server-Timing`` header through which a server reports its
queue and compute time to the caller.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.middleware.gzip import GZipMiddleware
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
CONTENT_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
"""``Content-Encoding`` of request bodies -> zlib window bits (``deflate`` is the zlib
format, as HTTP defines it and tritonclient sends it)."""


def content_encoding(headers: Mapping[str, str]) -> str | None:
    """``gzip``, ``deflate`` or ``None`` (identity); any other coding is a 415."""
    coding = headers.get("content-encoding", "identity").strip().lower()
    if coding in ("identity", ""):
        return None
    if coding not in CONTENT_ENCODINGS:
        raise OIPError(f"unsupported content encoding '{coding}' (gzip, deflate or identity)",
                       status=415)
    return coding


def inflate(data: bytes, coding: str, limit_bytes: int) -> bytes:
    """A gzip or deflate body decompressed, never past ``limit_bytes`` (a 413 beyond it,
    however well it compressed); a corrupt or truncated stream is a 400."""
    inflater = zlib.decompressobj(CONTENT_ENCODINGS[coding])
    try:
        body = inflater.decompress(data, limit_bytes + 1)
    except zlib.error as exc:
        raise OIPError(f"invalid {coding} body: {exc}") from None
    if len(body) > limit_bytes:
        raise OIPError(f"decompressed body exceeds the limit of {limit_bytes} bytes", status=413)
    if not inflater.eof:
        raise OIPError(f"invalid {coding} body: truncated stream")
    return body


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """The request body (inflated when ``Content-Encoding`` says gzip or deflate), or a 413
    as soon as it, compressed or not, is known to exceed ``limit_bytes``."""
    coding = content_encoding(request.headers)
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
    body = b"".join(chunks)
    return body if coding is None else inflate(body, coding, limit_bytes)


def check_content_type(headers: Mapping[str, str]) -> None:
    """JSON, or octet-stream for the binary extension; anything else is a 415."""
    media = headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in ACCEPTED_CONTENT:
        raise OIPError(f"unsupported content type '{media}'", status=415)
    content_encoding(headers)


def error_response(error: OIPError, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        error_body(error.message), status_code=error.status, media_type=JSON_CONTENT,
        headers=dict(headers or {}),
    )


async def http_error(_: Request, exc: Exception) -> Response:
    """The framework's own errors (unknown route 404, wrong method 405, ...) as OIP bodies."""
    assert isinstance(exc, HTTPException)
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return error_response(OIPError(message, status=exc.status_code), exc.headers)


async def validation_error(_: Request, exc: Exception) -> Response:
    """A request the framework's validation refused (FastAPI's 422) as an OIP 400."""
    errors: Any = getattr(exc, "errors", list)()
    return error_response(OIPError(f"invalid request: {errors}"[:500]))


async def internal_error(_: Request, exc: Exception) -> Response:
    """A 500 in OIP form; the traceback goes to the server's log, not to the caller."""
    return error_response(OIPError(f"internal error: {type(exc).__name__}", status=500))


def oip_exception_handlers() -> dict[Any, Any]:
    """Exception handlers that keep every error an OIP ``{"error": ...}`` body."""
    handlers: dict[Any, Any] = {HTTPException: http_error, Exception: internal_error}
    try:
        from fastapi.exceptions import RequestValidationError
    except ImportError:  # the edge worker runs on Starlette alone
        return handlers
    handlers[RequestValidationError] = validation_error
    return handlers


class InferGZip:
    """gzip for inference answers of ``minimum_size`` bytes or more whose caller's
    ``Accept-Encoding`` asks for it; other answers go uncompressed, as Triton does
    (``tritonclient.http.aio`` reads them raw although aiohttp asks for gzip)."""

    def __init__(self, app: Any, minimum_size: int = 512, compresslevel: int = 6) -> None:
        self.app = app
        self.gzip = GZipMiddleware(app, minimum_size=minimum_size, compresslevel=compresslevel)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/infer"):
            await self.gzip(scope, receive, send)
        else:
            await self.app(scope, receive, send)


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


"""Per-request context that follows a request into every attempt without threading it
through each call: the request id, propagated to HTTP targets and returned to the client.

A ``ContextVar`` is copied into every task the request spawns (hedges, fallbacks).
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

from edgeroute.http import DEADLINE_HEADER, REQUEST_ID_HEADER

__all__ = [
    "DEADLINE_HEADER", "REQUEST_ID_HEADER", "bind_request_id", "pick_request_id", "request_id",
    "serve_request_id",
]

request_id: ContextVar[str | None] = ContextVar("edgeroute_request_id", default=None)

_SAFE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def bind_request_id(value: str) -> None:
    """Set the id for the current request (a function, so that Serve's pickling of the
    ingress class, which cannot carry a ``ContextVar``, references it by import)."""
    request_id.set(value)


def serve_request_id() -> str | None:
    """The id Ray Serve gave the request being handled, if any (Serve's request context is
    not public API: any failure just means no id)."""
    try:
        from ray.serve.context import _get_serve_request_context

        return _get_serve_request_context().request_id or None
    except Exception:
        return None


def pick_request_id(*candidates: str | None) -> str:
    """The first candidate that is a safe id (header or OIP ``id``), else a new one."""
    for candidate in candidates:
        if candidate and _SAFE.match(candidate):
            return candidate
    return uuid.uuid4().hex

"""A herd: many requests written at once, and what the clients of it saw.

The client does next to nothing else (raw HTTP/1.1 on asyncio streams over connections
opened beforehand, not timed), so the times are the server's, not a busy client's. Used
by the herd chaos scenario (``tests/chaos/test_herd.py``) and the ingress benchmark
(``benchmarks/ingress.py``).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

ROUTER_MS = re.compile(r"router;dur=([\d.]+)")
"""The router's own time for a request, from its ``Server-Timing`` header."""


@dataclass(frozen=True)
class Answer:
    status: int
    client_ms: float
    """From the moment the client sent the request to the end of the response."""
    router_ms: float | None
    """The router's own time for it (``Server-Timing``: from its arrival at the replica)."""
    retry_after: str | None
    error: str


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (NaN for no values)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response: status, headers (lower-case names), body (plain or chunked)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = {name.strip().lower(): value.strip()
               for name, _, value in (line.partition(":") for line in head[1:] if line)}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            body += await reader.readexactly(size + 2)
            body = body[:-2]
        await reader.readuntil(b"\r\n")
        return status, headers, body
    return status, headers, await reader.readexactly(int(headers.get("content-length", "0")))


async def send_herd(endpoint: str, rows: np.ndarray, size: int,
                    deadline_ms: float) -> list[Answer]:
    """``size`` digits requests (``rows`` in turn) with ``deadline_ms``, written at once."""
    url = httpx.URL(endpoint)
    host, port = url.host, url.port or 80
    requests = []
    for i in range(size):
        body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                       "data": rows[i % len(rows)].tolist()}],
                           "parameters": {"deadline_ms": deadline_ms}}).encode()
        requests.append(f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: {host}:{port}\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                        f"\r\n".encode() + body)
    connections = await asyncio.wait_for(
        asyncio.gather(*(asyncio.open_connection(host, port) for _ in range(size))), 60)
    gate = asyncio.Event()

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  request: bytes) -> Answer:
        await gate.wait()
        sent = time.monotonic()
        writer.write(request)
        try:
            status, headers, body = await asyncio.wait_for(_read_response(reader),
                                                           deadline_ms / 1000 + 30)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
            return Answer(0, (time.monotonic() - sent) * 1000, None, None,
                          f"{type(exc).__name__}: {exc}")
        finally:
            writer.close()
        took = (time.monotonic() - sent) * 1000
        timing = ROUTER_MS.search(headers.get("server-timing", ""))
        error = "" if status == 200 else str(json.loads(body or b"{}").get("error", body[:200]))
        return Answer(status, took, float(timing.group(1)) if timing else None,
                      headers.get("retry-after"), error)

    tasks = [asyncio.create_task(one(reader, writer, request))
             for (reader, writer), request in zip(connections, requests, strict=True)]
    await asyncio.sleep(0)
    gate.set()
    return list(await asyncio.gather(*tasks))


def herd_figures(answers: list[Answer], deadline_ms: float) -> dict[str, Any]:
    """Statuses, answers in time (at the client and at the router), how fast shed
    requests were refused, and the commonest errors."""
    served = [a for a in answers if a.status == 200]
    shed = [a for a in answers if a.status in (429, 503)]
    statuses: dict[str, int] = {}
    for a in answers:
        statuses[str(a.status)] = statuses.get(str(a.status), 0) + 1
    errors: dict[str, int] = {}
    for a in answers:
        if a.status != 200:
            key = re.sub(r"\d+(\.\d+)?", "N", a.error)[:80]
            errors[key] = errors.get(key, 0) + 1
    return {
        "statuses": statuses,
        "answered_in_time": sum(a.client_ms <= deadline_ms for a in served),
        "answered_in_time_at_router": sum((a.router_ms or 0.0) <= deadline_ms for a in served),
        "shed": len(shed),
        "shed_client_p50_ms": round(percentile([a.client_ms for a in shed], 0.5), 1),
        "shed_client_p99_ms": round(percentile([a.client_ms for a in shed], 0.99), 1),
        "shed_router_p99_ms": round(percentile([a.router_ms or 0.0 for a in shed], 0.99), 1),
        "served_client_p99_ms": round(percentile([a.client_ms for a in served], 0.99), 1),
        "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:4]),
    }

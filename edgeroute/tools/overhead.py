"""What the router hop adds: the same target called directly and through the router, in one run.

For each target kind the measurement alternates one direct call and one
routed call, sequentially, so both see the same machine load:

* edge: HTTP straight to the worker vs. ``client -> Serve proxy -> router -> worker``;
* cloud: a ``DeploymentHandle`` call from this process vs. the routed request
  with ``quality=high``.

The target's emulated link is set to zero for the duration (and restored), so
the difference is the router hop itself: proxy, parsing, decision, transport.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
import numpy as np
from rich.table import Table

from edgeroute import contract
from edgeroute.oip import InferRequest, Tensor, encode_request

EDGE_DEADLINE_MS = 60.0
"""Tight enough that no cloud plan or cascade fits: the routed call goes to the nearest edge."""
SATURATION_DEADLINE_MS = 2000.0
ZERO_LINK = {"base_ms": 0.0, "jitter_ms": 0.0, "spike_probability": 0.0, "loss_probability": 0.0}
IDENTITY = {"accept-encoding": "identity"}
"""Uncompressed answers: the figures measure routing, not gzip."""


def _body(row: np.ndarray, **parameters: Any) -> tuple[bytes, dict[str, str]]:
    request = InferRequest((Tensor(contract.INPUT_NAME, row[None, :]),), parameters=parameters)
    return encode_request(request, binary=True)


@contextmanager
def zero_link(client: httpx.Client, endpoint: str, token: str, target: str) -> Iterator[None]:
    auth = {"authorization": f"Bearer {token}"}
    before = client.get(f"{endpoint}/v1/targets", headers=auth).json()["targets"]
    saved = next(t["link_emulation"] for t in before if t["name"] == target)
    client.put(f"{endpoint}/v1/links/{target}", json=ZERO_LINK, headers=auth).raise_for_status()
    try:
        yield
    finally:
        client.put(f"{endpoint}/v1/links/{target}", json=saved, headers=auth)


def _percentiles(samples: list[float]) -> dict[str, float]:
    return {"p50": float(np.percentile(samples, 50)), "p99": float(np.percentile(samples, 99))}


def _compare(direct: Callable[[np.ndarray], None], routed: Callable[[np.ndarray], str],
             rows: np.ndarray, expected: str, n: int) -> dict[str, Any]:
    direct_ms: list[float] = []
    routed_ms: list[float] = []
    for i in range(n):
        row = rows[i % len(rows)]
        started = time.perf_counter()
        direct(row)
        direct_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        target = routed(row)
        if target == expected:
            routed_ms.append((time.perf_counter() - started) * 1000)
    direct_p = _percentiles(direct_ms)
    result: dict[str, Any] = {"target": expected, "requests": n, "direct_ms": direct_p}
    if routed_ms:
        routed_p = _percentiles(routed_ms)
        result["routed_ms"] = routed_p
        result["overhead_p50_ms"] = routed_p["p50"] - direct_p["p50"]
    return result


def measure(endpoint: str, token: str, rows: np.ndarray, *, edge_name: str, edge_url: str,
            cloud_name: str, cloud_handle: Any, n: int = 150) -> dict[str, Any]:
    """Direct and routed p50/p99 for one edge worker and the cloud deployment."""
    infer_url = f"{endpoint}/v2/models/{contract.MODEL_NAME}/infer"
    with httpx.Client(timeout=10, headers=IDENTITY) as client:

        def routed(row: np.ndarray, **parameters: Any) -> str:
            body, headers = _body(row, **parameters)
            response = client.post(infer_url, content=body, headers=headers)
            return str(response.json().get("parameters", {}).get("target", ""))

        def edge_direct(row: np.ndarray) -> None:
            body, headers = _body(row)
            client.post(f"{edge_url}/v2/models/{contract.MODEL_NAME}/infer", content=body,
                        headers=headers).raise_for_status()

        def cloud_direct(row: np.ndarray) -> None:
            cloud_handle.infer.remote({contract.INPUT_NAME: row[None, :]}).result(timeout_s=10)

        with zero_link(client, endpoint, token, edge_name):
            edge = _compare(edge_direct, lambda r: routed(r, deadline_ms=EDGE_DEADLINE_MS), rows,
                            edge_name, n)
        with zero_link(client, endpoint, token, cloud_name):
            cloud = _compare(cloud_direct, lambda r: routed(r, quality="high", deadline_ms=1000),
                             rows, cloud_name, n)
    return {"edge": edge, "cloud": cloud}


async def _saturate(url: str, bodies: Sequence[tuple[bytes, dict[str, str]]], concurrency: int,
                    duration_s: float) -> tuple[int, int]:
    """Closed loop: ``concurrency`` callers post back to back for ``duration_s``;
    returns (answered 200, other outcomes)."""
    ok = failed = 0
    stop_at = time.monotonic() + duration_s
    async with httpx.AsyncClient(timeout=5, trust_env=False, headers=IDENTITY,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:

        async def caller(k: int) -> None:
            nonlocal ok, failed
            i = k
            while time.monotonic() < stop_at:
                body, headers = bodies[i % len(bodies)]
                i += concurrency
                try:
                    response = await client.post(url, content=body, headers=headers)
                except httpx.HTTPError:
                    failed += 1
                    continue
                if response.status_code == 200:
                    ok += 1
                else:
                    failed += 1

        await asyncio.gather(*(caller(k) for k in range(concurrency)))
    return ok, failed


def throughput(endpoint: str, token: str, rows: np.ndarray, edges: dict[str, str], *,
               concurrency: int = 16, duration_s: float = 5.0) -> dict[str, Any]:
    """Answers per second at saturation: the edge workers called directly (callers split
    evenly between them) against the router placing on the same workers (``always-edge``,
    which the caller must be allowed; a relaxed deadline, so that queueing is not failure),
    links zeroed."""
    path = f"/v2/models/{contract.MODEL_NAME}/infer"
    plain = [_body(row) for row in rows[:64]]
    routed = [_body(row, deadline_ms=SATURATION_DEADLINE_MS, policy="always-edge")
              for row in rows[:64]]
    share = max(concurrency // len(edges), 1)

    async def direct() -> tuple[int, int]:
        counts = await asyncio.gather(*(_saturate(url + path, plain, share, duration_s)
                                        for url in edges.values()))
        return sum(c[0] for c in counts), sum(c[1] for c in counts)

    with httpx.Client(timeout=10, headers=IDENTITY) as client, ExitStack() as links:
        for name in edges:
            links.enter_context(zero_link(client, endpoint, token, name))
        direct_ok, direct_failed = asyncio.run(direct())
        routed_ok, routed_failed = asyncio.run(
            _saturate(endpoint + path, routed, share * len(edges), duration_s))
    return {
        "concurrency": share * len(edges), "duration_s": duration_s,
        "direct_rps": direct_ok / duration_s, "routed_rps": routed_ok / duration_s,
        "direct_failed": direct_failed, "routed_failed": routed_failed,
        "ratio": routed_ok / direct_ok if direct_ok else None,
    }


def overhead_table(figures: dict[str, Any]) -> Table:
    table = Table(title="Router hop overhead (same target, direct vs routed, links zeroed)")
    for column in ("target", "direct p50 ms", "routed p50 ms", "direct p99 ms", "routed p99 ms",
                   "overhead p50 ms"):
        table.add_column(column, justify="left" if column == "target" else "right")
    for row in figures.values():
        routed = row.get("routed_ms", {})
        nan = float("nan")
        table.add_row(
            row["target"], f"{row['direct_ms']['p50']:.2f}", f"{routed.get('p50', nan):.2f}",
            f"{row['direct_ms']['p99']:.2f}", f"{routed.get('p99', nan):.2f}",
            f"{row.get('overhead_p50_ms', nan):.2f}",
        )
    return table

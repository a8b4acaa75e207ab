"""An edge worker's fleet agent against a scripted router (httpx mock transport, no sleeping)."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import httpx
import numpy as np
import pytest

from edge.fleet import FleetAgent
from edge.server import EdgeWorker, create_app
from edgeroute.models.runtime import OnnxModel
from edgeroute.models.store import ModelSet
from tests.unit.fakes import run_async

MEMBER = {"url": "http://10.0.0.7:8101", "tier": "edge", "quality": "small", "concurrency": 1}


class Router:
    """Answers fleet calls as the router does; ``status`` scripts the next answers."""

    def __init__(self, *statuses: int, advice_ms: float = 1000.0) -> None:
        self.statuses = list(statuses)
        self.advice_ms = advice_ms
        self.calls: list[tuple[str, str, dict[str, Any] | None, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.calls.append((request.method, request.url.path, body,
                           request.headers.get("authorization", "")))
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 0:
            raise httpx.ConnectError("connection refused", request=request)
        if status != 200:
            return httpx.Response(status, json={"error": "fleet token required"})
        if request.method == "DELETE":
            return httpx.Response(200, json={"status": "left"})
        joined = sum(1 for c in self.calls if c[0] == "PUT") == 1
        return httpx.Response(200, json={"status": "joined" if joined else "refreshed",
                                         "ttl_ms": 3 * self.advice_ms,
                                         "heartbeat_interval_ms": self.advice_ms})


class Sleeps:
    """Records the waits; stops the agent's loop after ``limit`` of them."""

    def __init__(self, limit: int) -> None:
        self.waits: list[float] = []
        self.limit = limit

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if len(self.waits) >= self.limit:
            raise asyncio.CancelledError


def agent(router: Router, sleeps: Sleeps, **options: Any) -> FleetAgent:
    return FleetAgent("http://router:8000/", "s3cret", "site-a", MEMBER,
                      transport=httpx.MockTransport(router), sleep=sleeps,
                      rng=random.Random(1), **options)


def run(a: FleetAgent) -> None:
    async def main() -> None:
        with pytest.raises(asyncio.CancelledError):
            await a.run()
        await a.leave()

    run_async(main)


def test_the_agent_joins_beats_at_the_routers_pace_and_leaves() -> None:
    router, sleeps = Router(advice_ms=500.0), Sleeps(4)
    a = agent(router, sleeps, interval_s=2.0)
    run(a)
    puts = [c for c in router.calls if c[0] == "PUT"]
    assert len(puts) == 4
    assert all(path == "/v1/fleet/site-a" and body == MEMBER and auth == "Bearer s3cret"
               for _, path, body, auth in puts)
    assert sleeps.waits == [0.5] * 4  # the router asked for a beat every 0.5 s
    assert router.calls[-1][:2] == ("DELETE", "/v1/fleet/site-a")
    assert a.beats == 4 and not a.joined


def test_a_router_that_is_down_is_retried_with_growing_capped_backoff_then_joined() -> None:
    router, sleeps = Router(0, 0, 0, 0, 0, 0, 200), Sleeps(7)
    a = agent(router, sleeps, interval_s=1.0, max_backoff_s=4.0)
    run(a)
    backoffs = sleeps.waits[:6]
    ceilings = [1, 2, 4, 4, 4, 4]
    assert all(c / 2 <= w <= c for w, c in zip(backoffs, ceilings, strict=True))
    assert sleeps.waits[6] == 1.0 and a.failures == 0 and a.beats == 1


def test_a_refused_token_is_reported_and_retried_slowly() -> None:
    router, sleeps = Router(401, 401, 401), Sleeps(3)
    a = agent(router, sleeps, interval_s=1.0, max_backoff_s=8.0)
    run(a)
    assert a.beats == 0 and a.failures == 3
    assert a.last_error is not None and a.last_error.startswith("401")


def test_nothing_is_announced_before_the_worker_listens() -> None:
    router, sleeps = Router(), Sleeps(3)
    listening = iter([False, False, True])
    a = agent(router, sleeps, ready=lambda: next(listening))
    run(a)
    assert sleeps.waits[:2] == [0.05, 0.05]
    assert len([c for c in router.calls if c[0] == "PUT"]) == 1


def test_leaving_an_unreachable_router_returns_at_once() -> None:
    a = agent(Router(0), Sleeps(1))
    assert run_async(a.leave) is False


def test_bad_settings_fail_at_construction() -> None:
    with pytest.raises(ValueError):
        agent(Router(), Sleeps(1), interval_s=0)


def test_the_edge_app_runs_its_agent_while_it_serves_and_leaves_on_shutdown(
    models: ModelSet,
) -> None:
    router = Router()
    beats = asyncio.Event()

    async def sleep(seconds: float) -> None:
        beats.set()
        await asyncio.sleep(0)

    a = FleetAgent("http://router:8000", "s3cret", "site-a", MEMBER,
                   transport=httpx.MockTransport(router), sleep=sleep)
    model = OnnxModel(models.student_int8, threads=1)
    app = create_app(EdgeWorker(model, name="site-a"), a)

    async def main() -> None:
        async with app.router.lifespan_context(app):
            await asyncio.wait_for(beats.wait(), 5)
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                       base_url="http://edge")
            async with client:
                body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                    "data": np.zeros(64).tolist()}]}
                response = await client.post("/v2/models/digits/infer", json=body)
            assert response.status_code == 200
        assert router.calls[0][0] == "PUT" and router.calls[-1][0] == "DELETE"

    run_async(main)

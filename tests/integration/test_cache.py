"""The router's response cache on the real stack: hits, bypass, the quality rule, coalescing.

One stack of its own with the cache enabled in its policy and slow emulated links (60 ms
to the edges, 80 ms to the cloud), so that a call upstream is long next to a hit and 50
identical requests sent at once all arrive while the first one's call is in flight.
Upstream calls are counted by the edge workers' own statistics.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edgeroute.dataset import digits_split
from router.policy import PolicyDocument
from tests.stackkit import RunningStack, running_stack, stack_config

pytestmark = pytest.mark.integration

PORT, EDGE_PORTS = 19700, (19701, 19702)
DASHBOARD = Path(__file__).resolve().parents[2] / "infra/grafana/edgeroute.json"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, models: object) -> Iterator[RunningStack]:
    config = stack_config(PORT, EDGE_PORTS)
    config["cloud"]["link"] = {"base_ms": 80.0, "jitter_ms": 1.0}
    for edge in config["edges"]:
        edge["link"] = {"base_ms": 60.0, "jitter_ms": 1.0}
    policy = PolicyDocument().model_dump(mode="json")
    policy["cache"] = {"enabled": True, "ttl_s": 600, "max_bytes": 1 << 20}
    policy["anonymous"]["allowed_policies"] = sorted(policy["policies"])
    with running_stack(tmp_path_factory.mktemp("cache"), config, policy) as running:
        yield running


ROWS = digits_split().x_test


def body(row: int, **parameters: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                        "data": ROWS[row].tolist()}],
            "parameters": {"deadline_ms": 2000, **parameters}}


def infer(stack: RunningStack, row: int, headers: dict[str, str] | None = None,
          **parameters: Any) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    response = httpx.post(f"{stack.endpoint}/v2/models/digits/infer", json=body(row, **parameters),
                          headers=headers, timeout=10)
    elapsed_ms = (time.perf_counter() - started) * 1000
    assert response.status_code == 200, response.text
    return response.json(), elapsed_ms


def edge_executions(stack: RunningStack) -> int:
    """Inferences the edge workers ran, by their own statistics."""
    urls = [p["url"] for p in stack.state["processes"] if p["kind"] == "edge"]
    return sum(httpx.get(f"{url}/v2/models/digits/stats", timeout=5).json()
               ["model_stats"][0]["execution_count"] for url in urls)


def test_the_second_identical_request_is_a_free_faster_hit(stack: RunningStack) -> None:
    missed, hit = [], []
    for row in range(100, 105):
        first, first_ms = infer(stack, row)
        second, second_ms = infer(stack, row)
        assert "cache_hit" not in first["parameters"] and first["parameters"]["cost_usd"] > 0
        params = second["parameters"]
        assert params["cache_hit"] is True and params["coalesced"] is False
        assert params["cost_usd"] == 0
        assert params["saved_usd"] == pytest.approx(first["parameters"]["cost_usd"])
        assert (params["target"], params["model_version"]) == (
            first["parameters"]["target"], first["parameters"]["model_version"])
        assert second["outputs"] == first["outputs"]
        missed.append(first_ms)
        hit.append(second_ms)
    assert statistics.median(hit) < statistics.median(missed), (hit, missed)
    ledger = stack.admin_get("/v1/targets")["ledger"]["total"]
    assert ledger["reused"] >= 5 and ledger["saved_usd"] > 0


def test_no_cache_is_routed_afresh(stack: RunningStack) -> None:
    infer(stack, 200, policy="always-edge")
    before = edge_executions(stack)
    again, _ = infer(stack, 200, headers={"cache-control": "no-cache"}, policy="always-edge")
    assert "cache_hit" not in again["parameters"] and again["parameters"]["cost_usd"] > 0
    assert edge_executions(stack) == before + 1


def test_quality_high_is_never_answered_with_the_small_models_answer(
        stack: RunningStack) -> None:
    small, _ = infer(stack, 300, policy="always-edge")
    assert small["parameters"]["tier"] == "edge"
    high, _ = infer(stack, 300, quality="high")
    assert "cache_hit" not in high["parameters"]
    assert high["parameters"]["tier"] == "cloud"
    again, _ = infer(stack, 300, quality="high")
    assert again["parameters"]["cache_hit"] is True
    assert again["parameters"]["tier"] == "cloud"


def test_fifty_identical_requests_at_once_make_one_upstream_call(stack: RunningStack) -> None:
    before = edge_executions(stack)

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(timeout=10, limits=limits) as client:
            request = body(400, policy="always-edge")
            return list(await asyncio.gather(*[
                client.post(f"{stack.endpoint}/v2/models/digits/infer", json=request)
                for _ in range(50)]))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 50
    params = [r.json()["parameters"] for r in responses]
    cache = stack.admin_get("/v1/targets")["cache"]
    assert edge_executions(stack) == before + 1, (cache, params)
    called = [p for p in params if not (p.get("cache_hit") or p.get("coalesced"))]
    assert len(called) == 1 and called[0]["cost_usd"] > 0
    assert sum(bool(p.get("coalesced")) for p in params) >= 1
    labels = {tuple(np.ravel(o["data"])) for r in responses for o in r.json()["outputs"]
              if o["name"] == "label"}
    assert len(labels) == 1


def test_the_dashboards_cache_panels_have_series_once_the_cache_answers(
        stack: RunningStack) -> None:
    """Every series a cache panel of the Grafana dashboard reads is exported once the cache
    has answered (the session stack, whose Prometheus checks the other panels, runs with
    the cache off)."""
    infer(stack, 300)
    infer(stack, 300)
    panels = json.loads(DASHBOARD.read_text())["panels"]
    exprs = [t["expr"] for row in panels for p in [row, *row.get("panels", [])]
             for t in p.get("targets", [])]
    wanted = {name for expr in exprs for name in re.findall(r"ray_edgeroute_cache_\w+", expr)}
    assert wanted, "the dashboard has no cache panel"
    deadline = time.monotonic() + 30
    while True:
        scraped = httpx.get(stack.state["metrics_url"], timeout=10).text
        exported = set(re.findall(r"^(ray_edgeroute_cache_\w+)\{", scraped, re.MULTILINE))
        if wanted <= exported:
            break
        assert time.monotonic() < deadline, f"not exported: {sorted(wanted - exported)}"
        time.sleep(1)

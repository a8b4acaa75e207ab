"""Serverless cloud tier: the cloud deployment idles at zero replicas; deadline-critical
requests go to the edge meanwhile, and a request that can wait wakes it (a cold start).
Then the edge congests (workers emulate a device needing 40 ms a request) and the excess
spills to the cloud."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from edgeroute.config import StackConfig
from edgeroute.dataset import digits_split

pytestmark = pytest.mark.integration


def _infer(endpoint: str, i: int, timeout_s: float, **parameters: Any) -> httpx.Response:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                        "data": digits_split().x_test[i].tolist()}], "parameters": parameters}
    return httpx.post(f"{endpoint}/v2/models/digits/infer", json=body, timeout=timeout_s)


def test_cloud_scales_from_zero_while_the_edge_serves(tmp_path: Path, models: object) -> None:
    document = StackConfig().model_dump(mode="json")
    document["port"] = 18800
    for edge, port in zip(document["edges"], (18901, 18902), strict=True):
        edge["port"] = port
        edge["service_delay_ms"] = 40.0
    document["cloud"]["autoscaling"] = {"min_replicas": 0, "max_replicas": 1,
                                        "initial_replicas": 0, "upscale_delay_s": 0,
                                        "downscale_delay_s": 600}
    config = tmp_path / "stack.yaml"
    config.write_text(yaml.safe_dump(document))
    state = tmp_path / "state.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "edgeroute", "up", "--config", str(config), "--state-file",
         str(state)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not state.exists():
            assert process.poll() is None and time.monotonic() < deadline, "stack did not start"
            time.sleep(0.5)
        endpoint = "http://127.0.0.1:18800"
        cloud = httpx.get(f"{endpoint}/v1/targets", timeout=5).json()["targets"][0]
        assert cloud["name"] == "cloud" and cloud["estimates"]["replicas"] == 0
        for i in range(10):
            critical = _infer(endpoint, i, 10, deadline_ms=200)
            assert critical.status_code == 200
            assert critical.json()["parameters"]["tier"] == "edge"
        started = time.monotonic()
        woken = _infer(endpoint, 20, 120, deadline_ms=60_000, quality="high")
        cold_start_s = time.monotonic() - started
        assert woken.status_code == 200, woken.text
        assert woken.json()["parameters"]["tier"] == "cloud"
        time.sleep(5)  # the router reads replica counts every 2 s
        view = httpx.get(f"{endpoint}/v1/targets", timeout=5).json()
        cloud = view["targets"][0]
        assert cloud["estimates"]["replicas"] == 1
        assert cloud["estimates"]["cold_starts"] >= 1, "the router did not learn the cold start"
        assert view["ledger"]["targets"]["cloud"]["provisioned_s"] > 0
        print(f"cold start seen by the client: {cold_start_s:.1f} s; "
              f"ledger: {view['ledger']['targets']['cloud']}")
        outcomes = asyncio.run(_burst(endpoint, rate_rps=60, duration_s=5, deadline_ms=300))
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=90)
    assert code == 0, "edgeroute up did not stop cleanly on SIGTERM"
    assert not state.exists()
    answered = [tier for status, tier in outcomes if status == 200]
    spilled = answered.count("cloud") / max(len(answered), 1)
    print(f"edge congested at 60 rps (capacity 50): {len(answered)} of {len(outcomes)} "
          f"answered, {spilled:.0%} by the cloud")
    assert len(answered) >= 0.8 * len(outcomes)
    assert spilled >= 0.2, "the congested edge did not spill to the cloud"


async def _burst(endpoint: str, *, rate_rps: float, duration_s: float,
                 deadline_ms: float) -> list[tuple[int, str]]:
    rows = digits_split().x_test
    async with httpx.AsyncClient(timeout=deadline_ms / 1000 + 5) as client:

        async def one(i: int) -> tuple[int, str]:
            body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                "data": rows[i % len(rows)].tolist()}],
                    "parameters": {"deadline_ms": deadline_ms}}
            response = await client.post(f"{endpoint}/v2/models/digits/infer", json=body)
            return response.status_code, str(response.json().get("parameters", {}).get("tier"))

        start = time.monotonic()
        tasks = []
        for i in range(int(rate_rps * duration_s)):
            await asyncio.sleep(max(start + i / rate_rps - time.monotonic(), 0))
            tasks.append(asyncio.create_task(one(i)))
        return list(await asyncio.gather(*tasks))

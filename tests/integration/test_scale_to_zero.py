"""Serverless cloud tier: the cloud deployment idles at zero replicas; deadline-critical
requests go to the edge meanwhile, and a request that can wait wakes it (a cold start).
Then the edge congests (workers emulate a device needing 80 ms a request, 25 rps for
the two) and the excess spills to the cloud. The rate stays well below what the machine's
own cores carry, so that what is measured is the edge's congestion."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeroute.dataset import digits_split
from tests.stackkit import open_loop, running_stack, stack_config

pytestmark = pytest.mark.integration


def _infer(endpoint: str, i: int, timeout_s: float, **parameters: Any) -> httpx.Response:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                        "data": digits_split().x_test[i].tolist()}], "parameters": parameters}
    return httpx.post(f"{endpoint}/v2/models/digits/infer", json=body, timeout=timeout_s)


def test_cloud_scales_from_zero_while_the_edge_serves(tmp_path: Path, models: object) -> None:
    config = stack_config(18800, (18901, 18902))
    for edge in config["edges"]:
        edge["service_delay_ms"] = 80.0
    config["cloud"]["autoscaling"] = {"min_replicas": 0, "max_replicas": 1,
                                      "initial_replicas": 0, "upscale_delay_s": 0,
                                      "downscale_delay_s": 600}
    with running_stack(tmp_path, config, stop_signal=signal.SIGTERM) as stack:
        endpoint = stack.endpoint
        cloud = stack.admin_get("/v1/targets")["targets"][0]
        assert cloud["name"] == "cloud" and cloud["estimates"]["replicas"] == 0
        for i in range(10):
            critical = _infer(endpoint, i, 10, deadline_ms=500)
            assert critical.status_code == 200, critical.text
            assert critical.json()["parameters"]["tier"] == "edge"
        started = time.monotonic()
        woken = _infer(endpoint, 20, 120, deadline_ms=60_000, quality="high")
        cold_start_s = time.monotonic() - started
        assert woken.status_code == 200, woken.text
        assert woken.json()["parameters"]["tier"] == "cloud"
        time.sleep(5)  # the router reads replica counts every 2 s
        view = stack.admin_get("/v1/targets")
        cloud = view["targets"][0]
        assert cloud["estimates"]["replicas"] == 1
        assert cloud["estimates"]["cold_starts"] >= 1, "the router did not learn the cold start"
        assert view["ledger"]["targets"]["cloud"]["provisioned_s"] > 0
        print(f"cold start seen by the client: {cold_start_s:.1f} s; "
              f"ledger: {view['ledger']['targets']['cloud']}")
        outcomes = asyncio.run(open_loop(endpoint, 35, 6, field="tier", deadline_ms=300))
    answered = [tier for status, tier in outcomes if status == 200]
    spilled = answered.count("cloud") / max(len(answered), 1)
    errors = Counter(f"{status} {error[:90]}" for status, error in outcomes if status != 200)
    print(f"edge congested at 35 rps (capacity 25): {len(answered)} of {len(outcomes)} "
          f"answered, {spilled:.0%} by the cloud; errors {dict(errors)}")
    assert len(answered) >= 0.8 * len(outcomes), errors
    assert spilled >= 0.2, "the congested edge did not spill to the cloud"

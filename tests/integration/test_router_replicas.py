"""Two router replicas behind the Serve proxy: each learns on its own, both serve."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml

from edgeroute.config import StackConfig
from edgeroute.dataset import digits_split

pytestmark = pytest.mark.integration
PORT = 19000


async def _load(rate_rps: float, duration_s: float) -> list[tuple[int, str]]:
    rows = digits_split().x_test
    async with httpx.AsyncClient(timeout=10) as client:

        async def one(i: int) -> tuple[int, str]:
            body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                "data": rows[i % len(rows)].tolist()}],
                    "parameters": {"deadline_ms": 1000}}
            response = await client.post(f"http://127.0.0.1:{PORT}/v2/models/digits/infer",
                                         json=body)
            params = response.json().get("parameters", {})
            return response.status_code, str(params.get("router_replica", ""))

        start = time.monotonic()
        tasks = []
        for i in range(int(rate_rps * duration_s)):
            await asyncio.sleep(max(start + i / rate_rps - time.monotonic(), 0))
            tasks.append(asyncio.create_task(one(i)))
        return list(await asyncio.gather(*tasks))


def test_two_router_replicas_share_the_load(tmp_path: Path, models: object) -> None:
    document = StackConfig().model_dump(mode="json")
    document["port"] = PORT
    document["router"]["num_replicas"] = 2
    for edge, port in zip(document["edges"], (19101, 19102), strict=True):
        edge["port"] = port
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
        outcomes = asyncio.run(_load(25, 6))
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=90)
    assert code == 0
    assert {status for status, _ in outcomes} == {200}
    replicas = Counter(replica for _, replica in outcomes)
    assert len(replicas) == 2, f"one replica served everything: {replicas}"
    assert min(replicas.values()) >= len(outcomes) // 5

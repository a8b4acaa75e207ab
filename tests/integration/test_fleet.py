"""The edge fleet on the real stack: workers join a running router, serve, vanish, leave.

Own stack (ports 19400-19413) with two router replicas, so that a registration
reaching one replica must reach the other through the shared registry. Three
``edgeroute edge --join`` processes join with the fleet token from the state
file; round-robin traffic (a named policy anonymous callers may use here)
spreads over every target, so each member is seen to serve.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeroute.dataset import digits_split
from router.policy import PolicyDocument
from tests.stackkit import RunningStack, open_loop, ray_session, running_stack, stack_config

pytestmark = pytest.mark.integration

PORT = 19400
EDGE_PORTS = (19401, 19402)
FLEET = {"fleet-1": 19411, "fleet-2": 19412, "fleet-3": 19413}
TTL_S = 3.0
SYNC_S = 1.0


def policy() -> dict[str, Any]:
    document = PolicyDocument().model_dump(mode="json")
    document["anonymous"]["allowed_policies"] = sorted(document["policies"])
    return document


@contextmanager
def workers(stack: RunningStack, log_dir: Path) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """The fleet workers, joined with the stack's token (from the environment, not argv)."""
    env = {**os.environ, "EDGEROUTE_FLEET_TOKEN": stack.state["fleet_token"]}
    started: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, port in FLEET.items():
            with open(log_dir / f"{name}.log", "wb") as log:
                started[name] = subprocess.Popen(
                    [sys.executable, "-m", "edgeroute", "edge", "--model", "student-int8",
                     "--name", name, "--port", str(port), "--join", stack.endpoint,
                     "--heartbeat-interval-s", "1"],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        yield started
    finally:
        for process in started.values():
            if process.poll() is None:
                process.terminate()
        for process in started.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def infer(client: httpx.Client, endpoint: str, row: list[float]) -> httpx.Response:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": row}],
            "parameters": {"policy": "round-robin", "deadline_ms": 1000}}
    return client.post(f"{endpoint}/v2/models/digits/infer", json=body)


def first_traffic(stack: RunningStack, since: float,
                  timeout_s: float) -> tuple[dict[str, float], set[str]]:
    """Round-robin requests until every fleet member has served one: when each first did
    (seconds after ``since``) and which router replicas routed to fleet members."""
    rows = digits_split().x_test
    seen: dict[str, float] = {}
    replicas: set[str] = set()
    with httpx.Client(timeout=5) as client:
        for i in range(100_000):
            if set(seen) == set(FLEET) and len(replicas) == 2:
                break
            assert time.monotonic() - since < timeout_s, f"fleet traffic so far: {seen}"
            response = infer(client, stack.endpoint, rows[i % len(rows)].tolist())
            assert response.status_code == 200, response.text
            params = response.json()["parameters"]
            if params["target"] in FLEET:
                seen.setdefault(params["target"], round(time.monotonic() - since, 2))
                replicas.add(params["router_replica"])
            time.sleep(0.02)
    return seen, replicas


def fleet_names(stack: RunningStack) -> set[str]:
    body = httpx.get(f"{stack.endpoint}/v1/fleet", timeout=5).json()
    return {m["name"] for m in body["members"]}


def wait_gone(stack: RunningStack, name: str, timeout_s: float) -> float:
    """Seconds until neither the registry nor several router answers in a row list ``name``."""
    started, clear = time.monotonic(), 0
    while clear < 4:
        assert time.monotonic() - started < timeout_s, f"{name} still listed"
        listed = name in stack.targets() or name in fleet_names(stack)
        clear = 0 if listed else clear + 1
        time.sleep(0.05)
    return time.monotonic() - started


def put(stack: RunningStack, name: str, token: str | None, body: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.put(f"{stack.endpoint}/v1/fleet/{name}", json=body, headers=headers,
                     timeout=5)


def test_workers_join_serve_vanish_and_leave_without_a_redeploy(
    tmp_path: Path, models: object
) -> None:
    config = stack_config(PORT, EDGE_PORTS)
    config["router"].update(num_replicas=2, fleet_ttl_ms=TTL_S * 1000,
                            fleet_sync_interval_ms=SYNC_S * 1000)
    with running_stack(tmp_path, config, policy()) as stack:
        token = stack.state["fleet_token"]
        assert token and token not in stack.log.read_text()

        good = {"url": "http://127.0.0.1:19499"}
        assert put(stack, "intruder", None, good).status_code == 401
        refused = put(stack, "intruder", "wrong-token", good)
        assert refused.status_code == 401 and "error" in refused.json()
        assert put(stack, "intruder", token, {"url": "ftp://x"}).status_code == 400
        assert put(stack, "intruder", token, ["not", "an", "object"]).status_code == 400
        assert put(stack, "edge-a", token, good).status_code == 409
        assert "intruder" not in fleet_names(stack)

        launched = time.monotonic()
        with workers(stack, tmp_path) as processes:
            seen, replicas = first_traffic(stack, launched, timeout_s=90)
            print(f"\nfleet: seconds from starting the worker processes to each one's first "
                  f"request {seen}; routed by {len(replicas)} router replicas")
            assert fleet_names(stack) == set(FLEET)
            listed = subprocess.run(
                [sys.executable, "-m", "edgeroute", "fleet", "list", "--state-file",
                 str(stack.state_file)], capture_output=True, text=True, timeout=30)
            assert listed.returncode == 0 and all(n in listed.stdout for n in FLEET)

            killed = threading.Event()

            def kill(elapsed_s: float) -> None:
                if elapsed_s >= 2.0 and not killed.is_set():
                    processes["fleet-2"].send_signal(signal.SIGKILL)
                    killed.set()

            with ThreadPoolExecutor(1) as pool:
                load = pool.submit(asyncio.run, open_loop(
                    stack.endpoint, 20, 10, on_send=kill, policy="round-robin",
                    deadline_ms=1000))
                assert killed.wait(timeout=30)
                drop_s = wait_gone(stack, "fleet-2", timeout_s=30)
                outcomes = load.result(timeout=60)
            failed = [o for o in outcomes if o[0] != 200]
            placed = Counter(target for status, target in outcomes if status == 200)
            print(f"fleet: fleet-2 SIGKILLed under 20 rps round-robin; gone from every view "
                  f"{drop_s:.2f} s after the kill (TTL {TTL_S:g} s + sync {SYNC_S:g} s); "
                  f"failed {len(failed)} of {len(outcomes)}; placements {dict(placed)}")
            assert not failed, failed
            assert drop_s <= TTL_S + SYNC_S + 3.0  # slack: polling a busy 2-core machine
            assert placed["fleet-1"] and placed["fleet-3"]

            processes["fleet-1"].terminate()
            assert processes["fleet-1"].wait(timeout=15) in (0, -signal.SIGTERM)
            leave_s = wait_gone(stack, "fleet-1", timeout_s=30)
            print(f"fleet: fleet-1 stopped with SIGTERM left the fleet; gone {leave_s:.2f} s "
                  f"after it exited")
            assert leave_s < TTL_S, "a clean shutdown should leave, not wait for the TTL"
            assert fleet_names(stack) == {"fleet-3"}
            assert "fleet-3" in stack.targets()
        session = ray_session(stack.state["ray_address"])
        assert session is not None
        logs = Path("/tmp/ray") / session.decode() / "logs"
        secrets = [stack.state["fleet_token"].encode(), stack.state["admin_token"].encode()]
        leaked = [p for p in logs.rglob("*")
                  if p.is_file() and any(s in p.read_bytes() for s in secrets)]
        assert not leaked, f"a token is in Ray's logs: {leaked}"

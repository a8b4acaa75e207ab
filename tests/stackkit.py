"""Running the real stack from tests: ``edgeroute up`` in a subprocess, and open-loop load.

Shared by ``tests/integration`` and ``tests/chaos``. :func:`running_stack` starts a
stack as a user does and on exit stops it with a signal, as Ctrl-C would, and
checks that nothing is left behind (edge workers, Ray processes of its own
session, the state file). Every stack of the test suite uses its own ports.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from edgeroute.config import StackConfig
from edgeroute.dataset import digits_split
from edgeroute.tools.ingress import process_argvs

START_TIMEOUT_S = 240


def _ray_processes() -> dict[int, bytes]:
    """Ray's GCS servers and raylets on this machine: pid -> command line."""
    lines = {pid: b" ".join(argv) for pid, argv in process_argvs().items()}
    return {pid: line for pid, line in lines.items() if b"gcs_server" in line or b"raylet" in line}


def ray_session(gcs_address: str) -> bytes | None:
    """The session name of the running cluster at ``gcs_address`` (its raylet says)."""
    needle = b"=" + gcs_address.encode() + b" "
    for cmdline in _ray_processes().values():
        match = re.search(rb"--session-name=(\S+)", cmdline)
        if needle in cmdline and match:
            return match.group(1)
    return None


def ray_pids(session: bytes) -> set[int]:
    """The Ray processes of one session (a stack run elsewhere on the machine is not ours)."""
    return {pid for pid, cmdline in _ray_processes().items()
            if b"--session-name=" + session + b" " in cmdline}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return status.exists() and status.read_text().split(")")[-1].split()[0] != "Z"


class RunningStack:
    def __init__(self, process: subprocess.Popen[bytes], state_file: Path, log: Path) -> None:
        self.process = process
        self.state_file = state_file
        self.log = log

    @property
    def state(self) -> dict[str, Any]:
        return json.loads(self.state_file.read_text())

    @property
    def endpoint(self) -> str:
        return str(self.state["endpoint"])

    def pid(self, name: str) -> int:
        return next(p["pid"] for p in self.state["processes"] if p["name"] == name)

    @property
    def admin(self) -> dict[str, str]:
        """The header the router's admin routes need (the token from the state file)."""
        return {"authorization": f"Bearer {self.state['admin_token']}"}

    def admin_get(self, path: str) -> Any:
        """``GET path`` on the router with the admin token; the JSON answer."""
        return httpx.get(f"{self.endpoint}{path}", headers=self.admin, timeout=5).json()

    def targets(self) -> dict[str, dict[str, Any]]:
        body = self.admin_get("/v1/targets")
        return {t["name"]: t for t in body["targets"]}


def router_pids(stack: RunningStack) -> list[int]:
    """The router replica processes of this stack (workers its own raylet started)."""
    session = ray_session(stack.state["ray_address"])
    raylets = ray_pids(session) if session else set()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            parent = int((entry / "stat").read_text().split(")")[-1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if b"ServeReplica:edgeroute:router" in cmdline and parent in raylets:
            found.append(int(entry.name))
    return found


def stack_config(port: int, edge_ports: tuple[int, int]) -> dict[str, Any]:
    """The embedded default stack on its own ports (so stacks of different tests never meet)."""
    document = StackConfig().model_dump(mode="json")
    document["port"] = port
    for edge, edge_port in zip(document["edges"], edge_ports, strict=True):
        edge["port"] = edge_port
    return document


@contextmanager
def running_stack(workdir: Path, config: dict[str, Any], policy: dict[str, Any] | None = None,
                  stop_signal: signal.Signals = signal.SIGINT,
                  state_name: str = "state.json") -> Iterator[RunningStack]:
    """``edgeroute up`` in a subprocess, as a user runs it; on exit it is stopped with
    ``stop_signal`` and must leave no edge worker, Ray process or state file behind (Ray
    processes are the stack's own only when it started Ray: not with ``ray_address``).
    The state file is ``workdir/state_name``."""
    config_file = workdir / "stack.yaml"
    config_file.write_text(yaml.safe_dump(config))
    argv = [sys.executable, "-m", "edgeroute", "up", "--config", str(config_file)]
    if policy is not None:
        policy_file = workdir / "policy.yaml"
        policy_file.write_text(yaml.safe_dump(policy))
        argv += ["--policy", str(policy_file)]
    state_file, log = workdir / state_name, workdir / "up.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([*argv, "--state-file", str(state_file)], stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not state_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"edgeroute up did not start:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)
    running = RunningStack(process, state_file, log)
    children = [p["pid"] for p in running.state["processes"] if p["kind"] == "edge"]
    gcs_address = running.state.get("ray_address")
    session = ray_session(gcs_address) if gcs_address and not config.get("ray_address") else None
    try:
        yield running
    finally:
        process.send_signal(stop_signal)
        try:
            code = process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail(f"edgeroute up did not stop within 90 s of {stop_signal.name}")
    current = [p["pid"] for p in json.loads(state_file.read_text())["processes"]
               if p["kind"] == "edge"] if state_file.exists() else []
    leftovers = [pid for pid in {*children, *current} if alive(pid)]
    leftovers += sorted(ray_pids(session)) if session else []
    assert code == 0, log.read_text()[-4000:]
    assert not leftovers, f"processes left behind: {leftovers}"
    assert not state_file.exists(), "the state file outlived the stack"


async def open_loop(endpoint: str, rate_rps: float, duration_s: float, *, field: str = "target",
                    on_send: Callable[[float], None] | None = None,
                    **parameters: Any) -> list[tuple[int, str]]:
    """Requests sent on a fixed schedule whatever the answers (open loop), each with the
    given request ``parameters``; returns (status, the response parameter ``field`` or the
    error). ``on_send(elapsed_s)`` runs before each send (to inject a fault on time)."""
    rows = digits_split().x_test
    deadline_s = float(parameters.get("deadline_ms", 1000)) / 1000
    async with httpx.AsyncClient(timeout=deadline_s + 5) as client:

        async def one(i: int) -> tuple[int, str]:
            body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                "data": rows[i % len(rows)].tolist()}],
                    "parameters": parameters}
            response = await client.post(f"{endpoint}/v2/models/digits/infer", json=body)
            document = response.json()
            return response.status_code, str(
                document.get("parameters", {}).get(field, document.get("error", "")))

        start = time.monotonic()
        tasks = []
        for i in range(int(rate_rps * duration_s)):
            await asyncio.sleep(max(start + i / rate_rps - time.monotonic(), 0))
            if on_send is not None:
                on_send(time.monotonic() - start)
            tasks.append(asyncio.create_task(one(i)))
        return list(await asyncio.gather(*tasks))

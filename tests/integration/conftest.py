"""The real stack for integration tests: ``edgeroute up`` as a user runs it, in a subprocess.

The stack uses its own ports and a test config in which the edge is the more
expensive tier, so that placement by deadline and by price can be told apart:
a relaxed deadline goes to the (cheaper) cloud, a tight one to the (nearer)
edge. Teardown sends SIGTERM, as Ctrl-C would, and checks nothing is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from edgeroute.config import StackConfig
from router.policy import PolicyDocument

PORT = 18000
EDGE_PORTS = (18101, 18102)
START_TIMEOUT_S = 240


def test_config() -> dict[str, Any]:
    document = StackConfig().model_dump(mode="json")
    document["port"] = PORT
    document["cloud"]["link"] = {"base_ms": 150.0, "jitter_ms": 3.0}
    for edge, port, base_ms in zip(document["edges"], EDGE_PORTS, (4.0, 12.0), strict=True):
        edge["port"] = port
        edge["link"] = {"base_ms": base_ms, "jitter_ms": 1.0}
    return document


def test_policy() -> dict[str, Any]:
    """The default policy with the edge priced above the cloud; anonymous callers may use
    every named policy (a test stack)."""
    document = PolicyDocument().model_dump(mode="json")
    document["prices"]["edge"] = {"usd_per_inference": 1e-5}
    document["prices"]["cloud"] = {"usd_per_compute_hour": 2.5, "usd_per_request": 1e-7}
    document["anonymous"]["allowed_policies"] = sorted(document["policies"])
    return document


def ray_pids() -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"gcs_server" in cmdline or b"raylet" in cmdline:
            pids.add(int(entry.name))
    return pids


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

    def targets(self) -> dict[str, dict[str, Any]]:
        body = httpx.get(f"{self.endpoint}/v1/targets", timeout=5).json()
        return {t["name"]: t for t in body["targets"]}


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, models: Any) -> Iterator[RunningStack]:
    workdir = tmp_path_factory.mktemp("stack")
    config = workdir / "stack.yaml"
    config.write_text(yaml.safe_dump(test_config()))
    policy = workdir / "policy.yaml"
    policy.write_text(yaml.safe_dump(test_policy()))
    state_file = workdir / "state.json"
    log = workdir / "up.log"
    ray_before = ray_pids()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "edgeroute", "up", "--config", str(config),
             "--policy", str(policy), "--state-file", str(state_file)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while not state_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"edgeroute up did not start:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)
    running = RunningStack(process, state_file, log)
    children = [p["pid"] for p in running.state["processes"] if p["kind"] == "edge"]
    yield running
    process.send_signal(signal.SIGINT)
    try:
        code = process.wait(timeout=90)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("edgeroute up did not stop within 90 s of SIGINT")
    current = [p["pid"] for p in json.loads(state_file.read_text())["processes"]
               if p["kind"] == "edge"] if state_file.exists() else []
    leftovers = [pid for pid in {*children, *current} if alive(pid)]
    leftovers += sorted(ray_pids() - ray_before)
    assert code == 0, log.read_text()[-4000:]
    assert not leftovers, f"processes left behind: {leftovers}"
    assert not state_file.exists(), "the state file outlived the stack"

"""``serve deploy`` of the generated Serve config brings up the app ``edgeroute up`` does.

The documented path (docs/operations.md, "Without edgeroute up"), step by
step: Ray started with ``ray start --head`` with the dashboard and token
authentication (a generated token), the edge workers as ``edgeroute edge``
processes, the Serve config printed by ``edgeroute infra serve-config`` for a
copy of ``infra/stack.yaml`` on this test's own ports, then ``serve deploy``.
The tokens the generated config leaves out come from the Ray node's
environment. At the end the cluster is stopped and nothing of it may be left.
``ray stop`` would stop every Ray on the machine (other stacks too), so the
test stops the processes of its own cluster only.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from edgeroute.config import StackConfig
from edgeroute.dataset import digits_split
from edgeroute.models.store import ModelSet
from edgeroute.tools.ingress import reap_haproxy
from edgeroute.tools.stack import Stack, port_free
from router.policy import PolicyDocument, policy_digest
from tests.stackkit import alive

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GCS, DASHBOARD = 19500, 19501
RAY_PORTS = {"--port": GCS, "--dashboard-port": DASHBOARD, "--ray-client-server-port": 19502,
             "--node-manager-port": 19503, "--object-manager-port": 19504,
             "--metrics-export-port": 19505, "--dashboard-agent-listen-port": 19506,
             "--dashboard-agent-grpc-port": 19507, "--runtime-env-agent-port": 19508,
             "--min-worker-port": 19520, "--max-worker-port": 19599}
ROUTER, EDGE_PORTS, FLEET_PORT = 19510, {"edge-a": 19511, "edge-b": 19512}, 19513


Process = tuple[int, str]
"""A pid and its start time (``/proc/PID/stat`` field 22): a reused pid is another process."""


def _started(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[19]
    except (OSError, IndexError):
        return None


def cluster_processes(temp_dir: Path) -> set[Process]:
    """The processes of the cluster whose files live in ``temp_dir`` or that talk to its GCS
    (the Ray client server names only that), and their children."""
    ours: set[int] = set()
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
            parents[int(entry.name)] = int((entry / "stat").read_text().split(")")[-1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if (f"{temp_dir}/" in cmdline or f"={temp_dir} " in cmdline
                or re.search(rf"--(gcs[-_])?address=\S+:{GCS}\b", cmdline)):
            ours.add(int(entry.name))
    pids = ours | {pid for pid, parent in parents.items() if parent in ours}
    return {(pid, started) for pid in pids if (started := _started(pid)) is not None}


def running(process: Process) -> bool:
    return _started(process[0]) == process[1] and alive(process[0])


def stop_cluster(temp_dir: Path) -> list[int]:
    """SIGTERM the cluster's processes, SIGKILL what is left after 10 s; returns survivors.

    Workers are found as the raylet's children, so they are listed before it dies."""
    known = cluster_processes(temp_dir)
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        known |= cluster_processes(temp_dir)
        for process in filter(running, known):
            with suppress(ProcessLookupError):
                os.kill(process[0], sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and any(map(running, known)):
            time.sleep(0.25)
    return sorted(pid for pid, _ in filter(running, known | cluster_processes(temp_dir)))


@contextmanager
def ray_head(env: dict[str, str]) -> Iterator[Path]:
    """``ray start --head`` with the dashboard, token auth and this test's ports."""
    temp_dir = Path(tempfile.mkdtemp(prefix="er-", dir="/tmp"))  # short: unix socket paths
    argv = [str(BIN / "ray"), "start", "--head", "--include-dashboard=true",
            f"--temp-dir={temp_dir}", "--num-cpus=2", "--disable-usage-stats",
            *(f"{flag}={port}" for flag, port in RAY_PORTS.items())]
    try:
        started = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        yield temp_dir
    finally:
        survivors = stop_cluster(temp_dir)
        reap_haproxy({ROUTER})  # a child of a Serve actor, not of the raylet
        subprocess.run(["rm", "-rf", str(temp_dir)], check=False)
        assert not survivors, f"Ray processes left behind: {survivors}"
        busy = [p for p in (GCS, DASHBOARD, RAY_PORTS["--ray-client-server-port"], ROUTER)
                if not port_free("127.0.0.1", p)]
        assert not busy, f"ports still in use after the cluster stopped: {busy}"


@contextmanager
def processes(*argvs: list[str], env: dict[str, str], log_dir: Path) -> Iterator[list[Any]]:
    """Processes (the worker name, ``argv[5]``, names each log); stopped on exit."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        for argv in argvs:
            with open(log_dir / f"{argv[5]}.log", "wb") as log:
                started.append(subprocess.Popen(argv, env=env, stdout=log,
                                                stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL))
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.terminate()
        for process in started:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
    assert all(process.poll() is not None for process in started)


def edge_argv(name: str, model: str, port: int, *extra: str) -> list[str]:
    return [str(BIN / "edgeroute"), "edge", "--model", model, "--name", name,
            "--port", str(port), *extra]


def wait_for(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            found = check()
        except (httpx.HTTPError, ValueError, KeyError):
            found = None
        if found:
            return found
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def every_target_reached(endpoint: str, token: str) -> dict[str, dict[str, Any]] | None:
    targets = httpx.get(f"{endpoint}/v1/targets", headers={"authorization": f"Bearer {token}"},
                        timeout=5).json()["targets"]
    if all(t["estimates"]["observed"] and t["available"] for t in targets):
        return {t["name"]: t for t in targets}
    return None


def test_serve_deploy_of_the_generated_config_brings_up_the_edgeroute_app(
    tmp_path: Path, models: ModelSet
) -> None:
    config = StackConfig.load(ROOT / "infra/stack.yaml").model_dump(mode="json")
    config["port"] = ROUTER
    for edge in config["edges"]:
        edge["port"] = EDGE_PORTS[edge["name"]]
    stack = StackConfig.model_validate(config)
    (tmp_path / "stack.yaml").write_text(yaml.safe_dump(config))
    printed = subprocess.run(
        [str(BIN / "edgeroute"), "infra", "serve-config", "--config", str(tmp_path / "stack.yaml"),
         "--policy", "infra/policy.yaml"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    serve_file = tmp_path / "serve.yaml"
    serve_file.write_text(printed.stdout)
    document = yaml.safe_load(printed.stdout)
    ServeDeploySchema.model_validate(document)
    run_tokens = {"admin_token": "generated-per-run", "fleet_token": "generated-per-run"}
    by_up = stack.model_copy(update={"router": stack.router.model_copy(update=run_tokens)})
    policy = PolicyDocument.load(ROOT / "infra/policy.yaml").model_dump(mode="json")
    assert Stack(by_up, models, policy=policy).serve_document == document, \
        "edgeroute up would deploy another document"

    ray_token, fleet_token, admin_token = (secrets.token_hex(32) for _ in range(3))
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    node_env = {**base_env, "RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": ray_token,
                "EDGEROUTE_FLEET_TOKEN": fleet_token, "EDGEROUTE_ADMIN_TOKEN": admin_token}
    cli_env = {**base_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": ray_token}
    address = f"http://127.0.0.1:{DASHBOARD}"
    endpoint = f"http://127.0.0.1:{ROUTER}"
    edges = [edge_argv(e.name, e.model, e.port) for e in stack.edges]

    with ray_head(node_env) as temp_dir, processes(*edges, env=base_env, log_dir=tmp_path):
        refused = subprocess.run([str(BIN / "serve"), "deploy", str(serve_file), "-a", address],
                                 env={**base_env, "RAY_AUTH_MODE": "token",
                                      "RAY_AUTH_TOKEN": secrets.token_hex(32)},
                                 capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0, "the dashboard took a deploy with a wrong token"

        started = time.monotonic()
        deployed = subprocess.run([str(BIN / "serve"), "deploy", str(serve_file), "-a", address],
                                  env=cli_env, capture_output=True, text=True, timeout=120)
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
        targets = wait_for(lambda: every_target_reached(endpoint, admin_token), 180,
                           "the router's targets")
        print(f"\nserve deploy: every target reached {time.monotonic() - started:.1f} s after "
              f"`serve deploy` started")

        running = subprocess.run([str(BIN / "serve"), "config", "-a", address], env=cli_env,
                                 capture_output=True, text=True, timeout=60)
        (app,) = [a for a in yaml.safe_load_all(running.stdout) if a]
        assert app["args"] == document["applications"][0]["args"]

        expected = {stack.cloud.name: ("cloud", "large", f"serve:{stack.cloud.name}",
                                       stack.cloud.link),
                    **{e.name: ("edge", "small", e.url, e.link) for e in stack.edges}}
        assert {name: (t["tier"], t["quality"], t["address"], t["link_emulation"])
                for name, t in targets.items()} == {
            name: (tier, quality, url, link.model_dump())
            for name, (tier, quality, url, link) in expected.items()}
        admin = {"authorization": f"Bearer {admin_token}"}
        assert httpx.get(f"{endpoint}/v1/policy", timeout=5).status_code == 401
        assert httpx.get(f"{endpoint}/v1/targets", timeout=5).status_code == 401
        in_force = httpx.get(f"{endpoint}/v1/policy", headers=admin, timeout=5).json()["sha256"]
        assert in_force == policy_digest(PolicyDocument.load(ROOT / "infra/policy.yaml"))

        split = digits_split()
        with httpx.Client(timeout=10) as client:
            answers = [client.post(f"{endpoint}/v2/models/digits/infer", json={
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                            "data": split.x_test[i].tolist()}],
                "parameters": {"deadline_ms": 1000, "quality": quality}})
                for i, quality in zip(range(20), ["any", "high"] * 10, strict=False)]
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        labels = [next(o["data"][0] for o in a.json()["outputs"] if o["name"] == "label")
                  for a in answers]
        assert np.mean(np.array(labels) == split.y_test[:20]) >= 0.9
        assert {a.json()["parameters"]["tier"] for a in answers[1::2]} == {"cloud"}

        link = httpx.put(f"{endpoint}/v1/links/edge-b", json={"base_ms": 25},
                         headers=admin, timeout=5)
        assert link.status_code == 200, link.text
        assert httpx.get(f"{endpoint}/v1/fleet", timeout=5).json()["members"] == []
        fleet = edge_argv("site-x", "student-int8", FLEET_PORT, "--join", endpoint)
        with processes(fleet, env={**base_env, "EDGEROUTE_FLEET_TOKEN": fleet_token},
                       log_dir=tmp_path) as (worker,):
            wait_for(lambda: "site-x" in (every_target_reached(endpoint, admin_token) or {}), 60,
                     "the joined worker to be reached")
            worker.terminate()
            worker.wait(timeout=15)
        members = httpx.get(f"{endpoint}/v1/fleet", timeout=5).json()["members"]
        assert members == []

        invalid_policy_keeps_the_router_serving(
            document, tmp_path, address=address, endpoint=endpoint, env=cli_env,
            admin_token=admin_token, in_force=in_force)
        logs = [p.read_text(errors="replace")
                for p in temp_dir.glob("session_*/logs/serve/replica_edgeroute_router_*")]
        assert any("policy rejected" in text and "risk_budget" in text for text in logs), \
            "the replica's log does not say that it rejected the policy"


def invalid_policy_keeps_the_router_serving(document: dict[str, Any], tmp_path: Path, *,
                                            address: str, endpoint: str, env: dict[str, str],
                                            admin_token: str, in_force: str) -> None:
    """``serve deploy`` of a config whose policy does not validate, under load: the
    router keeps its policy and serves every request; ``GET /v1/policy``, the replica's
    log and ``edgeroute targets`` report the rejection."""
    invalid = json.loads(json.dumps(document))
    router = next(d for d in invalid["applications"][0]["deployments"] if d["name"] == "router")
    router["user_config"]["policy"]["policies"]["default"]["risk_budget"] = 5
    bad_file = tmp_path / "serve-invalid.yaml"
    bad_file.write_text(yaml.safe_dump(invalid))
    statuses: list[int] = []
    stop = threading.Event()
    row = digits_split().x_test[0].tolist()

    def drive() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.wait(0.1):
                statuses.append(client.post(f"{endpoint}/v2/models/digits/infer", json={
                    "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                "data": row}], "parameters": {"deadline_ms": 1000}}).status_code)

    driver = threading.Thread(target=drive)
    driver.start()
    try:
        deployed = subprocess.run([str(BIN / "serve"), "deploy", str(bad_file), "-a", address],
                                  env=env, capture_output=True, text=True, timeout=120)
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
        admin = {"authorization": f"Bearer {admin_token}"}
        view = wait_for(lambda: (v := httpx.get(f"{endpoint}/v1/policy", headers=admin,
                                                timeout=5).json())["rejected"] and v,
                        60, "the router to report the rejected policy")
        time.sleep(3)  # traffic after the rejection
    finally:
        stop.set()
        driver.join(timeout=30)
    assert view["sha256"] == in_force
    rejected = view["rejected"]
    assert any("risk_budget" in reason for reason in rejected["reasons"]), rejected
    assert len(statuses) >= 20 and set(statuses) == {200}, sorted(set(statuses))
    status = subprocess.run([str(BIN / "serve"), "status", "-a", address], env=env,
                            capture_output=True, text=True, timeout=60)
    assert "DEPLOY_FAILED" not in status.stdout, status.stdout
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps({"endpoint": endpoint, "admin_token": admin_token,
                                      "ray_address": f"127.0.0.1:{GCS}",
                                      "serve_config": document}))
    shown = subprocess.run([str(BIN / "edgeroute"), "targets", "--state-file", str(state_file)],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert f"policy {rejected['sha256'][:12]} was REJECTED" in " ".join(shown.stdout.split())

    rolled = subprocess.run([str(BIN / "edgeroute"), "policy", "rollback", "--state-file",
                             str(state_file)], env=env, capture_output=True, text=True,
                            timeout=180)
    assert rolled.returncode == 0, rolled.stdout[-3000:] + rolled.stderr[-3000:]
    assert "re-applying the one in force" in rolled.stdout
    deployed_now = subprocess.run([str(BIN / "serve"), "config", "-a", address], env=env,
                                  capture_output=True, text=True, timeout=60)
    (app,) = [a for a in yaml.safe_load_all(deployed_now.stdout) if a]
    router_now = next(d for d in app["deployments"] if d["name"] == "router")
    assert router_now["user_config"]["policy"]["policies"]["default"]["risk_budget"] != 5

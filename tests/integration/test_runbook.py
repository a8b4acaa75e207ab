"""docs/operations.md walked against one live stack, as an operator runs it.

The stack (ports 19600-19604) is started by ``edgeroute up`` with its state file at
the default place, ``.edgeroute/state.json`` under the working directory, and every
command of the guide is run there as a subprocess exactly as documented (no
``--state-file``). Each test walks one section of the guide and checks what the
guide says happens. :data:`WALKED` says which test runs which documented command,
and a check reads the guide so that a command added to it without a walk fails.
The reload section runs last, since it changes the stack's edges.

Sections other tests walk on stacks of their own: ``serve deploy``
(``test_serve_deploy.py``), metrics, dashboard and alerts (``test_ops_visibility.py``,
``tests/unit/test_alerts.py``), the failure modes and chaos scenarios (``tests/chaos``),
``bench`` and ``demo`` (``test_bench.py``, ``test_demo.py``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from edgeroute.dataset import digits_split
from router.policy import PolicyDocument
from tests.stackkit import RunningStack, alive, running_stack, stack_config

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "operations.md"
PORT = 19600
EDGE_PORTS = (19601, 19602)
ADDED_PORT = 19603
FLEET_PORT = 19604

WALKED: dict[str, str] = {
    "up": "the stack fixture",
    "infra serve-config": "test_the_local_stack",
    "targets": "test_what_the_router_sees",
    "targets drain": "test_what_the_router_sees",
    "targets undrain": "test_what_the_router_sees",
    "targets reset": "test_what_the_router_sees",
    "top": "test_what_the_router_sees",
    "edge": "test_the_edge_fleet",
    "fleet list": "test_the_edge_fleet",
    "policy validate": "test_changing_the_policy",
    "policy apply": "test_changing_the_policy",
    "policy show": "test_changing_the_policy",
    "policy diff": "test_changing_the_policy",
    "policy rollback": "test_changing_the_policy",
    "policy schema": "test_changing_the_policy",
    "policy key": "test_changing_the_policy",
    "policy explain": "test_why_did_a_request_go_there",
    "chaos kill": "test_injecting_faults",
    "chaos hang": "test_injecting_faults",
    "chaos resume": "test_injecting_faults",
    "chaos unavailable": "test_injecting_faults",
    "chaos available": "test_injecting_faults",
    "chaos down": "test_injecting_faults",
    "chaos up": "test_injecting_faults",
    "chaos restart": "test_injecting_faults",
    "chaos slow": "test_injecting_faults",
    "chaos partition": "test_injecting_faults",
    "chaos heal": "test_injecting_faults",
    "link": "test_injecting_faults",
    "reload": "test_reload_edges_and_links_under_load",
    "bench": "tests/integration/test_bench.py",
    "demo": "tests/integration/test_demo.py",
}
"""Each documented command and the test that runs it (two commands start stacks of their
own and have their own tests)."""


def config() -> dict[str, Any]:
    document = stack_config(PORT, EDGE_PORTS)
    document["edge_restart_delay_s"] = 1.0
    for edge, base_ms in zip(document["edges"], (4.0, 12.0), strict=True):
        edge["link"] = {"base_ms": base_ms, "jitter_ms": 1.0}
    return document


def policy() -> dict[str, Any]:
    document = PolicyDocument().model_dump(mode="json")
    document["anonymous"]["allowed_policies"] = sorted(document["policies"])
    return document


class Operator:
    """Runs ``edgeroute`` in the stack's working directory and notes which commands ran."""

    def __init__(self, stack: RunningStack, workdir: Path) -> None:
        self.stack = stack
        self.workdir = workdir
        self.ran: set[str] = {"up"}
        self.env = {**os.environ,
                    "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

    def run(self, *argv: str, ok: bool = True, timeout_s: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        name = argv[0] if argv[0] in ("up", "top", "edge", "link", "reload", "targets") \
            or len(argv) < 2 or argv[1].startswith("-") else f"{argv[0]} {argv[1]}"
        if argv[0] == "targets" and len(argv) > 1 and argv[1] in ("drain", "undrain", "reset"):
            name = f"targets {argv[1]}"
        self.ran.add(name)
        done = subprocess.run([sys.executable, "-m", "edgeroute", *argv], cwd=self.workdir,
                              capture_output=True, text=True, timeout=timeout_s,
                              env={**self.env, **(env or {})})
        if ok:
            assert done.returncode == 0, (argv, done.stdout[-2000:], done.stderr[-2000:])
        assert "Traceback" not in done.stderr, (argv, done.stderr[-3000:])
        return done

    def walked(self, test: str) -> None:
        """Every command :data:`WALKED` gives ``test`` was run."""
        mine = {command for command, walker in WALKED.items() if walker == test}
        assert mine <= self.ran, f"{test} did not run {sorted(mine - self.ran)}"

    def targets(self) -> dict[str, dict[str, Any]]:
        return self.stack.targets()

    def infer(self, deadline_ms: float = 1000, **parameters: Any) -> httpx.Response:
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                            "data": digits_split().x_test[0].tolist()}],
                "parameters": {"deadline_ms": deadline_ms, **parameters}}
        return httpx.post(f"{self.stack.endpoint}/v2/models/digits/infer", json=body,
                          timeout=deadline_ms / 1000 + 5)


def wait_for(check: Callable[[], Any], timeout_s: float, step_s: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(step_s)
    return None


@pytest.fixture(scope="module")
def operator(tmp_path_factory: pytest.TempPathFactory, models: object) -> Iterator[Operator]:
    workdir = tmp_path_factory.mktemp("runbook")
    with running_stack(workdir, config(), policy(),
                       state_name=".edgeroute/state.json") as stack:
        yield Operator(stack, workdir)


class Load:
    """Light closed-loop load on a thread (about ``rate_rps``), round-robin over every
    target, until stopped: the status and target of each answer."""

    def __init__(self, operator: Operator, rate_rps: float = 8.0) -> None:
        self.operator = operator
        self.period_s = 1 / rate_rps
        self.outcomes: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                response = self.operator.infer(policy="round-robin")
                document = response.json()
                self.outcomes.append((response.status_code, str(
                    document.get("parameters", {}).get("target", document.get("error")))))
            except (httpx.HTTPError, ValueError) as exc:
                self.outcomes.append((0, f"{type(exc).__name__}: {exc}"))
            self._stop.wait(max(self.period_s - (time.monotonic() - started), 0))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def served_by(self, target: str, since: int = 0) -> int:
        return sum(1 for status, t in self.outcomes[since:] if status == 200 and t == target)


def test_every_documented_command_is_walked() -> None:
    """The guide and this walk cannot drift: each ``edgeroute`` command the guide names is
    a real command and has its walk."""
    from edgeroute.tools.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    documented = set()
    for first, second in re.findall(r"edgeroute ([a-z][a-z-]*)(?:[ \n]+([a-z][a-z-]*))?",
                                    GUIDE.read_text()):
        assert first in commands, f"the guide names `edgeroute {first}`, which does not exist"
        actions = {a.dest: a for a in commands[first]._actions}.get("action")
        choices = getattr(actions, "choices", None) or {}
        documented.add(f"{first} {second}" if second in choices else first)
    unwalked = {c for c in documented if c not in WALKED
                and not any(w.startswith(f"{c} ") for w in WALKED)}  # a group: its commands
    assert not unwalked, f"documented but not walked: {sorted(unwalked)}"
    assert "reload" in documented and "targets drain" in documented
    for command, walker in WALKED.items():
        if walker.startswith("tests/"):
            assert f'"{command}"' in (REPO / walker).read_text(), (command, walker)


def test_the_local_stack(operator: Operator) -> None:
    stack, workdir = operator.stack, operator.workdir
    state = stack.state
    assert stack.state_file == workdir / ".edgeroute" / "state.json"
    for key in ("endpoint", "dashboard_url", "metrics_url", "ray_address", "admin_token",
                "fleet_token", "log_dir", "processes"):
        assert state.get(key), key
    assert state["dashboard_url"] == f"{state['endpoint']}/ui"
    edges = [p for p in state["processes"] if p["kind"] == "edge"]
    assert [p["name"] for p in edges] == ["edge-a", "edge-b"]
    assert all(set(p) == {"name", "kind", "pid", "url", "argv"} and alive(p["pid"])
               for p in edges)
    assert Path(state["log_dir"]) == workdir / ".edgeroute" / "logs"
    for edge in edges:
        assert (workdir / ".edgeroute" / "logs" / f"{edge['name']}.log").is_file()
    for method, path in (("GET", "/v1/targets"), ("GET", "/v1/policy"),
                         ("GET", "/v1/metrics/summary"), ("PUT", "/v1/links/edge-a")):
        answer = httpx.request(method, f"{stack.endpoint}{path}", json={}, timeout=5)
        assert answer.status_code == 401, (method, path)
    printed = yaml.safe_load(operator.run("infra", "serve-config", "--config", "stack.yaml",
                                          "--policy", "policy.yaml").stdout)
    deployed = state["serve_config"]
    jobs = deployed["applications"][0]["args"]["config"]["router"]["jobs"]
    assert Path(jobs["dir"]) == (workdir / ".edgeroute" / "jobs").resolve(), \
        "up keeps batch jobs beside its state file"
    jobs["dir"] = None
    assert printed == deployed, "the document `up` deployed, but for the jobs folder"
    operator.walked("test_the_local_stack")


def test_what_the_router_sees(operator: Operator) -> None:
    stack = operator.stack
    for _ in range(6):
        assert operator.infer().status_code == 200
    table = operator.run("targets").stdout
    for shown in ("cloud", "edge-a", "edge-b", "in force"):
        assert shown in table, table
    document = json.loads(operator.run("targets", "--json").stdout)
    assert document["replica"] and re.fullmatch(r"[0-9a-f]{12}", document["policy"]["sha256"][:12])
    for target in document["targets"]:
        assert target["breaker"]["state"] == "closed" and "down" in target["breaker"]
        assert target["available"] is True and target["drained"] is False
        assert {"traffic_share", "in_flight", "unsure_rate", "link_emulation"} <= set(target)
        estimates = target["estimates"]
        assert {"last_error", "last_error_s_ago", "last_error_at",
                "least_latency_ewma_ms"} <= set(estimates)
    watched = operator.run("targets", "--watch", "0.3", "--count", "2").stdout
    assert watched.count("edge-a") >= 2
    top = operator.run("top", "--count", "1", "--interval", "0.2").stdout
    assert "SLO attainment" in top and "edge-b" in top
    with_token = httpx.get(f"{stack.endpoint}/v1/targets", headers=stack.admin, timeout=5)
    assert with_token.status_code == 200

    broken = operator.workdir / "broken.json"
    broken.write_text(json.dumps({"endpoint": "http://127.0.0.1:9", "admin_token": "x"}))
    lost = operator.run("targets", "--state-file", str(broken), ok=False)
    assert lost.returncode == 1 and len(lost.stderr.strip().splitlines()) == 1, lost.stderr

    read_only = operator.workdir / "read-only.json"
    read_only.write_text(json.dumps({k: stack.state[k] for k in ("endpoint", "ops_token")}))
    looked = operator.run("targets", "--state-file", str(read_only)).stdout
    assert "edge-a" in looked and "in force" in looked
    assert "edge-b" in operator.run("top", "--count", "1", "--state-file", str(read_only)).stdout
    assert "risk_budget" in operator.run("policy", "show", "--state-file", str(read_only)).stdout
    refused = operator.run("targets", "drain", "edge-a", "--state-file", str(read_only), ok=False)
    assert refused.returncode == 1 and "403" in refused.stderr and "read-only" in refused.stderr
    assert not operator.targets()["edge-a"]["drained"]

    drained = operator.run("targets", "drain", "edge-a").stdout
    assert "drained: yes" in drained and "replica" in drained
    try:
        assert operator.targets()["edge-a"]["drained"]
        assert "DRAINED" in operator.run("targets").stdout
        served = [operator.infer(policy="round-robin").json()["parameters"]["target"]
                  for _ in range(9)]
        assert "edge-a" not in served and "edge-b" in served
    finally:
        operator.run("targets", "undrain", "edge-a")
    assert not operator.targets()["edge-a"]["drained"]
    assert wait_for(lambda: "edge-a" in [operator.infer(policy="round-robin").json()
                                         ["parameters"]["target"] for _ in range(3)], 20)
    operator.run("targets", "reset", "edge-b")
    assert operator.targets()["edge-b"]["estimates"]["failures"] == 0
    operator.walked("test_what_the_router_sees")


def test_the_status_page(operator: Operator) -> None:
    stack = operator.stack
    page = httpx.get(f"{stack.endpoint}/ui", timeout=5)
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert "http" not in re.sub(r"https?://(127\.0\.0\.1|localhost)", "",
                                " ".join(re.findall(r'(?:src|href)="([^"]*)"', page.text)))
    root = httpx.get(f"{stack.endpoint}/", timeout=5)
    assert root.status_code in (301, 302, 303, 307) and root.headers["location"].endswith("ui")
    summary = stack.admin_get("/v1/metrics/summary")
    assert {"bucket_s", "window_s", "buckets", "totals", "observed", "recent"} <= set(summary)


def test_the_edge_fleet(operator: Operator) -> None:
    stack = operator.stack
    token = stack.state["fleet_token"]
    log = open(operator.workdir / "site-x.log", "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        [sys.executable, "-m", "edgeroute", "edge", "--model", "student-int8", "--name",
         "site-x", "--port", str(FLEET_PORT), "--join", stack.endpoint],
        cwd=operator.workdir, env={**operator.env, "EDGEROUTE_FLEET_TOKEN": token},
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    operator.ran.add("edge")
    try:
        assert wait_for(lambda: "site-x" in operator.run("fleet", "list").stdout, 60), (
            "site-x never joined")
        assert "site-x" in operator.targets()
        members = httpx.get(f"{stack.endpoint}/v1/fleet", timeout=5).json()["members"]
        assert [m["name"] for m in members] == ["site-x"]
        url = f"{stack.endpoint}/v1/fleet/site-y"
        member = {"url": "http://127.0.0.1:9", "tier": "edge"}
        assert httpx.put(url, json=member, timeout=5).status_code == 401
        bearer = {"authorization": f"Bearer {token}"}
        assert httpx.put(f"{stack.endpoint}/v1/fleet/edge-a", json=member, headers=bearer,
                         timeout=5).status_code == 409
        assert httpx.put(url, json={"url": "ftp://x"}, headers=bearer,
                         timeout=5).status_code == 400
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        assert wait_for(lambda: "site-x" not in operator.targets(), 5), "it left at once"
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)
        log.close()
    operator.walked("test_the_edge_fleet")


def test_changing_the_policy(operator: Operator) -> None:
    stack, workdir = operator.stack, operator.workdir
    first = stack.admin_get("/v1/policy")["sha256"]
    document = policy()
    document["policies"]["default"]["risk_budget"] = 0.03
    (workdir / "my-policy.yaml").write_text(yaml.safe_dump(document))
    checked = operator.run("policy", "validate", "my-policy.yaml").stdout
    (workdir / "empty.yaml").write_text("# nothing yet\n")
    empty = operator.run("policy", "validate", "empty.yaml", ok=False)
    assert empty.returncode == 1
    operator.run("policy", "validate", "empty.yaml", "--allow-defaults")
    (workdir / "broken.yaml").write_text("policies:\n  default: {risk_budget: [\n")
    broken = operator.run("policy", "validate", "broken.yaml", ok=False)
    assert broken.returncode == 1 and re.search(r"broken\.yaml:\d+:\d+", broken.stdout
                                                + broken.stderr)
    applied = operator.run("policy", "apply", "my-policy.yaml").stdout
    second = stack.admin_get("/v1/policy")["sha256"]
    assert second != first and second[:12] in applied + checked
    assert operator.run("policy", "apply", "broken.yaml", ok=False).returncode == 1
    assert stack.admin_get("/v1/policy")["sha256"] == second, "the policy in force stays"

    shown = operator.run("policy", "show").stdout
    assert "risk_budget: 0.03" in shown and "#" in shown
    view = json.loads(operator.run("policy", "show", "--json").stdout)
    assert view["sha256"] == second and len(view["history"]) >= 2
    assert "no difference" in operator.run("policy", "diff", "my-policy.yaml").stdout
    document["policies"]["default"]["risk_budget"] = 0.04
    (workdir / "other.yaml").write_text(yaml.safe_dump(document))
    assert "+" in operator.run("policy", "diff", "other.yaml").stdout
    previous = operator.run("policy", "diff", "--previous", "1").stdout
    assert "0.03" in previous, previous
    operator.run("policy", "rollback")
    assert stack.admin_get("/v1/policy")["sha256"] == first
    operator.run("policy", "rollback", "--to", second[:6])
    assert stack.admin_get("/v1/policy")["sha256"] == second
    operator.run("policy", "rollback", "--to", first[:6])
    assert stack.admin_get("/v1/policy")["sha256"] == first
    assert json.loads(operator.run("policy", "schema").stdout)["title"]
    key = operator.run("policy", "key", "team-a").stdout
    assert re.search(r"[0-9a-f]{64}", key), key
    operator.walked("test_changing_the_policy")


def test_why_did_a_request_go_there(operator: Operator) -> None:
    near = operator.run("policy", "explain", "--deadline-ms", "50", "--quality", "any").stdout
    assert "chosen" in near, near
    high = operator.run("policy", "explain", "--deadline-ms", "250", "--quality", "high",
                        "--policy", "least-cost").stdout
    assert "chosen" in high and "cloud" in high, high
    explained = operator.infer(explain=True).json()["parameters"]
    assert {"policy", "reason", "plan", "candidates"} <= set(explained["explanation"])
    assert {"target", "tier", "attempts", "fallback", "hedged", "predicted_latency_ms",
            "cost_usd", "decision_us"} <= set(explained)
    operator.walked("test_why_did_a_request_go_there")


def test_bad_input_is_a_4xx_and_the_router_stays_healthy(operator: Operator) -> None:
    url = f"{operator.stack.endpoint}/v2/models/digits/infer"
    for body in (b"{not json", json.dumps({"inputs": [{"name": "input", "datatype": "FP32",
                                                       "shape": [1, 64], "data": [99] * 64}]})):
        answer = httpx.post(url, content=body, headers={"content-type": "application/json"},
                            timeout=10)
        assert 400 <= answer.status_code < 500 and answer.json()["error"]
    assert operator.infer().status_code == 200


def _process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]


def _edge_status(operator: Operator, edge: str) -> int:
    url = next(p["url"] for p in operator.stack.state["processes"] if p["name"] == edge)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                        "data": digits_split().x_test[0].tolist()}]}
    try:
        return httpx.post(f"{url}/v2/models/digits/infer", json=body, timeout=5).status_code
    except httpx.HTTPError:
        return 0


def test_injecting_faults(operator: Operator) -> None:
    stack = operator.stack
    link = {name: t["link_emulation"] for name, t in operator.targets().items()}

    pid = stack.pid("edge-a")
    operator.run("chaos", "kill", "edge-a")
    assert wait_for(lambda: stack.pid("edge-a") != pid, 30), "the supervisor restarts it"
    assert wait_for(lambda: _edge_status(operator, "edge-a") == 200, 30)

    pid = stack.pid("edge-a")
    operator.run("chaos", "hang", "edge-a")
    assert wait_for(lambda: _process_state(pid) == "T", 5)
    operator.run("chaos", "resume", "edge-a")
    assert wait_for(lambda: _process_state(pid) != "T", 5)

    operator.run("chaos", "unavailable", "edge-a")
    assert wait_for(lambda: _edge_status(operator, "edge-a") == 503, 5)
    operator.run("chaos", "available", "edge-a")
    assert wait_for(lambda: _edge_status(operator, "edge-a") == 200, 5)

    pid = stack.pid("edge-b")
    operator.run("chaos", "down", "edge-b")
    assert wait_for(lambda: not alive(pid), 15)
    time.sleep(2.5)  # past the restart delay (1 s): held down
    assert stack.pid("edge-b") == pid and not alive(pid)
    operator.run("chaos", "up", "edge-b")
    assert wait_for(lambda: stack.pid("edge-b") != pid, 30)
    pid = stack.pid("edge-b")
    operator.run("chaos", "restart", "edge-b")
    assert wait_for(lambda: stack.pid("edge-b") != pid, 30)
    assert wait_for(lambda: _edge_status(operator, "edge-b") == 200, 30)

    slowed = json.loads(operator.run("chaos", "slow", "cloud", "--base-ms", "120",
                                     "--jitter-ms", "20").stdout)["link_emulation"]
    assert (slowed["base_ms"], slowed["jitter_ms"]) == (120.0, 20.0)
    kept = json.loads(operator.run("chaos", "slow", "cloud", "--base-ms", "130").stdout)
    assert kept["link_emulation"]["jitter_ms"] == 20.0, "--jitter-ms left out: kept"
    operator.run("chaos", "partition", "edge-a")
    assert operator.targets()["edge-a"]["link_emulation"]["partitioned"]
    operator.run("link", "edge-b", "--base-ms", "40", "--spike-probability", "0.05",
                 "--spike-multiplier", "4")
    operator.run("link", "edge-b", "--loss-probability", "0.01")
    changed = operator.targets()["edge-b"]["link_emulation"]
    assert (changed["base_ms"], changed["spike_multiplier"], changed["loss_probability"]) == (
        40.0, 4.0, 0.01)
    for name in ("cloud", "edge-a", "edge-b"):
        operator.run("chaos", "heal", name)
    assert {n: t["link_emulation"] for n, t in operator.targets().items()} == link
    assert wait_for(lambda: all(t["breaker"]["state"] == "closed" and t["available"]
                                for t in operator.targets().values()), 30)
    operator.walked("test_injecting_faults")


def test_reload_edges_and_links_under_load(operator: Operator) -> None:
    stack, workdir = operator.stack, operator.workdir
    original = yaml.safe_load((workdir / "stack.yaml").read_text())

    def write(name: str, document: dict[str, Any]) -> str:
        (workdir / name).write_text(yaml.safe_dump(document))
        return name

    added = json.loads(json.dumps(original))
    added["edges"].append({**original["edges"][0], "name": "edge-c", "port": ADDED_PORT,
                           "link": {"base_ms": 3.0, "jitter_ms": 0.5}})
    relinked = json.loads(json.dumps(added))
    relinked["edges"][0]["link"] = {"base_ms": 25.0, "jitter_ms": 2.0}
    removed = json.loads(json.dumps(relinked))
    removed["edges"] = [e for e in removed["edges"] if e["name"] not in ("edge-b", "edge-c")]
    refused = json.loads(json.dumps(removed))
    refused["port"] = PORT + 50
    refused["edges"].append({**original["edges"][1], "port": ADDED_PORT})
    took: dict[str, float] = {}

    def reload(name: str, *lines: str) -> None:
        started = time.monotonic()
        done = operator.run("reload", name, timeout_s=200)
        took[name] = round(time.monotonic() - started, 1)
        for line in lines:
            assert line in done.stdout, done.stdout

    assert "nothing to change" in operator.run("reload").stdout
    with Load(operator) as load:
        time.sleep(2)
        reload(write("added.yaml", added), "edge edge-c: added (port 19603")
        assert "edge-c" in operator.targets()
        assert "edge-c" in {p["name"] for p in stack.state["processes"]}
        mark = len(load.outcomes)
        assert wait_for(lambda: load.served_by("edge-c", mark), 20), "edge-c never served"

        reload(write("relinked.yaml", relinked), "link edge-a: base_ms=25.0, jitter_ms=2.0")
        assert operator.targets()["edge-a"]["link_emulation"]["base_ms"] == 25.0

        pids = {name: stack.pid(name) for name in ("edge-b", "edge-c")}
        reload(write("removed.yaml", removed), "edge edge-b: removed", "edge edge-c: removed")
        assert set(operator.targets()) == {"cloud", "edge-a"}
        assert {p["name"] for p in stack.state["processes"]} == {"supervisor", "edge-a"}
        assert not any(alive(pid) for pid in pids.values())

        before = (operator.targets(), stack.state["processes"])
        no = operator.run("reload", write("refused.yaml", refused), ok=False)
        assert no.returncode == 1 and "need a restart" in no.stderr and "port" in no.stderr
        assert (operator.targets().keys(), stack.state["processes"]) == \
            (before[0].keys(), before[1]), "nothing was applied"

        reload("stack.yaml", "edge edge-b: added", "link edge-a: base_ms=4.0")
        assert set(operator.targets()) == {"cloud", "edge-a", "edge-b"}
        mark = len(load.outcomes)
        assert wait_for(lambda: load.served_by("edge-b", mark), 20), "edge-b never served"
        time.sleep(1)
    statuses = Counter(status for status, _ in load.outcomes)
    print(f"\nreload under load: {len(load.outcomes)} requests, {dict(statuses)}; "
          f"served by {dict(Counter(t for s, t in load.outcomes if s == 200))}; "
          f"reload took {took} s")
    failed = [o for o in load.outcomes if o[0] != 200]
    assert not failed, failed[:10]
    assert operator.targets()["edge-a"]["link_emulation"]["base_ms"] == 4.0
    operator.walked("test_reload_edges_and_links_under_load")

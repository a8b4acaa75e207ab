"""The local stack: Ray with the Serve app (router + cloud) and the edge worker processes.

:class:`Stack` starts everything, waits until the router has seen every
target, writes the state file, and on :meth:`Stack.stop` tears it all down:
edge workers get SIGTERM (then SIGKILL after a bound), Serve and Ray are shut
down. Edge workers are also tied to this process with ``PR_SET_PDEATHSIG`` so
that not even a SIGKILL of the supervisor leaves them orphaned.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from edgeroute.config import EdgeWorker, StackConfig
from edgeroute.models.catalog import ModelConfigError, pinned, resolve
from edgeroute.models.store import ModelSet, model_path
from edgeroute.tools.ingress import INGRESS_VARS, free_port, ingress_env, reap_haproxy
from edgeroute.tools.procs import StackError, http_ok, port_free, wait_until
from edgeroute.tools.router_api import admin_headers
from edgeroute.tools.serve_config import APP_NAME, TOKEN_ENV, deploy, serve_config, without_tokens
from router.policy import PolicyDocument

Say = Callable[[str], None]


@dataclass(frozen=True)
class ProcessInfo:
    name: str
    kind: str
    pid: int
    url: str
    argv: list[str]


PARENT_ENV = "EDGEROUTE_PARENT_PID"


def die_with_parent() -> None:
    """Called by a child at start: SIGTERM it when the process that started it dies.

    The child asks the kernel itself (``PR_SET_PDEATHSIG``) instead of a
    ``preexec_fn`` hook, which is unsafe in a process with threads (Ray's).
    The kernel ties the signal to the *thread* that forked: supervisors start
    workers from their main thread.
    """
    expected = os.environ.get(PARENT_ENV)
    if expected is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != int(expected):
        os.kill(os.getpid(), signal.SIGTERM)


class Stack:
    def __init__(
        self,
        config: StackConfig,
        models: ModelSet,
        *,
        policy: dict[str, Any] | None = None,
        state_file: Path | None = None,
        log_dir: Path | None = None,
        say: Say = print,
    ) -> None:
        try:
            config = pinned(config).with_jobs_dir(state_file and state_file.parent / "jobs")
            self.served = resolve(config)
        except ModelConfigError as exc:
            raise StackError(str(exc)) from None
        self.config = config
        self.models = models
        self.policy = policy or PolicyDocument().model_dump(mode="json")
        deployed, self.token_env = without_tokens(config)
        # A Ray this stack starts gets the tokens in its environment (Serve logs arguments);
        # a cluster it only connects to (``ray_address``) gets them as arguments.
        self.serve_document = serve_config(config if config.ray_address else deployed,
                                           self.policy)
        self.state_file = state_file
        self.log_dir = log_dir or (state_file.parent / "logs" if state_file else
                                   Path(os.environ.get("TMPDIR", "/tmp")) / "edgeroute-logs")
        """Each edge worker's output, ``<name>.log``: beside the state file, so that two
        stacks never share one."""
        self.control_dir = (state_file.parent if state_file else self.log_dir) / "control"
        """Markers the watchdog obeys: ``<edge>.down`` keeps a worker down,
        ``<edge>.restart`` restarts it now (written by ``edgeroute chaos``)."""
        self.say = say
        self.config_file: Path | None = None
        """The stack config file, which ``edgeroute reload`` reads again by default."""
        self.port_override: int | None = None
        self.joined: set[str] = set()
        """Edge workers added by a reload: they join the router's fleet (``--join``)."""
        self.edges: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts: list[tuple[float, str, int]] = []
        """(monotonic time, edge name, new pid) of every restart the watchdog made."""
        self._ray_started = False
        self.haproxy_ports: tuple[int, int] | None = None
        """HAProxy's statistics and metrics ports, on a Ray this stack started with it."""
        self._env_before: dict[str, str | None] = {}
        self._wrote_state = False
        self._stopping = threading.Event()
        self._watchdog: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return self.config.endpoint

    def edge_argv(self, edge: EdgeWorker) -> list[str]:
        from edgeroute.tools.reload import join_argv

        joins = join_argv(edge, self.endpoint) if edge.name in self.joined else []
        student = model_path(edge.model, self.models.directory)
        hosted = [m.edge_spec(student) for m in self.served.values()]
        return [
            sys.executable, "-m", "edgeroute", "edge",
            "--model", str(student),
            "--models-json", json.dumps(hosted, separators=(",", ":")),
            "--name", edge.name, "--host", edge.host, "--port", str(edge.port),
            "--concurrency", str(edge.concurrency), "--max-queue", str(edge.max_queue),
            "--service-delay-ms", str(edge.service_delay_ms), *joins,
        ]

    def _edge(self, name: str) -> EdgeWorker:
        for edge in self.config.edges:
            if edge.name == name:
                return edge
        raise StackError(f"no edge worker named '{name}'")

    def start_edge(self, name: str) -> int:
        edge = self._edge(name)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        token = self.config.router.fleet_token if name in self.joined else None
        env = {**os.environ, PARENT_ENV: str(os.getpid()),
               **({"EDGEROUTE_FLEET_TOKEN": token} if token else {})}
        with open(self.log_dir / f"{name}.log", "ab") as log:
            process = subprocess.Popen(self.edge_argv(edge), stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env)
        self.edges[name] = process
        return process.pid

    def wait_edge(self, name: str, timeout_s: float = 30.0) -> None:
        edge, process = self._edge(name), self.edges[name]

        def up() -> bool:
            if process.poll() is not None:
                raise StackError(f"edge worker {name} exited with {process.returncode}; "
                                 f"see {self.log_dir / (name + '.log')}")
            return http_ok(f"{edge.url}/v2/health/ready")

        wait_until(up, timeout_s, f"edge worker {name}")

    def wait_edges_running(self, timeout_s: float = 60.0) -> None:
        """Until every edge worker's process is alive and ready again; one that died is
        restarted by the watchdog after ``edge_restart_delay_s`` (none when that is unset)."""
        if self.config.edge_restart_delay_s is None:
            return

        def running() -> bool:
            return all(self.edges[e.name].poll() is None
                       and http_ok(f"{e.url}/v2/health/ready") for e in self.config.edges)

        wait_until(running, timeout_s, "every edge worker to run again", 0.2)

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> int:
        """Signal an edge worker as an outside fault would; the watchdog restarts it."""
        process = self.edges[name]
        process.send_signal(sig)
        return process.pid

    def _supervise(self) -> None:
        """Restart edge workers that died, ``edge_restart_delay_s`` after noticing.

        Runs on one long-lived thread: the kernel ties each worker's
        parent-death signal to the thread that started it.
        """
        from edgeroute.tools.reload import serve_request

        died_at: dict[str, float] = {}
        while not self._stopping.wait(0.2):
            serve_request(self)
            delay = self.config.edge_restart_delay_s
            for name, process in list(self.edges.items()):
                marker = self.control_dir / f"{name}.restart"
                if marker.exists():
                    marker.unlink(missing_ok=True)
                    if process.poll() is None:
                        process.kill()
                        process.wait(timeout=10)
                    died_at[name] = -float("inf")
                if process.poll() is None:
                    died_at.pop(name, None)
                    continue
                noticed = died_at.setdefault(name, time.monotonic())
                held = (self.control_dir / f"{name}.down").exists()
                if held or delay is None or time.monotonic() - noticed < delay:
                    continue
                self.say(f"edge worker {name} exited ({process.returncode}); restarting it")
                pid = self.start_edge(name)
                self.restarts.append((time.monotonic(), name, pid))
                died_at.pop(name)
                self.write_state()

    def _check_ports(self) -> None:
        busy = [(h, p) for h, p in [(self.config.host, self.config.port),
                                     *((e.host, e.port) for e in self.config.edges)]
                if not port_free(h, p)]
        if busy:
            listed = ", ".join(f"{h}:{p}" for h, p in busy)
            raise StackError(f"port(s) already in use: {listed} (is another stack running?)")

    def start(self, timeout_s: float = 180.0) -> None:
        self._check_ports()
        self.control_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.control_dir.iterdir():
            stale.unlink()
        for edge in self.config.edges:
            self.start_edge(edge.name)
        self.say(f"edge workers started: {', '.join(self.edges)}")
        self._start_serve()
        for edge in self.config.edges:
            self.wait_edge(edge.name)
        self.wait_all_targets(timeout_s)
        self.write_state()
        self._watchdog = threading.Thread(target=self._supervise, name="edge-watchdog",
                                          daemon=True)
        self._watchdog.start()
        self.say(f"edgeroute is serving at {self.endpoint}")
        self.say(f"status page: {self.dashboard_url} (asks for the admin token)")
        self.say(f"Prometheus metrics: {self.metrics_url()}")

    def _start_serve(self) -> None:
        # Token authentication: an open Ray API lets anyone run code on the cluster.
        # Drivers that connect later (``edgeroute policy apply``) present the same token.
        # Ray reads the mode when it is imported.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        # Ray renices its workers to 15 (batch jobs); the router and the Serve proxy are
        # latency-critical workers: at 15 any busy process (an edge worker starting) starves
        # them and answers go out seconds after their deadline.
        os.environ.setdefault("RAY_worker_niceness", "0")
        if self.config.ray_address is None:
            for var in TOKEN_ENV.values():
                os.environ.pop(var, None)
            os.environ.update(self.token_env)
            if self.config.ingress == "haproxy":
                self.haproxy_ports = (free_port(), free_port())
            self._env_before = {k: os.environ.get(k) for k in INGRESS_VARS}
            os.environ.update(ingress_env(self.config, self.haproxy_ports))
        import ray

        self.say("starting Ray and the Serve app (router + cloud) ...")
        ray.init(address=self.config.ray_address or "local", include_dashboard=False,
                 log_to_driver=False,
                 logging_level=logging.WARNING, namespace=APP_NAME)
        self._ray_started = True
        deploy(self.serve_document)

    def wait_all_targets(self, timeout_s: float = 60.0) -> None:
        """Until the router reports every target observed and available (edges restarted)."""
        wait_until(self._all_targets_seen, timeout_s, "the router to reach every target", 0.5)

    def _all_targets_seen(self) -> bool:
        try:
            token = {"admin_token": self.config.router.admin_token}
            response = httpx.get(f"{self.endpoint}/v1/targets", timeout=2.0,
                                 headers=admin_headers(token))
            targets = response.json()["targets"]
        except (httpx.HTTPError, ValueError, KeyError):
            return False
        return all(
            t["estimates"]["replicas"] == 0  # scaled to zero: nothing to reach until woken
            or (t["estimates"]["observed"] and t["breaker"]["state"] == "closed")
            for t in targets
        )

    def processes(self) -> list[ProcessInfo]:
        infos = [ProcessInfo("supervisor", "supervisor", os.getpid(), self.endpoint,
                             [sys.executable, *sys.argv])]
        for edge in self.config.edges:
            process = self.edges.get(edge.name)
            if process is not None:
                infos.append(ProcessInfo(edge.name, "edge", process.pid, edge.url,
                                         self.edge_argv(edge)))
        return infos

    @property
    def dashboard_url(self) -> str:
        """The router's status page (it asks for the admin token; :mod:`router.ui`)."""
        return f"{self.endpoint}/ui"

    def metrics_url(self) -> str | None:
        """Where Prometheus scrapes the router's metrics: the Ray metrics export of this
        process's node (the only node of a local stack), which carries the metrics of
        every worker on it. ``None`` before Ray runs."""
        if not self._ray_started:
            return None
        import ray

        node_id = ray.get_runtime_context().get_node_id()
        for node in ray.nodes():
            if node.get("NodeID") == node_id and node.get("MetricsExportPort"):
                return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        return None

    def state(self) -> dict[str, Any]:
        import ray

        return {
            "endpoint": self.endpoint,
            "dashboard_url": self.dashboard_url,
            "metrics_url": self.metrics_url(),
            "admin_token": self.config.router.admin_token,
            "ops_token": self.config.router.ops_token,
            "fleet_token": self.config.router.fleet_token,
            "ray_address": ray.get_runtime_context().gcs_address if self._ray_started else None,
            "ingress": self.config.ingress,
            "haproxy_stats_port": self.haproxy_ports[0] if self.haproxy_ports else None,
            "serve_config": self.serve_document,
            "control_dir": str(self.control_dir),
            "config_file": str(self.config_file) if self.config_file else None,
            "stack_config": without_tokens(self.config)[0].model_dump(mode="json"),
            "log_dir": str(self.log_dir),
            "processes": [asdict(p) for p in self.processes()],
        }

    def write_state(self) -> None:
        if self.state_file is None:
            return
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.touch(mode=0o600)
        tmp.write_text(json.dumps(self.state(), indent=2) + "\n")
        tmp.replace(self.state_file)
        self._wrote_state = True

    def stop(self) -> None:
        """Stop everything; safe to call twice and after a partial start."""
        self._stopping.set()
        if self._watchdog is not None:
            self._watchdog.join(timeout=5)
        for process in self.edges.values():
            if process.poll() is None:
                process.terminate()
        for name, process in self.edges.items():
            try:
                process.wait(timeout=8)
            except subprocess.TimeoutExpired:
                self.say(f"edge worker {name} ignored SIGTERM; killing it")
                process.kill()
                process.wait(timeout=5)
        if self._ray_started:
            import ray
            from ray import serve

            try:
                serve.shutdown()
            finally:
                ray.shutdown()
                self._ray_started = False
                self._after_ray()
        if self.state_file is not None and self._wrote_state:
            self.state_file.unlink(missing_ok=True)

    def _after_ray(self) -> None:
        """Put back the process environment the Ray it started needed, and end an HAProxy
        that outlived it (it would hold the stack's port)."""
        for key, value in self._env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self.haproxy_ports is not None:
            reap_haproxy({self.config.port, *self.haproxy_ports})

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

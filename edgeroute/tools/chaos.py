"""``edgeroute chaos``: faults for ops and SREs, acting on a running stack's processes.

Every action works from the state file ``edgeroute up`` writes: edge workers
are signalled by pid (kill, hang, resume, unavailable, available), kept down or restarted through
markers the supervisor's watchdog obeys, and links are slowed, cut or healed
through the router's admin endpoint.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import httpx


class ChaosError(Exception):
    """The action could not be carried out (unknown worker, process gone, admin refused)."""


def _edge(state: dict[str, Any], name: str) -> dict[str, Any]:
    for process in state["processes"]:
        if process["name"] == name and process["kind"] == "edge":
            return process
    edges = ", ".join(p["name"] for p in state["processes"] if p["kind"] == "edge")
    raise ChaosError(f"no edge worker named {name!r} (edge workers: {edges})")


def _signal(state: dict[str, Any], name: str, sig: signal.Signals) -> str:
    pid = int(_edge(state, name)["pid"])
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        raise ChaosError(f"{name} (pid {pid}) is not running") from None
    return f"{sig.name} -> {name} (pid {pid})"


def _marker(state: dict[str, Any], name: str, kind: str) -> Path:
    _edge(state, name)
    return Path(state["control_dir"]) / f"{name}.{kind}"


def kill(state: dict[str, Any], name: str) -> str:
    """SIGKILL, as a crash would; the supervisor restarts the worker after its delay."""
    return _signal(state, name, signal.SIGKILL)


def hang(state: dict[str, Any], name: str) -> str:
    """SIGSTOP: the worker keeps its port open and answers nothing (a hung node)."""
    return _signal(state, name, signal.SIGSTOP)


def resume(state: dict[str, Any], name: str) -> str:
    return _signal(state, name, signal.SIGCONT)


def unavailable(state: dict[str, Any], name: str) -> str:
    """SIGUSR1: the worker answers every inference 503 with ``Retry-After`` (its health
    checks still pass) until ``available``."""
    return _signal(state, name, signal.SIGUSR1) + ": answering 503"


def available(state: dict[str, Any], name: str) -> str:
    return _signal(state, name, signal.SIGUSR2) + ": serving again"


def down(state: dict[str, Any], name: str) -> str:
    """Stop a worker and keep it down until ``up``."""
    _marker(state, name, "down").touch()
    try:
        return _signal(state, name, signal.SIGTERM) + ", held down"
    except ChaosError:
        return f"{name} held down"


def up(state: dict[str, Any], name: str) -> str:
    _marker(state, name, "down").unlink(missing_ok=True)
    return f"{name} released: the supervisor starts it again"


def restart(state: dict[str, Any], name: str) -> str:
    _marker(state, name, "down").unlink(missing_ok=True)
    _marker(state, name, "restart").touch()
    return f"{name}: restart requested"


def set_link(state: dict[str, Any], target: str, changes: dict[str, Any]) -> dict[str, Any]:
    response = httpx.put(
        f"{state['endpoint']}/v1/links/{target}", json=changes, timeout=10,
        headers={"authorization": f"Bearer {state['admin_token']}"},
    )
    body: dict[str, Any] = response.json()
    if response.status_code != 200:
        raise ChaosError(f"link change refused ({response.status_code}): {body.get('error')}")
    return body

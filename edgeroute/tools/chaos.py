"""``edgeroute chaos``: faults for ops and SREs, acting on a running stack's processes.

Every action works from the state file ``edgeroute up`` writes: edge workers
are signalled by pid (kill, hang, resume, unavailable, available), kept down or restarted through
markers the supervisor's watchdog obeys, and links are slowed or cut through the router's
admin endpoint. Each fault has its undo: ``resume`` a hang, ``available`` after
``unavailable``, ``up`` after ``down``; ``heal`` puts back the link the stack config gives the
target (read from the Serve config in the state file), undoing ``slow`` and ``partition``
alike. ``kill`` needs none: the supervisor restarts the worker (``restart`` does it at once).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from edgeroute.config import StackConfig


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


def slow(state: dict[str, Any], name: str, base_ms: float,
         jitter_ms: float | None = None) -> dict[str, Any]:
    """Lengthen a target's round trip to ``base_ms``; its jitter is kept unless given."""
    changes: dict[str, Any] = {"base_ms": base_ms}
    if jitter_ms is not None:
        changes["jitter_ms"] = jitter_ms
    return set_link(state, name, changes)


def partition(state: dict[str, Any], name: str) -> dict[str, Any]:
    """Blackhole a target's link: attempts hang until their timeout, probes too."""
    return set_link(state, name, {"partitioned": True})


def heal(state: dict[str, Any], name: str) -> dict[str, Any]:
    """Undo ``slow``, ``partition`` and ``edgeroute link``: the link the stack config gives
    the target. A worker that joined the fleet is not in the config: only its partition ends."""
    configured = configured_link(state, name)
    return set_link(state, name, configured if configured is not None
                    else {"partitioned": False})


def configured_link(state: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The link of target ``name`` in the stack config the stack runs with (the last
    ``edgeroute reload``'s, else the one deployed)."""
    try:
        config = StackConfig.model_validate(
            state.get("stack_config") or state["serve_config"]["applications"][0]["args"]["config"])
    except (KeyError, IndexError, TypeError, ValidationError):
        return None
    links = {config.cloud.name: config.cloud.link,
             **{e.name: e.link for e in config.edges},
             **{x.name: x.link for x in config.external}}
    link = links.get(name)
    return None if link is None else link.model_dump()


def set_link(state: dict[str, Any], target: str, changes: dict[str, Any]) -> dict[str, Any]:
    try:
        response = httpx.put(
            f"{state['endpoint']}/v1/links/{target}", json=changes, timeout=10,
            headers={"authorization": f"Bearer {state['admin_token']}"},
        )
        body: dict[str, Any] = response.json()
    except httpx.HTTPError as exc:
        raise ChaosError(f"the router did not answer: {exc}") from None
    except ValueError:
        raise ChaosError(f"the router answered {response.status_code} without JSON: "
                         f"{response.text[:200]!r}") from None
    if response.status_code != 200:
        raise ChaosError(f"link change refused ({response.status_code}): {body.get('error')}")
    return body

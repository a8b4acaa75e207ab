"""``edgeroute reload``: a running stack's edges and links brought in line with its config.

:func:`plan` compares the stack config a stack runs with and the one read
again, and says what changes: edge workers to add, to remove, to replace (a
setting other than the link changed), links to set, and the fields that
cannot change without a restart (the router's port, Ray, the ingress, the
cloud deployment's resources, ...). A plan with any such field is refused
whole: nothing is applied.

The supervisor (``edgeroute up``) applies a plan on its watchdog thread, the
one that starts every edge worker (:meth:`Stack.start_edge`), when the
command line leaves a request in the control directory (:func:`request`,
:func:`serve_request`). The router keeps serving throughout:

* an added worker is started with ``--join`` and joins the router's edge
  fleet, as any worker that joins a running router does (every router
  replica routes to it within a fleet sync interval);
* a removed worker is drained on the router (``POST /v1/targets/NAME/drain``)
  until no call to it is in flight, then stopped; a worker of the deployed
  config is then taken out of the router (``DELETE /v1/targets/NAME``), a
  joined one leaves the fleet as it stops;
* a replaced worker is removed, then added with its new settings;
* a changed link is set with ``PUT /v1/links/NAME``.

Router changes reach the replica that answers them, so each is repeated until
``router.num_replicas`` distinct replicas have answered (a bounded number of
tries).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import ValidationError

from edgeroute.config import EdgeWorker, LinkProfile, StackConfig
from edgeroute.tools.procs import StackError, port_free, wait_until
from edgeroute.tools.router_api import RouterError, call

if TYPE_CHECKING:
    from edgeroute.tools.stack import Stack

REQUEST = "reload.request"
DRAIN_TIMEOUT_S = 15.0
ROUTER_TIMEOUT_S = 20.0


class ReloadError(Exception):
    """The reload was refused (a field that needs a restart) or could not be applied."""


@dataclass(frozen=True)
class Plan:
    add: list[EdgeWorker] = field(default_factory=list)
    remove: list[EdgeWorker] = field(default_factory=list)
    replace: list[tuple[EdgeWorker, EdgeWorker]] = field(default_factory=list)
    links: dict[str, LinkProfile] = field(default_factory=dict)
    restart_delay_s: tuple[float | None, float | None] | None = None
    refused: list[str] = field(default_factory=list)
    """Fields that changed and need a restart (dotted paths)."""

    @property
    def empty(self) -> bool:
        return not (self.add or self.remove or self.replace or self.links
                    or self.restart_delay_s or self.refused)

    def lines(self) -> list[str]:
        """What the plan changes, one line each."""
        out = [f"edge {e.name}: added (port {e.port}, model {e.model})" for e in self.add]
        out += [f"edge {e.name}: removed (drained, then stopped)" for e in self.remove]
        for old, new in self.replace:
            fields = ", ".join(_diff_paths(old.model_dump(mode="json", exclude={"link"}),
                                           new.model_dump(mode="json", exclude={"link"})))
            out.append(f"edge {new.name}: restarted with new settings ({fields})")
        out += [f"link {name}: {_short(link)}" for name, link in self.links.items()]
        if self.restart_delay_s is not None:
            out.append("edge_restart_delay_s: {} -> {}".format(*self.restart_delay_s))
        return out


def _short(link: LinkProfile) -> str:
    return ", ".join(f"{k}={v}" for k, v in link.model_dump().items())


def _diff_paths(a: Any, b: Any, prefix: str = "") -> list[str]:
    """The dotted paths where two JSON documents differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        paths: list[str] = []
        for key in sorted(set(a) | set(b)):
            paths += _diff_paths(a.get(key), b.get(key), f"{prefix}{key}.")
        return paths
    return [] if a == b else [prefix.rstrip(".")]


def _restart_only(config: StackConfig) -> dict[str, Any]:
    """The config without what a reload applies live: edges, links, the restart delay."""
    document = config.model_dump(mode="json", exclude={"edges", "edge_restart_delay_s"})
    del document["cloud"]["link"]
    document["external"] = {x["name"]: {k: v for k, v in x.items() if k != "link"}
                            for x in document["external"]}
    return document


def plan(current: StackConfig, new: StackConfig) -> Plan:
    """What reloading ``new`` into a stack running ``current`` changes (pure)."""
    refused = _diff_paths(_restart_only(current), _restart_only(new))
    old_edges = {e.name: e for e in current.edges}
    new_edges = {e.name: e for e in new.edges}
    add = [e for n, e in new_edges.items() if n not in old_edges]
    remove = [e for n, e in old_edges.items() if n not in new_edges]
    replace = [(old_edges[n], e) for n, e in new_edges.items() if n in old_edges
               and old_edges[n].model_copy(update={"link": e.link}) != e]
    replaced = {new.name for _, new in replace}
    old_links = {current.cloud.name: current.cloud.link,
                 **{x.name: x.link for x in current.external},
                 **{e.name: e.link for e in current.edges}}
    links = {name: link for name, link in {
        new.cloud.name: new.cloud.link, **{x.name: x.link for x in new.external},
        **{e.name: e.link for e in new.edges}}.items()
        if name in old_links and name not in replaced and old_links[name] != link}
    delay = (current.edge_restart_delay_s, new.edge_restart_delay_s)
    return Plan(add=add, remove=remove, replace=replace, links=links,
                restart_delay_s=delay if delay[0] != delay[1] else None, refused=refused)


def effective(new: StackConfig, current: StackConfig, port_override: int | None) -> StackConfig:
    """The file's config with what ``edgeroute up`` added to it: the ``--port`` given, and
    the tokens and the jobs folder it chose for a config that leaves them out."""
    document = new.model_dump()
    if port_override is not None:
        document["port"] = port_override
    for token in ("admin_token", "ops_token", "fleet_token"):
        document["router"][token] = document["router"][token] or getattr(current.router, token)
    document["router"]["jobs"]["dir"] = (document["router"]["jobs"]["dir"]
                                         or current.router.jobs.dir)
    return StackConfig.model_validate(document)


def join_argv(edge: EdgeWorker, endpoint: str) -> list[str]:
    """The arguments that make a worker join the router's fleet with its configured link
    (the fleet token goes in its environment)."""
    link = edge.link
    return ["--join", endpoint, "--link-base-ms", str(link.base_ms),
            "--link-jitter-ms", str(link.jitter_ms),
            "--link-spike-probability", str(link.spike_probability),
            "--link-spike-multiplier", str(link.spike_multiplier),
            "--link-loss-probability", str(link.loss_probability)]


def refusal(change: Plan) -> str:
    return ("refused, nothing changed: these fields need a restart (edgeroute up again): "
            + ", ".join(change.refused))


class Applier:
    """Applies a :class:`Plan` to a running :class:`Stack` (its watchdog thread calls it)."""

    def __init__(self, stack: Stack, sleep: Callable[[float], None] = time.sleep,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.stack = stack
        self.transport = transport
        self.state = {"endpoint": stack.endpoint, "admin_token": stack.config.router.admin_token}
        self.replicas = stack.config.router.num_replicas
        self._sleep = sleep

    def each_replica(self, method: str, path: str, body: object = None, *,
                     missing_ok: bool = False) -> list[dict[str, Any]]:
        """``method path`` until ``router.num_replicas`` distinct replicas have answered it
        (bounded tries). With ``missing_ok`` a 404 (a replica without the target, or one
        that already took it out) is passed over; otherwise it is an error."""
        seen: dict[str, dict[str, Any]] = {}
        for _ in range(8 * self.replicas):
            try:
                answer = call(self.state, method, path, json=body, transport=self.transport)
            except RouterError as exc:
                if not (missing_ok and " 404 " in str(exc)):
                    raise
                if self.replicas == 1:
                    break
                continue
            seen[str(answer.get("replica"))] = answer
            if len(seen) >= self.replicas:
                break
        return list(seen.values())

    def _listed(self, name: str) -> bool:
        targets = call(self.state, "GET", "/v1/targets", transport=self.transport)["targets"]
        return any(t["name"] == name for t in targets)

    def add(self, edge: EdgeWorker) -> None:
        stack = self.stack
        stack.joined.add(edge.name)
        stack.config = stack.config.model_copy(update={"edges": [*stack.config.edges, edge]})
        stack.start_edge(edge.name)
        stack.wait_edge(edge.name)
        wait_until(lambda: self._listed(edge.name), ROUTER_TIMEOUT_S,
                   f"the router to route to {edge.name}", 0.3)

    def remove(self, edge: EdgeWorker) -> None:
        stack, name = self.stack, edge.name
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        drain = f"/v1/targets/{name}/drain"
        while any(a.get("in_flight") for a in self.each_replica("POST", drain,
                                                                  missing_ok=True)):
            if time.monotonic() > deadline:
                break  # calls still in flight fail over when the worker stops
            self._sleep(0.2)
        process = stack.edges.pop(name)
        for marker in ("down", "restart"):
            (stack.control_dir / f"{name}.{marker}").unlink(missing_ok=True)
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a worker that ignores SIGTERM is killed
            process.kill()
            process.wait(timeout=5)
        stack.config = stack.config.model_copy(
            update={"edges": [e for e in stack.config.edges if e.name != name]})
        if name in stack.joined:
            stack.joined.discard(name)
            wait_until(lambda: not self._listed(name), ROUTER_TIMEOUT_S,
                       f"{name} to leave the router's fleet", 0.3)
        else:
            self.each_replica("DELETE", f"/v1/targets/{name}", missing_ok=True)

    def apply(self, change: Plan, new: StackConfig) -> None:
        if change.refused:
            raise ReloadError(refusal(change))
        freed = {(e.host, e.port) for e in change.remove} | \
                {(old.host, old.port) for old, _ in change.replace}
        busy = [f"{e.name} {e.host}:{e.port}" for e in
                [*change.add, *(new_edge for _, new_edge in change.replace)]
                if (e.host, e.port) not in freed and not port_free(e.host, e.port)]
        if busy:
            raise ReloadError(f"refused, nothing changed: port in use: {', '.join(busy)}")
        started: list[EdgeWorker] = []
        try:
            for edge in change.add:
                started.append(edge)
                self.add(edge)
        except (StackError, RouterError) as exc:
            for edge in started:
                if edge.name in self.stack.edges:
                    self.remove(edge)
            raise ReloadError(f"could not add edge worker {started[-1].name}, "
                              f"nothing changed: {exc}") from None
        for name, link in change.links.items():
            self.each_replica("PUT", f"/v1/links/{name}", link.model_dump())
        for edge in change.remove:
            self.remove(edge)
        for old, replacement in change.replace:
            self.remove(old)
            self.add(replacement)
        self.stack.config = new


def reload(stack: Stack, config_file: Path | None) -> dict[str, Any]:
    """Read the config again and apply it: ``{"ok", "changes", "error"}`` for the CLI."""
    path = config_file or stack.config_file
    try:
        loaded = StackConfig.load(path)
        new = effective(loaded, stack.config, stack.port_override)
    except (OSError, ValueError, ValidationError) as exc:
        return {"ok": False, "changes": [], "error": f"{path}: {exc}"}
    change = plan(stack.config, new)
    try:
        if change.refused:
            raise ReloadError(refusal(change))
        if not change.empty:
            Applier(stack).apply(change, new)
    except (ReloadError, StackError, RouterError) as exc:
        return {"ok": False, "changes": [], "error": str(exc)}
    if config_file is not None:
        stack.config_file = config_file
    stack.write_state()
    for line in change.lines():
        stack.say(f"reload: {line}")
    return {"ok": True, "changes": change.lines(), "error": None,
            "config_file": str(path) if path else "the embedded default config"}


def serve_request(stack: Stack) -> None:
    """Carry out a reload the command line asked for, if any (the watchdog calls this)."""
    pending = stack.control_dir / REQUEST
    if not pending.exists():
        return
    asked: dict[str, Any] = {"id": "unknown"}
    try:
        asked = json.loads(pending.read_text())
        pending.unlink()
        result = reload(stack, Path(asked["config_file"]) if asked.get("config_file") else None)
    except Exception as exc:  # the watchdog thread must outlive any reload
        result = {"ok": False, "changes": [], "error": f"{type(exc).__name__}: {exc}"}
    answer = stack.control_dir / f"reload.{asked['id']}.json"
    answer.with_suffix(".tmp").write_text(json.dumps(result))
    answer.with_suffix(".tmp").replace(answer)


def request(state: dict[str, Any], config_file: Path | None, timeout_s: float,
            sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Ask the supervisor of ``state`` to reload and wait for its answer (bounded)."""
    control = Path(state["control_dir"])
    ident = uuid.uuid4().hex
    tmp = control / f"{REQUEST}.{ident}.tmp"
    tmp.write_text(json.dumps({"id": ident, "config_file": str(config_file.resolve())
                               if config_file else None}))
    os.replace(tmp, control / REQUEST)
    answer = control / f"reload.{ident}.json"
    deadline = time.monotonic() + timeout_s
    while not answer.exists():
        if time.monotonic() > deadline:
            (control / REQUEST).unlink(missing_ok=True)
            raise ReloadError(f"no answer from the stack's supervisor within {timeout_s:.0f} s "
                              "(is `edgeroute up` running?)")
        sleep(0.2)
    result: dict[str, Any] = json.loads(answer.read_text())
    answer.unlink(missing_ok=True)
    return result

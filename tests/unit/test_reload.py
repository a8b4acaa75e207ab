"""``edgeroute reload``'s plan: what a changed stack config changes live, and what it refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgeroute.config import StackConfig
from edgeroute.tools.reload import Applier, Plan, ReloadError, effective, plan, request


def config(**changes: Any) -> StackConfig:
    document = StackConfig().model_dump(mode="json")
    for path, value in changes.items():
        node = document
        *parents, leaf = path.split("__")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[leaf] = value
    return StackConfig.model_validate(document)


def test_an_unchanged_config_changes_nothing() -> None:
    change = plan(config(), config())
    assert change.empty and change.lines() == []


def test_added_removed_replaced_edges_and_changed_links_are_told_apart() -> None:
    current = config()
    document = current.model_dump(mode="json")
    edge_b = document["edges"].pop(1)
    document["edges"].append({**edge_b, "name": "edge-c", "port": 8103})
    document["edges"][0]["concurrency"] = 2
    document["cloud"]["link"]["base_ms"] = 80.0
    document["edge_restart_delay_s"] = 1.0
    change = plan(current, StackConfig.model_validate(document))
    assert [e.name for e in change.add] == ["edge-c"]
    assert [e.name for e in change.remove] == ["edge-b"]
    assert [(old.concurrency, new.concurrency) for old, new in change.replace] == [(1, 2)]
    assert set(change.links) == {"cloud"} and change.links["cloud"].base_ms == 80.0
    assert change.restart_delay_s == (5.0, 1.0)
    assert not change.refused
    lines = "\n".join(change.lines())
    assert "edge edge-c: added (port 8103" in lines
    assert "edge edge-b: removed" in lines
    assert "edge edge-a: restarted with new settings (concurrency)" in lines
    assert "link cloud: base_ms=80.0" in lines


def test_a_changed_edge_link_alone_is_set_live_not_restarted() -> None:
    change = plan(config(), config(edges__1__link={"base_ms": 40.0, "jitter_ms": 3.0}))
    assert not change.replace and set(change.links) == {"edge-b"}
    assert change.links["edge-b"].base_ms == 40.0


@pytest.mark.parametrize("field, value, named", [
    ("port", 8080, "port"),
    ("ingress", "proxy", "ingress"),
    ("ray_address", "10.0.0.1:6379", "ray_address"),
    ("router__num_replicas", 2, "router.num_replicas"),
    ("cloud__num_gpus", 1.0, "cloud.num_gpus"),
    ("cloud__resources", {"accel": 1.0}, "cloud.resources.accel"),
])
def test_fields_that_need_a_restart_are_refused_by_name(field: str, value: Any,
                                                        named: str) -> None:
    change = plan(config(), config(**{field: value}))
    assert change.refused == [named]


def test_an_added_external_target_needs_a_restart_but_its_link_does_not() -> None:
    external = {"name": "far", "url": "http://10.0.0.9:9000", "link": {"base_ms": 5.0}}
    current = config(external=[external])
    assert plan(config(), current).refused == ["external.far"]
    change = plan(current, config(external=[{**external, "link": {"base_ms": 9.0}}]))
    assert not change.refused and change.links["far"].base_ms == 9.0


def test_a_refused_plan_applies_nothing() -> None:
    class Untouchable:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the stack was touched: {name}")

    applier = Applier.__new__(Applier)
    applier.stack = Untouchable()  # type: ignore[assignment]
    change = Plan(add=list(config().edges), refused=["port", "ingress"])
    with pytest.raises(ReloadError, match=r"need a restart.*port, ingress"):
        applier.apply(change, config())


def test_the_running_stacks_tokens_and_port_override_carry_over() -> None:
    running = config(port=9000, router__admin_token="a" * 24, router__fleet_token="f" * 24)
    new = effective(config(edges__0__concurrency=2), running, port_override=9000)
    assert new.port == 9000
    assert new.router.admin_token == "a" * 24 and new.router.fleet_token == "f" * 24
    assert not plan(running, new).refused
    assert not plan(running, effective(config(), running, port_override=None)).empty


def test_the_jobs_folder_up_chose_carries_over(tmp_path: Path) -> None:
    running = config().with_jobs_dir(tmp_path / "jobs")
    new = effective(config(), running, port_override=None)
    assert new.router.jobs.dir == (tmp_path / "jobs").resolve()
    assert not plan(running, new).refused


def test_a_request_without_a_supervisor_gives_up_within_its_bound(tmp_path: Path) -> None:
    with pytest.raises(ReloadError, match="no answer from the stack's supervisor"):
        request({"control_dir": str(tmp_path)}, None, timeout_s=0.3)
    assert list(tmp_path.iterdir()) == []


def test_the_supervisor_answers_a_request_and_refuses_a_port_change(tmp_path: Path) -> None:
    import threading
    from types import SimpleNamespace

    import yaml

    from edgeroute.tools.reload import serve_request

    running = config(router__admin_token="a" * 24, router__fleet_token="f" * 24)
    stack = SimpleNamespace(config=running, control_dir=tmp_path, port_override=None,
                            config_file=None, say=print, write_state=lambda: None)
    moved = tmp_path / "moved.yaml"
    moved.write_text(yaml.safe_dump(config(port=9100).model_dump(mode="json")))
    done = threading.Event()

    def supervise() -> None:
        while not done.wait(0.05):
            serve_request(stack)  # type: ignore[arg-type]

    watchdog = threading.Thread(target=supervise)
    watchdog.start()
    try:
        refused = request({"control_dir": str(tmp_path)}, moved, timeout_s=10)
        unchanged = request({"control_dir": str(tmp_path)}, None, timeout_s=10)
    finally:
        done.set()
        watchdog.join()
    assert refused["ok"] is False and "need a restart" in refused["error"]
    assert refused["error"].endswith(": port")
    assert stack.config is running, "nothing applied"
    assert unchanged == {"ok": True, "changes": [], "error": None,
                         "config_file": "the embedded default config"}
    assert list(tmp_path.iterdir()) == [moved]


def test_each_change_reaches_every_router_replica_once_answered() -> None:
    from itertools import cycle
    from types import SimpleNamespace

    import httpx

    replicas = cycle(["r1", "r1", "r2"])
    removed: set[str] = set()

    def router(request: httpx.Request) -> httpx.Response:
        replica = next(replicas)
        if request.method == "DELETE" and replica in removed:
            return httpx.Response(404, json={"error": "unknown target 'edge-b'"})
        removed.add(replica)
        return httpx.Response(200, json={"replica": replica})

    stack = SimpleNamespace(endpoint="http://router", config=config(router__num_replicas=2))
    applier = Applier(stack, transport=httpx.MockTransport(router))  # type: ignore[arg-type]
    answers = applier.each_replica("DELETE", "/v1/targets/edge-b", missing_ok=True)
    assert sorted(a["replica"] for a in answers) == ["r1", "r2"] and removed == {"r1", "r2"}
    with pytest.raises(Exception, match="404"):
        applier.each_replica("DELETE", "/v1/targets/edge-b")

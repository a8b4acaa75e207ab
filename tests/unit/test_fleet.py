"""The edge fleet without Ray: the membership table and its TTL, and one replica's sync.

Fake clock; the registry is replaced by a function returning what the actor
would (:meth:`router.fleet.FleetTable.snapshot`).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from edgeroute.config import RouterSettings, StackConfig
from edgeroute.tools.serve_config import serve_config, without_tokens
from router.fleet import FleetFull, FleetTable, Member, changes
from router.fleet_actor import FleetSync, RegistryUnavailable
from router.metrics import MemoryFactory, RouterMetrics
from router.service import RoutingService
from router.targets import Target, TargetSet
from tests.unit.fakes import FakeClock, FakeTransport, fake_of, fake_target, run_async

TTL_S = 3.0


def member(name: str, port: int = 9000, **extra: Any) -> Member:
    return Member(name=name, url=f"http://10.0.0.1:{port}", **extra)


def test_a_member_that_keeps_beating_stays_and_one_that_stops_is_dropped_after_the_ttl() -> None:
    clock = FakeClock()
    table = FleetTable(clock=clock)
    assert table.heartbeat(member("site-a")) is True
    assert table.heartbeat(member("site-b")) is True
    for _ in range(5):
        clock.advance(1.0)
        assert table.heartbeat(member("site-a")) is False
    assert [e.member.name for e in table.live(TTL_S)] == ["site-a"]
    assert table.expire(TTL_S) == []
    clock.advance(TTL_S + 0.1)
    assert table.live(TTL_S) == []


def test_a_member_is_kept_up_to_the_ttl_and_reports_its_heartbeat_age() -> None:
    clock = FakeClock()
    table = FleetTable(clock=clock)
    table.heartbeat(member("site-a"))
    clock.advance(TTL_S)
    (entry,) = table.snapshot(TTL_S)
    assert entry["name"] == "site-a" and entry["last_heartbeat_s_ago"] == TTL_S
    assert entry["url"] == "http://10.0.0.1:9000"


def test_leaving_is_immediate_and_a_second_leave_says_it_was_not_a_member() -> None:
    table = FleetTable(clock=FakeClock())
    table.heartbeat(member("site-a"))
    assert table.leave("site-a") is True
    assert table.leave("site-a") is False
    assert table.live(TTL_S) == []


def test_a_full_table_refuses_new_members_but_keeps_refreshing_old_ones() -> None:
    table = FleetTable(max_members=1, clock=FakeClock())
    table.heartbeat(member("site-a"))
    with pytest.raises(FleetFull):
        table.heartbeat(member("site-b"))
    assert table.heartbeat(member("site-a")) is False


def test_a_changed_document_restarts_the_membership_age() -> None:
    clock = FakeClock()
    table = FleetTable(clock=clock)
    table.heartbeat(member("site-a"))
    clock.advance(2.0)
    table.heartbeat(member("site-a", port=9001))
    (entry,) = table.snapshot(TTL_S)
    assert entry["joined_s_ago"] == 0 and entry["url"].endswith(":9001")


@pytest.mark.parametrize("document", [
    {"name": "Site A", "url": "http://h:1"},
    {"name": "site-a", "url": "ftp://h:1"},
    {"name": "site-a", "url": "http://"},
    {"name": "site-a", "url": "http://h:1", "tier": "moon"},
    {"name": "site-a", "url": "http://h:1", "concurrency": 0},
    {"name": "site-a", "url": "http://h:1", "extra": 1},
    {"name": "site-a", "url": "http://h:1", "link": {"base_ms": -1}},
])
def test_bad_member_documents_are_refused(document: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Member.model_validate(document)


def test_changes_add_new_remove_gone_and_replace_changed_members() -> None:
    current = {"a": member("a"), "b": member("b"), "c": member("c")}
    todo = changes(current, [member("a"), member("c", port=9001), member("d")])
    assert todo.remove == ["b", "c"]
    assert [m.name for m in todo.add] == ["c", "d"]
    assert changes(current, current.values()).add == []


class Registry:
    """What the registry actor answers, over a table with a fake clock; can fail."""

    def __init__(self, clock: FakeClock) -> None:
        self.table = FleetTable(clock=clock)
        self.down = False

    async def read(self) -> list[dict[str, Any]]:
        if self.down:
            raise RegistryUnavailable("fleet registry: timeout")
        return self.table.snapshot(TTL_S)


class Replica:
    """One router replica's service (a cloud target only) synced from ``registry``; every
    fleet target it makes is kept in ``made``."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.registry = Registry(self.clock)
        self.made: list[Target] = []
        self.service = RoutingService(
            TargetSet([fake_target(FakeTransport("cloud"), tier="cloud", quality="large")]),
            metrics=RouterMetrics(MemoryFactory()))
        self.sync = FleetSync(self.registry.read, self.service, self._make, interval_s=1.0)

    def _make(self, m: Member) -> Target:
        target = fake_target(FakeTransport(m.name), tier=m.tier, quality=m.quality)
        self.made.append(target)
        return target

    def join(self, *names: str) -> None:
        for name in names:
            self.registry.table.heartbeat(member(name))


def test_a_replica_routes_to_members_that_join_and_stops_when_one_expires() -> None:
    r = Replica()

    async def main() -> None:
        r.join("site-a", "site-b", "site-c")
        await r.sync.sync_once()
        assert sorted(t.name for t in r.service.targets) == ["cloud", "site-a", "site-b",
                                                              "site-c"]
        generation = r.service.targets.generation
        r.clock.advance(2.0)
        r.join("site-a", "site-c")
        r.clock.advance(1.5)
        todo = await r.sync.sync_once()
        assert todo is not None and todo.remove == ["site-b"]
        assert sorted(t.name for t in r.service.targets) == ["cloud", "site-a", "site-c"]
        assert r.service.targets.generation == generation + 1
        await r.sync.sync_once()
        assert fake_of(next(t for t in r.made if t.name == "site-b")).closed

    run_async(main)


def test_a_retired_target_is_closed_only_once_no_call_to_it_is_in_flight() -> None:
    r = Replica()

    async def main() -> None:
        r.join("site-a")
        await r.sync.sync_once()
        (target,) = r.made
        target.estimator.in_flight = 1
        r.registry.table.leave("site-a")
        await r.sync.sync_once()
        await r.sync.sync_once()
        assert r.service.targets.get("site-a") is None and not fake_of(target).closed
        target.estimator.in_flight = 0
        await r.sync.sync_once()
        assert fake_of(target).closed

    run_async(main)


def test_an_unreachable_registry_leaves_the_fleet_as_last_seen() -> None:
    r = Replica()

    async def main() -> None:
        r.join("site-a")
        await r.sync.sync_once()
        r.registry.down = True
        r.clock.advance(60)
        assert await r.sync.sync_once() is None
        assert r.service.targets.get("site-a") is not None
        assert r.sync.last_error is not None and "timeout" in r.sync.last_error
        r.registry.down = False
        await r.sync.sync_once()
        assert r.service.targets.get("site-a") is None

    run_async(main)


def test_a_new_member_is_priced_and_starts_from_the_prior() -> None:
    r = Replica()

    async def main() -> None:
        r.join("site-a")
        await r.sync.sync_once()
        snapshot = {t["name"]: t for t in r.service.snapshot()["targets"]}
        assert snapshot["site-a"]["tier"] == "edge"
        assert snapshot["site-a"]["cost_usd_per_request"] > 0
        assert snapshot["site-a"]["estimates"]["observed"] is False

    run_async(main)


def test_tokens_leave_the_serve_config_for_the_environment() -> None:
    config = StackConfig.model_validate({"router": {"admin_token": "adm1n-secret",
                                                    "fleet_token": "fl33t-secret"}})
    stripped, env = without_tokens(config)
    document = json.dumps(serve_config(stripped, {}))
    assert "adm1n-secret" not in document and "fl33t-secret" not in document
    assert env == {"EDGEROUTE_ADMIN_TOKEN": "adm1n-secret",
                   "EDGEROUTE_FLEET_TOKEN": "fl33t-secret"}
    assert without_tokens(StackConfig())[1] == {}


def test_a_worker_is_a_target_of_the_models_it_hosts() -> None:
    from router.build import fleet_target
    from router.fleet import hosting

    documents = [{"name": "old", "models": None}, {"name": "both", "models": ["digits", "wine"]},
                 {"name": "wine-only", "models": ["wine"]}]
    assert [d["name"] for d in hosting(documents, "digits", "digits")] == ["old", "both"]
    assert [d["name"] for d in hosting(documents, "wine", "digits")] == ["both", "wine-only"]
    joined = Member(name="both", url="http://127.0.0.1:9", models=["digits", "wine"])
    assert [t.name for t in fleet_target(joined, RouterSettings()).trial.tensors] == ["input"]

"""The simulator: the real decision code in virtual time, every arm held to the oracle."""

from __future__ import annotations

import json
from typing import Any

import pytest

import router.decision
from edgeroute.tools.cli import main
from edgeroute.tools.sim import engine
from edgeroute.tools.sim.engine import ArmSpec, Simulation
from edgeroute.tools.sim.execute import Limits, Request, run_plan
from edgeroute.tools.sim.runner import split
from edgeroute.tools.sim.synthetic import DOWN, Scenario, build_topology
from edgeroute.tools.sim.world import FAILED, OK, World
from router.plan import Plan

SMALL = Scenario(sites=20, requests=5_000, rate_rps=5_000.0, seed=3)
ARMS = (ArmSpec("router"), ArmSpec("always-edge", "always-edge"),
        ArmSpec("always-cloud", "always-cloud"))


@pytest.fixture(scope="module")
def small() -> dict[str, Any]:
    return Simulation(SMALL, arms=ARMS).run()


def test_the_simulator_runs_the_routers_own_decision_code(monkeypatch: pytest.MonkeyPatch) -> None:
    assert engine.decide is router.decision.decide
    calls = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["policy_name"])
        return router.decision.decide(*args, **kwargs)

    monkeypatch.setattr(engine, "decide", spy)
    Simulation(Scenario(sites=5, requests=200, seed=1), arms=ARMS[:2]).run()
    assert calls.count("default") == 200 and calls.count("always-edge") == 200


def test_no_arm_attains_a_request_the_oracle_misses_nor_pays_less(small: dict[str, Any]) -> None:
    oracle = small["oracle"]
    for name, arm in small["arms"].items():
        vs = arm["vs_oracle"]
        assert arm["attainment"] <= oracle["attainment"], name
        assert vs["both_attained"] == round(arm["attainment"] * SMALL.requests), name
        assert vs["cost_ratio_both_attained"] >= 1.0, name


def test_the_router_beats_each_baseline_where_it_should(small: dict[str, Any]) -> None:
    """A fifth of the requests need the large model and sites fail: always-edge misses
    those; always-cloud pays the cloud for every request and misses the tight deadlines."""
    arms = small["arms"]
    router_arm, edge, cloud = arms["router"], arms["always-edge"], arms["always-cloud"]
    assert router_arm["attainment"] > edge["attainment"] + 0.05
    assert router_arm["attainment"] > cloud["attainment"]
    assert router_arm["cost_per_1000_usd"] < 0.7 * cloud["cost_per_1000_usd"]
    assert edge["cloud_share"] < 0.05 < 0.95 < cloud["cloud_share"]


def test_summary_says_what_a_user_reads(small: dict[str, Any]) -> None:
    assert set(small["arms"]) == {"router", "always-edge", "always-cloud"}
    router_arm = small["arms"]["router"]
    assert router_arm["requests"] == SMALL.requests
    assert router_arm["decide"]["p50_us"] > 0
    assert router_arm["probes_per_s"] > 0
    assert small["oracle"]["p50_ms"] <= small["oracle"]["p99_ms"]
    assert small["peak_rss_mib"] > 0
    assert abs(small["virtual_s"] - SMALL.duration_s) < 0.2 * SMALL.duration_s
    assert set(router_arm["attainment_by_deadline_ms"]) == {f"{d:g}" for d in SMALL.deadlines_ms}


def _figures(summary: dict[str, Any]) -> dict[str, Any]:
    keep = ("attainment", "cost_usd", "p50_ms", "p99_ms", "calls_per_request", "ejections",
            "table_rebuilds", "probes_per_s")
    return {name: {k: arm[k] for k in keep} for name, arm in summary["arms"].items()}


def test_a_seed_gives_the_same_run_and_replicas_learn_apart() -> None:
    s = Scenario(sites=10, requests=1_500, seed=5)
    arms = (ArmSpec("router"), ArmSpec("router x3", replicas=3))
    first, second = Simulation(s, arms=arms).run(), Simulation(s, arms=arms).run()
    assert _figures(first) == _figures(second)
    one, three = first["arms"]["router"], first["arms"]["router x3"]
    assert three["probes_per_s"] > 2 * one["probes_per_s"]
    other = Simulation(Scenario(sites=10, requests=1_500, seed=6), arms=arms[:1]).run()
    assert _figures(other)["router"] != _figures(first)["router"]


def test_a_site_queues_in_fifo_slots_and_refuses_when_full() -> None:
    topo = build_topology(Scenario(sites=3, requests=10, outage_share=0.0, cloud_outage_s=None))
    world = World(topo)
    world.concurrency[0], world.max_wait_ms[0] = 1, 15.0
    first = world.call(0, 0.0, 0.0, 100.0, 2.0, 10.0, 100.0)
    second = world.call(0, 0.0, 0.0, 100.0, 2.0, 10.0, 100.0)
    third = world.call(0, 0.0, 0.0, 100.0, 2.0, 10.0, 100.0)
    assert (first.outcome, first.wait_ms, second.outcome, second.wait_ms) == (OK, 0.0, OK, 10.0)
    assert third.outcome == FAILED and world.refused == 1
    cloud = [world.call(topo.cloud, 0.0, 0.0, 100.0, 40.0, 3.0, 100.0) for _ in range(50)]
    assert all(c.outcome == OK and c.wait_ms == 0.0 for c in cloud)


class _Hooks:
    def claim(self, target: int) -> object:
        return object()

    def allows(self, target: int) -> bool:
        return True

    def expected_ms(self, target: int) -> float:
        return 20.0

    def typical_ms(self, target: int) -> float:
        return 10.0

    def try_hedge(self) -> bool:
        return True

    def record_retry(self) -> None:
        return None


def test_a_plan_falls_back_when_its_site_is_down_and_hedges_a_straggler() -> None:
    topo = build_topology(Scenario(sites=3, requests=10, cloud_outage_s=None))
    topo.outages.clear()
    topo.outages[0] = ((0.0, 100.0, DOWN),)
    world = World(topo)
    ids = {name: i for i, name in enumerate(topo.names())}
    small = [True, True, True, False]
    req = Request([0, 1, 3], [5.0, 8.0, 40.0], [4.0, 4.0, 3.0], 0.0, 100.0, 0.99)
    plan = Plan("single", "site-0000", fallbacks=("site-0001", "cloud"))
    out = run_plan(plan, req, world, _Hooks(), Limits(), ids, small)
    assert [c.outcome for c in out.calls] == [FAILED, OK]
    assert out.answer is not None and out.answer.target == 1 and out.answered_ms == 5.0 + 12.0
    slow = Request([1, 2, 3], [90.0, 8.0, 40.0], [4.0, 4.0, 3.0], 0.0, 100.0, 0.99)
    hedged = Plan("hedged", "site-0001", hedge="site-0002", hedge_delay_ms=10.0)
    out = run_plan(hedged, slow, World(topo), _Hooks(), Limits(), ids, small)
    assert out.hedged and out.answer is not None and out.answer.target == 2
    assert out.answered_ms == 10.0 + 12.0


def test_arms_split_over_workers_by_cost() -> None:
    arms = [ArmSpec("router"), ArmSpec("router x4", replicas=4),
            ArmSpec("always-edge", "always-edge"), ArmSpec("always-cloud", "always-cloud")]
    groups = split(arms, 2)
    assert len(groups) == 2 and sorted(a.name for g in groups for a in g) == sorted(
        a.name for a in arms)
    assert split(arms[:1], 4) == [[arms[0]]]


def test_the_command_prints_tables_and_writes_json(tmp_path: Any,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sim.json"
    assert main(["simulate", "--requests", "400", "--sites", "5", "--workers", "1",
                 "--baselines", "always-cloud", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Placement" in printed and "oracle" in printed
    document = json.loads(out.read_text())
    assert set(document["arms"]) == {"router", "always-cloud"}
    assert document["decisions"] == 800

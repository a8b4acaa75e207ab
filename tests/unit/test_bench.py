"""Benchmark logic without a stack: scenario files, the hindsight oracle, the goals."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from edgeroute.tools.bench.compare import ORACLE, gap_closed, goals, hedging_effect, oracle
from edgeroute.tools.bench.scenario import Scenario, ScenarioError, merge
from edgeroute.tools.figures import attained_slo, figures
from edgeroute.tools.loadgen import Outcome, Phase

SCENARIOS = Path(__file__).resolve().parents[2] / "infra" / "scenarios"


def outcome(seq: int, *, latency_ms: float = 10.0, cost: float = 1e-6, status: int = 200,
            tier: str = "edge", quality: str = "any", deadline_ms: float = 100.0,
            predicted_p_miss: float | None = None) -> Outcome:
    ok = status == 200
    return Outcome("p", seq * 0.1, latency_ms, status, deadline_ms, quality, 3, 3 if ok else None,
                   tier if ok else None, tier if ok else None, cost if ok else 0.0, 1, False,
                   False, None, None if ok else "failed", 0.0, seq,
                   predicted_p_miss=predicted_p_miss)


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.yaml")), ids=lambda p: p.stem)
def test_checked_in_scenarios_are_valid_and_say_where_numbers_come_from(path: Path) -> None:
    scenario = Scenario.load(path)
    assert scenario.name == path.stem
    assert scenario.stack_config().edges and scenario.load_phases()
    if path.stem == "default":
        assert {"links", "deadlines", "rates", "prices"} <= set(scenario.sources)
        assert {"default", "always-edge", "always-cloud", "random", "round-robin",
                "least-latency", "least-cost"} <= set(scenario.arms)


def test_scenario_errors_name_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\narms: [default, nope]\nphases: [{name: a, duration_s: 1, "
                   "rate_rps: 1}]\n")
    with pytest.raises(ScenarioError, match="nope"):
        Scenario.load(bad)
    bad.write_text("name: x\nphases: [{name: a, duration_s: 1, rate_rps: 1, faults: "
                   "[{at_s: 0, action: kill, target: cloud}]}]\n")
    with pytest.raises(ScenarioError, match="kill needs one of"):
        Scenario.load(bad)
    bad.write_text("name: x\nphases: [{name: a, duration_s: 1, rate_rps: 1, faults: "
                   "[{at_s: 0, action: link, target: cloud, link: {rtt: 3}}]}]\n")
    with pytest.raises(ScenarioError, match="unknown link fields"):
        Scenario.load(bad)
    with pytest.raises(ScenarioError, match="cannot read"):
        Scenario.load(tmp_path / "missing.yaml")


def test_merge_lays_changes_over_defaults_and_named_lists_by_name() -> None:
    base = {"port": 1, "edges": [{"name": "a", "port": 2, "link": {"base_ms": 6}},
                                 {"name": "b", "port": 3}]}
    merged = merge(base, {"edges": [{"name": "a", "link": {"jitter_ms": 1}},
                                    {"name": "c", "port": 4}]})
    assert merged["port"] == 1
    assert merged["edges"] == [{"name": "a", "port": 2, "link": {"base_ms": 6, "jitter_ms": 1}},
                               {"name": "b", "port": 3}, {"name": "c", "port": 4}]


def test_scenario_arms_are_open_to_the_anonymous_load() -> None:
    scenario = Scenario.model_validate({
        "name": "x", "arms": ["default", "no-hedge"], "phases": [
            {"name": "a", "duration_s": 1, "rate_rps": 1}],
        "policy": {"policies": {"no-hedge": {"hedge": {"enabled": False}}}}})
    document = scenario.policy_document()
    assert "no-hedge" in document.anonymous.allowed_policies
    assert not document.policies["no-hedge"].hedge.enabled


def test_a_ramp_moves_the_arrival_rate_linearly() -> None:
    times = Phase("ramp", 100.0, 0.0, end_rate_rps=20.0).arrival_times(np.random.default_rng(0))
    assert 900 < len(times) < 1100  # mean (0 + 20) / 2 * 100
    first, second = (times < 50).sum(), (times >= 50).sum()
    assert 2.5 < second / first < 3.5  # integral of the rate: 250 vs 750
    assert np.all(np.diff(times) >= 0) and times.min() >= 0 and times.max() <= 100


def test_oracle_takes_the_cheapest_outcome_that_met_the_slo() -> None:
    arms = {
        "cheap-slow": [outcome(0, latency_ms=150, cost=1e-8), outcome(1, cost=1e-8)],
        "dear-fast": [outcome(0, cost=1e-5, tier="cloud"), outcome(1, cost=1e-5, tier="cloud")],
        "broken": [outcome(0, status=503), outcome(1, status=504)],
    }
    chosen, picked = oracle(arms)
    assert [o.cost_usd for o in chosen] == [1e-5, 1e-8]
    assert picked == {"cheap-slow": 1, "dear-fast": 1, "broken": 0}


def test_oracle_respects_quality_and_keeps_misses_as_misses() -> None:
    arms = {"edge": [outcome(0, quality="high", cost=1e-8)],
            "cloud": [outcome(0, quality="high", tier="cloud", cost=1e-5)]}
    chosen, _ = oracle(arms)
    assert chosen[0].tier == "cloud"
    missed = {"a": [outcome(0, latency_ms=300)], "b": [outcome(0, latency_ms=200)]}
    chosen, _ = oracle(missed)
    assert chosen[0].latency_ms == 200 and not attained_slo(chosen[0])


def test_oracle_attainment_bounds_every_arm() -> None:
    rng = np.random.default_rng(5)
    arms = {name: [outcome(i, latency_ms=float(rng.lognormal(4, 0.6)),
                           cost=float(rng.uniform(1e-8, 1e-5)),
                           status=503 if rng.random() < 0.05 else 200) for i in range(300)]
            for name in ("a", "b", "c")}
    chosen, _ = oracle(arms)
    best = figures(chosen, 10)["slo_attainment"]
    assert all(best >= figures(o, 10)["slo_attainment"] for o in arms.values())


def _overall(attainment: float, cost: float) -> dict[str, float]:
    return {"slo_attainment": attainment, "cost_per_1k_usd": cost}


def test_goals_are_judged_against_the_same_run() -> None:
    overall = {"default": _overall(0.97, 0.2), "always-cloud": _overall(0.85, 1.0),
               "always-edge": _overall(0.90, 0.05), ORACLE: _overall(0.99, 0.1)}
    verdicts = {g.name: g.met for g in goals(overall)}
    assert verdicts["cost vs always-cloud"] is True
    assert verdicts["attainment vs best baseline"] is True
    assert verdicts["attainment vs oracle"] is True
    # The best static baseline by attainment is always-edge, cheaper than the oracle: no gap.
    assert verdicts["cost gap to the oracle"] is None
    variant = {**overall, "no-hedge": _overall(0.99, 0.2)}
    assert "always-edge" in next(g.measured for g in goals(variant)
                                 if g.name == "attainment vs best baseline")
    worse = {**overall, "default": _overall(0.91, 0.9)}
    verdicts = {g.name: g.met for g in goals(worse)}
    assert verdicts["cost vs always-cloud"] is False
    assert verdicts["attainment vs best baseline"] is False
    assert gap_closed(router=0.3, baseline=1.0, best=0.1) == pytest.approx(0.7 / 0.9)


def test_hedging_effect_compares_p99_and_extra_calls() -> None:
    without = [outcome(i, latency_ms=500 if i % 50 == 0 else 20) for i in range(200)]
    hedged = [dataclasses.replace(o, latency_ms=min(o.latency_ms, 45.0),
                                  attempts=2 if o.latency_ms > 40 else 1,
                                  hedged=o.latency_ms > 40) for o in without]
    effect = hedging_effect(hedged, without)
    assert effect["p99_cut"] == pytest.approx(500 / 45, rel=0.05)
    assert effect["extra_requests"] == pytest.approx(0.02)
    assert effect["hedged_share"] == pytest.approx(0.02)


def test_calibration_sets_each_deadline_class_prediction_against_what_the_client_saw() -> None:
    tight = [outcome(i, latency_ms=30.0, deadline_ms=50.0, predicted_p_miss=0.1)
             for i in range(8)]
    tight += [outcome(8, latency_ms=60.0, deadline_ms=50.0, predicted_p_miss=0.1),
              outcome(9, status=504, latency_ms=50.0, deadline_ms=50.0, predicted_p_miss=0.1),
              outcome(10, status=503, deadline_ms=50.0)]
    loose = [outcome(20 + i, deadline_ms=500.0, predicted_p_miss=0.002) for i in range(10)]
    found = figures(tight + loose, 1.0)["calibration"]
    assert found["50"]["planned"] == 10 and found["50"]["unplanned"] == 1
    assert found["50"]["predicted_p_miss"] == pytest.approx(0.1)
    assert found["50"]["observed_miss"] == pytest.approx(0.2), "a late 200 is a miss too"
    assert found["50"]["gap_points"] == pytest.approx(10.0)
    assert found["500"]["gap_points"] == pytest.approx(-0.2)
    checked = {g.name: g for g in goals({"default": figures(tight + loose, 1.0)})}
    assert checked["calibration at the client"].met is False
    assert "50 ms" in checked["calibration at the client"].measured
    assert {g.name: g for g in goals({"default": figures(loose, 1.0)})}[
        "calibration at the client"].met is True

"""Per-target estimates on a fake clock: what the router learns from each call (latency as a
distribution, failure probability, cold starts, confidence, cost) and how fast it forgets.
How well its predicted P_miss matches what happens is ``test_calibration.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from router.estimator import Ewma, TargetEstimator
from router.latency import EstimatorSettings, ServiceScaling, rows_bucket
from router.policy import TierPrices
from tests.unit.fakes import FakeClock

REFRESH_S = 0.25


def estimator(clock: FakeClock, **kwargs: Any) -> TargetEstimator:
    return TargetEstimator(clock=clock, **kwargs)


def settle(clock: FakeClock, est: TargetEstimator) -> None:
    """Let the bounded refresh rate pass so that the next read rebuilds the tables."""
    clock.advance(est.settings.refresh_interval_s)


def feed(est: TargetEstimator, totals: np.ndarray, *, server_ms: float = 0.0,
         queue_ms: float = 0.0, rows: int = 1) -> None:
    for total in totals.tolist():
        est.observe_success(total, server_ms, queue_ms, rows)


def test_the_latency_distribution_is_learned_from_observed_calls() -> None:
    clock = FakeClock()
    est = estimator(clock)
    samples = np.random.default_rng(1).lognormal(np.log(30.0), 0.4, 20_000)
    feed(est, samples)
    settle(clock, est)
    latency = est.view(1, True, TierPrices()).latency
    assert latency.quantile(0.5) == pytest.approx(30.0, rel=0.03)
    assert latency.quantile(0.99) == pytest.approx(np.quantile(samples, 0.99), rel=0.03)
    assert latency.p_exceed(60.0) == pytest.approx(np.mean(samples > 60.0), abs=0.003)


def test_the_parts_add_up_to_network_plus_queue_plus_service() -> None:
    clock = FakeClock()
    est = estimator(clock)
    for _ in range(100):
        est.observe_success(total_ms=30.0, server_ms=8.0, queue_ms=2.0, batch_rows=1)
    settle(clock, est)
    latency = est.distribution(1)
    assert latency.quantile(0.5) == pytest.approx(30.0, rel=0.02)
    assert est.latency.network_median_ms() == pytest.approx(20.0, rel=0.02)


def test_tables_are_rebuilt_at_a_bounded_rate_not_on_every_call() -> None:
    clock = FakeClock()
    est = estimator(clock)
    feed(est, np.full(50, 10.0))
    first = est.distribution(1)
    feed(est, np.full(500, 100.0))
    assert est.distribution(1) is first, "no rebuild before the refresh interval"
    clock.advance(REFRESH_S / 2)
    assert est.distribution(1) is first
    clock.advance(REFRESH_S / 2)
    assert est.distribution(1).quantile(0.5) == pytest.approx(100.0, rel=0.02)
    rebuilt = est.latency.version
    clock.advance(10 * REFRESH_S)
    est.distribution(1)
    assert est.latency.version == rebuilt, "nothing new observed: nothing rebuilt"


def test_the_routers_estimators_rebuild_in_maintenance_never_on_a_read() -> None:
    """``rebuild_on_read=False`` (the router's): however due, a read (a request's decision)
    finds the tables of the last rebuild; the maintenance loop's ``maintain`` rebuilds them,
    the escalation table included."""
    clock = FakeClock()
    est = estimator(clock, settings=EstimatorSettings(rebuild_on_read=False))
    feed(est, np.full(50, 10.0))
    est.maintain()
    first = est.distribution(1)
    assert first.quantile(0.5) == pytest.approx(10.0, rel=0.02)
    feed(est, np.full(500, 100.0))
    for _ in range(200):
        est.observe_confidence(0.2)
    clock.advance(10 * REFRESH_S)
    unsure = est.escalation_probability(0.5)
    assert est.distribution(1) is first and est.latency.network_median_ms() is not None
    assert est.latency.network_median_ms() == pytest.approx(10.0, rel=0.02)
    assert est.escalation_probability(0.5) == unsure
    est.maintain()
    assert est.distribution(1).quantile(0.5) == pytest.approx(100.0, rel=0.02)
    assert est.escalation_probability(0.5) > unsure


def test_old_observations_fade_once_two_windows_of_new_ones_arrived() -> None:
    clock = FakeClock()
    est = estimator(clock, settings=EstimatorSettings(window_s=10.0, min_window_count=10))
    feed(est, np.full(200, 10.0))
    for _ in range(2):
        clock.advance(10.0)
        feed(est, np.full(200, 50.0))
    settle(clock, est)
    assert est.distribution(1).quantile(0.01) == pytest.approx(50.0, rel=0.02)


def test_an_idle_target_keeps_what_it_learned() -> None:
    clock = FakeClock()
    est = estimator(clock, settings=EstimatorSettings(window_s=10.0, min_window_count=10))
    feed(est, np.full(200, 10.0))
    clock.advance(3600.0)
    est.observe_probe(12.0)
    settle(clock, est)
    assert est.distribution(1).quantile(0.5) == pytest.approx(10.0, rel=0.02)


def test_a_probe_updates_only_the_network_distribution() -> None:
    clock = FakeClock()
    est = estimator(clock)
    for _ in range(50):
        est.observe_success(total_ms=10.0, server_ms=8.0, queue_ms=0.0, batch_rows=1)
    for _ in range(200):
        est.observe_probe(total_ms=40.0)
    settle(clock, est)
    assert est.distribution(1).quantile(0.5) == pytest.approx(48.0, rel=0.02)
    assert est.successes == 50


def test_the_prior_stands_until_the_target_answers() -> None:
    est = estimator(FakeClock(), prior_latency_ms=80.0)
    view = est.view(1, True, TierPrices())
    assert not view.observed
    assert view.latency.quantile(0.5) == pytest.approx(80.0, rel=1e-6)
    assert view.latency.quantile(0.99) > 2 * 80.0
    assert view.ewma_latency_ms == 80.0


def test_service_grows_with_the_batch_beyond_the_usual_one() -> None:
    clock = FakeClock()
    est = estimator(clock)
    rng = np.random.default_rng(2)
    for _ in range(400):
        rows = int(rng.integers(1, 9))
        est.observe_success(total_ms=1.0 + 2.0 * rows, server_ms=2.0 * rows, queue_ms=0.0,
                            batch_rows=rows)
    settle(clock, est)
    small, large = est.distribution(1), est.distribution(64)
    assert small.quantile(0.5) < large.quantile(0.5)
    assert large.quantile(0.5) == pytest.approx(1.0 + 2.0 * 64, rel=0.25)
    assert est.distribution(2).quantile(0.5) == small.quantile(0.5), "within the usual batch"


def test_service_scaling_is_linear_and_never_shrinks() -> None:
    fit = ServiceScaling(0.1)
    for rows in [1, 2, 4, 8] * 100:
        fit.update(rows, 3.0 + 1.0 * rows)
    typical = fit.mean_rows
    assert fit.factor(1) == 1.0
    assert fit.factor(64) == pytest.approx((3.0 + 64) / (3.0 + typical), rel=0.02)
    constant = ServiceScaling(0.1)
    constant.update(4, 8.0)
    assert constant.factor(16) == pytest.approx(4.0), "one batch size seen: proportional"
    assert [rows_bucket(r) for r in (0, 1, 2, 3, 8, 9)] == [1, 1, 2, 4, 8, 16]


def test_calls_in_flight_at_the_target_beyond_its_free_slots_add_their_service_time() -> None:
    clock = FakeClock()
    est = estimator(clock, settings=EstimatorSettings(concurrency=2))
    for _ in range(100):
        est.observe_success(total_ms=15.0, server_ms=10.0, queue_ms=0.0, batch_rows=1)
    settle(clock, est)
    idle = est.distribution(1).quantile(0.5)
    est.in_flight = 1
    assert est.distribution(1).quantile(0.5) == pytest.approx(idle), "a slot is free"
    est.in_flight = 4
    ahead_at_target = 4 * 10.0 / 15.0  # each call spends 10 of its 15 ms at the target
    expected = idle + (ahead_at_target + 1 - 2) * 10.0 / 2
    assert est.distribution(1).quantile(0.5) == pytest.approx(expected, rel=0.02)
    assert est.view(1, True, TierPrices()).in_flight == 4


def test_a_busy_spell_is_not_counted_twice() -> None:
    """A one-slot device (200 ms a call) that had three calls ahead of each one: the waits it
    reported are those calls' service, which the in-flight count explains. Once idle, it is
    predicted as idle (not with the waits of the busy spell), and busy again, as busy."""
    clock = FakeClock()
    est = estimator(clock)
    for _ in range(10):
        est.observe_success(total_ms=202.0, server_ms=200.0, queue_ms=0.0, batch_rows=1)
    for _ in range(200):
        est.observe_success(total_ms=802.0, server_ms=200.0, queue_ms=600.0, batch_rows=1,
                            ahead=3)
    settle(clock, est)
    assert est.distribution(1).quantile(0.99) == pytest.approx(202.0, rel=0.03)
    est.in_flight = 3
    assert est.distribution(1).quantile(0.5) == pytest.approx(802.0, rel=0.03)


def test_a_wait_no_call_in_flight_explains_is_learned() -> None:
    """Another router's traffic: waits reported with nothing of ours ahead stay in the queue
    estimate."""
    clock = FakeClock()
    est = estimator(clock)
    for _ in range(200):
        est.observe_success(total_ms=62.0, server_ms=10.0, queue_ms=50.0, batch_rows=1)
    settle(clock, est)
    assert est.distribution(1).quantile(0.5) == pytest.approx(62.0, rel=0.03)


def test_a_deployment_without_replicas_adds_the_cold_start_prior() -> None:
    clock = FakeClock()
    est = estimator(clock, settings=EstimatorSettings(cold_start_prior_ms=2000.0))
    feed(est, np.full(100, 20.0))
    settle(clock, est)
    warm = est.distribution(1).quantile(0.5)
    est.set_replicas(0)
    assert est.distribution(1).quantile(0.5) == pytest.approx(warm + 2000.0, rel=0.05)
    est.set_replicas(2)
    assert est.distribution(1).quantile(0.5) == pytest.approx(warm, rel=1e-9)


def test_observed_cold_starts_replace_the_prior() -> None:
    clock = FakeClock()
    est = estimator(clock)
    feed(est, np.full(100, 20.0))
    for ms in (400.0, 500.0, 600.0):
        est.observe_cold_start(ms)
    est.set_replicas(0)
    settle(clock, est)
    assert est.distribution(1).quantile(0.5) == pytest.approx(520.0, rel=0.03)


def test_a_call_answered_while_no_replica_ran_teaches_a_cold_start_not_the_network() -> None:
    clock = FakeClock()
    est = estimator(clock)
    feed(est, np.full(100, 20.0))
    settle(clock, est)
    est.set_replicas(0)
    est.observe_success(total_ms=1520.0, server_ms=0.0, queue_ms=0.0, batch_rows=1)
    assert est.cold_starts == 1
    assert est.replicas == 1, "an answer proves a replica runs"
    settle(clock, est)
    assert est.distribution(1).quantile(0.5) == pytest.approx(20.0, rel=0.02)
    est.set_replicas(0)
    assert est.distribution(1).quantile(0.5) == pytest.approx(1520.0, rel=0.03)


def test_the_failure_probability_rises_with_failures_and_decays_with_a_half_life() -> None:
    clock = FakeClock()
    est = estimator(clock, settings=EstimatorSettings(failure_half_life_s=10.0,
                                                      prior_fail_probability=0.001))
    assert est.p_fail() == pytest.approx(0.001)
    for _ in range(90):
        est.observe_success(10.0, 0.0, 0.0, 1)
    for _ in range(10):
        est.observe_failure("HTTP 503")
    assert est.p_fail() == pytest.approx(10.001 / 101, rel=1e-6)
    clock.advance(10.0)
    assert est.p_fail() == pytest.approx((5.0 + 0.001) / 51, rel=1e-6), "one half-life"
    clock.advance(600.0)
    assert est.p_fail() == pytest.approx(0.001, rel=0.01), "back to the prior"


def test_the_time_to_detect_a_failure_is_learned() -> None:
    clock = FakeClock()
    est = estimator(clock, prior_latency_ms=50.0)
    assert est.fail_fast_ms() == 50.0
    feed(est, np.full(50, 12.0))
    settle(clock, est)
    assert est.fail_fast_ms() == pytest.approx(12.0, rel=0.02), "a refusal takes a round trip"
    est.observe_failure("connection refused", elapsed_ms=3.0)
    assert est.fail_fast_ms() == pytest.approx(3.0)


def test_a_target_needs_a_probe_once_idle_for_the_probe_interval() -> None:
    clock = FakeClock()
    est = estimator(clock, settings=EstimatorSettings(probe_interval_s=1.0))
    assert est.needs_probe(clock())
    est.observe_probe(5.0)
    assert not est.needs_probe(clock())
    clock.advance(1.0)
    assert est.needs_probe(clock())
    est.in_flight = 1
    assert not est.needs_probe(clock()), "a call in flight will tell"


def test_escalation_probability_follows_the_observed_confidence() -> None:
    clock = FakeClock()
    est = estimator(clock, settings=EstimatorSettings(prior_escalation_probability=0.3,
                                                      prior_escalation_weight=8.0))
    assert est.escalation_probability(0.9) == pytest.approx(0.3)
    confidences = np.random.default_rng(3).beta(8.0, 1.0, 5_000)
    for c in confidences.tolist():
        est.observe_confidence(c)
    settle(clock, est)
    assert est.escalation_probability(0.9) == pytest.approx(np.mean(confidences < 0.9), abs=0.02)
    assert est.escalation_probability(0.5) < est.escalation_probability(0.9)
    view = est.view(1, True, TierPrices())
    assert view.escalation_probability(0.9) == pytest.approx(est.escalation_probability(0.9))
    assert est.escalation_probability(0.0) == 0.0


def test_the_view_carries_what_the_decision_needs() -> None:
    clock = FakeClock()
    est = estimator(clock, name="cloud", tier="cloud", quality="large")
    feed(est, np.full(100, 25.0), server_ms=5.0, rows=4)
    settle(clock, est)
    prices = TierPrices(usd_per_compute_hour=3600.0, usd_per_request=1e-6)
    view = est.view(2, False, prices)
    assert (view.name, view.tier, view.quality, view.allowed, view.rows) == (
        "cloud", "cloud", "large", False, 2)
    assert view.observed
    assert view.ewma_latency_ms == pytest.approx(25.0)
    assert view.cost_usd == pytest.approx(0.005 * 2 / 4 + 1e-6, rel=0.02), "share of the batch"
    assert view.p_fail < 0.001
    assert view.latency.quantile(0.5) == pytest.approx(25.0, rel=0.02)


def test_network_is_observed_time_minus_server_queue_and_compute() -> None:
    est = estimator(FakeClock())
    est.observe_success(total_ms=30.0, server_ms=8.0, queue_ms=2.0, batch_rows=1)
    shown = est.snapshot()
    assert shown["observed"]
    assert (shown["network_ms"], shown["queue_ms"], shown["service_ms"]) == (20.0, 2.0, 8.0)
    assert shown["predicted_ms"] == pytest.approx(30.0, rel=0.03)
    assert shown["predicted_ms"] == pytest.approx(
        est.view(1, True, TierPrices()).latency.quantile(0.5), abs=1e-3)


def test_network_is_never_negative_when_the_server_reports_more_than_was_observed() -> None:
    est = estimator(FakeClock())
    est.observe_success(total_ms=5.0, server_ms=8.0, queue_ms=1.0, batch_rows=1)
    assert est.snapshot()["network_ms"] == 0.0


def test_a_probe_updates_only_the_network_part() -> None:
    est = estimator(FakeClock())
    est.observe_success(total_ms=30.0, server_ms=8.0, queue_ms=2.0, batch_rows=4)
    est.observe_probe(total_ms=40.0)
    shown = est.snapshot()
    assert shown["network_ms"] == pytest.approx(30.0)
    assert shown["queue_ms"] == pytest.approx(2.0)
    assert est.latency.service_ms(4) == pytest.approx(8.0)
    assert est.successes == 1
    assert est.latency.typical_rows() == pytest.approx(4.0)


def test_the_prior_stands_until_the_target_is_observed() -> None:
    clock = FakeClock()
    est = estimator(clock, prior_latency_ms=80.0)
    assert not est.observed
    assert est.distribution(32).quantile(0.5) == pytest.approx(80.0, rel=0.01)
    est.observe_probe(total_ms=3.0)
    settle(clock, est)
    assert est.observed
    assert est.distribution().quantile(0.5) == pytest.approx(3.0, rel=0.03)


def test_only_the_least_latency_baseline_reads_an_exponentially_weighted_mean() -> None:
    est = estimator(FakeClock(), weight=0.5)
    est.observe_success(total_ms=10.0, server_ms=1.0, queue_ms=0.0, batch_rows=1)
    est.observe_success(total_ms=30.0, server_ms=1.0, queue_ms=0.0, batch_rows=1)
    view = est.view(1, True, TierPrices())
    assert view.ewma_latency_ms == pytest.approx(20.0)
    assert est.snapshot()["least_latency_ewma_ms"] == pytest.approx(20.0)


def test_a_probe_that_answers_after_failures_ends_the_outage() -> None:
    clock = FakeClock()
    est = estimator(clock, settings=EstimatorSettings(prior_fail_probability=0.001))
    for _ in range(20):
        est.observe_success(10.0, 0.0, 0.0, 1)
    est.observe_probe(5.0)
    healthy = est.p_fail()
    for _ in range(10):
        est.observe_failure("connection refused")
    assert est.p_fail() > 0.3
    est.observe_probe(5.0)
    assert est.p_fail() == pytest.approx(0.001), "a restarted worker is not held to its outage"
    assert healthy < 0.001, "a probe while healthy keeps the successes"


def test_the_snapshot_names_the_last_error_and_has_no_cooldown() -> None:
    est = estimator(FakeClock())
    est.observe_failure("refused")
    snapshot = est.snapshot()
    assert snapshot["last_error"] == "refused"
    assert snapshot["failures"] == 1
    assert not {"available", "cooldown_left_ms", "consecutive_failures"} & set(snapshot)


def test_ewma_converges_on_a_constant() -> None:
    ewma = Ewma(0.2)
    for _ in range(50):
        ewma.update(12.5)
    assert ewma.mean == pytest.approx(12.5)
    assert ewma.count == 50


def test_ewma_tracks_a_step_change() -> None:
    weight = 0.2
    ewma = Ewma(weight)
    for _ in range(20):
        ewma.update(10.0)
    ewma.update(20.0)
    means = [ewma.mean]
    for _ in range(40):
        ewma.update(20.0)
        means.append(ewma.mean)
    assert means == sorted(means), "the mean moves monotonically toward the new level"
    assert 20.0 - ewma.mean <= 10.0 * (1 - weight) ** 41 + 1e-9


@pytest.mark.parametrize("weight", [0.0, -0.1, 1.5])
def test_ewma_rejects_a_weight_outside_the_unit_interval(weight: float) -> None:
    with pytest.raises(ValueError, match="weight"):
        Ewma(weight)


def test_the_maintenance_loop_leaves_cascade_sums_ready_for_the_decision(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """After ``warm_cascades`` a small model's latency plus a large one's, which a cascade
    plan reads, is memoised for the tables in force: the decision convolves nothing."""
    from router.distribution import Distribution
    from router.targets import TargetSet
    from tests.unit.fakes import FakeTransport, fake_target

    targets = TargetSet([fake_target(FakeTransport("edge-a")),
                         fake_target(FakeTransport("cloud"), tier="cloud", quality="large")])
    rng = np.random.default_rng(2)
    for name, median in (("edge-a", 8.0), ("cloud", 40.0)):
        est = targets.get(name).estimator
        feed(est, rng.lognormal(np.log(median), 0.3, 200))
        est.maintain()
    targets.warm_cascades()
    convolved: list[int] = []
    plus = Distribution.plus
    monkeypatch.setattr(Distribution, "plus",
                        lambda self, other: convolved.append(1) or plus(self, other))
    small, large = (targets.get(n).estimator.distribution(1) for n in ("edge-a", "cloud"))
    both, offset = small.sum_with(large)
    assert not convolved
    assert both.quantile(0.5) + offset == pytest.approx(48.0, rel=0.1)

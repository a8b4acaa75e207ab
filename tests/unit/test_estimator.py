"""Per-target estimates on a fake clock: what the router learns from each call, and when it
stops sending a target work after failures."""

from __future__ import annotations

import math

import pytest

from router.estimator import Ewma, TargetEstimator
from tests.unit.fakes import FakeClock


def estimator(clock: FakeClock, **kwargs: float) -> TargetEstimator:
    return TargetEstimator(clock=clock, **kwargs)


def test_network_is_observed_time_minus_server_queue_and_compute() -> None:
    est = estimator(FakeClock())
    est.observe_success(total_ms=30.0, server_ms=8.0, queue_ms=2.0, batch_rows=1)
    prediction = est.predict()
    assert prediction.observed
    assert prediction.network_ms == pytest.approx(20.0)
    assert prediction.queue_ms == pytest.approx(2.0)
    assert prediction.service_ms == pytest.approx(8.0)
    assert prediction.mean_ms == pytest.approx(30.0)


def test_network_is_never_negative_when_the_server_reports_more_than_was_observed() -> None:
    est = estimator(FakeClock())
    est.observe_success(total_ms=5.0, server_ms=8.0, queue_ms=1.0, batch_rows=1)
    assert est.predict().network_ms == 0.0


def test_a_probe_updates_only_the_network_part() -> None:
    est = estimator(FakeClock(), weight=0.5)
    est.observe_success(total_ms=30.0, server_ms=8.0, queue_ms=2.0, batch_rows=4)
    est.observe_probe(total_ms=40.0)
    prediction = est.predict(rows=4)
    assert prediction.network_ms == pytest.approx(30.0)
    assert prediction.queue_ms == pytest.approx(2.0)
    assert prediction.service_ms == pytest.approx(8.0)
    assert est.successes == 1
    assert est.batch_rows.mean == pytest.approx(4.0)


def test_the_prior_stands_until_the_target_is_observed() -> None:
    est = estimator(FakeClock(), prior_latency_ms=80.0)
    prior = est.predict(rows=32)
    assert not prior.observed
    assert prior.mean_ms == pytest.approx(80.0)
    assert prior.spread_ms == pytest.approx(40.0)
    assert prior.upper_ms() == pytest.approx(160.0)
    est.observe_probe(total_ms=3.0)
    seen = est.predict()
    assert seen.observed
    assert seen.mean_ms == pytest.approx(3.0)


def test_a_failure_cools_the_target_down_for_the_configured_time() -> None:
    clock = FakeClock()
    est = estimator(clock, failure_cooldown_ms=1000.0)
    assert est.available
    est.observe_failure("refused")
    assert not est.available
    assert est.last_error == "refused"
    clock.advance(0.999)
    assert not est.available
    clock.advance(0.001)
    assert est.available


def test_cooldown_doubles_with_consecutive_failures_up_to_the_cap() -> None:
    clock = FakeClock()
    est = estimator(clock, failure_cooldown_ms=100.0)
    cooldowns = []
    for _ in range(8):
        est.observe_failure("refused")
        cooldowns.append(round(est.cooldown_until - clock(), 6))
    cap = 0.1 * TargetEstimator.MAX_COOLDOWN_FACTOR
    assert cooldowns == [0.1, 0.2, 0.4, 0.8, 1.6, cap, cap, cap]
    assert est.consecutive_failures == 8
    assert est.failures == 8


@pytest.mark.parametrize("recover", ["success", "probe"])
def test_an_answer_clears_the_cooldown_and_restarts_the_doubling(recover: str) -> None:
    clock = FakeClock()
    est = estimator(clock, failure_cooldown_ms=100.0)
    for _ in range(3):
        est.observe_failure("refused")
    assert not est.available
    if recover == "success":
        est.observe_success(total_ms=5.0, server_ms=1.0, queue_ms=0.0, batch_rows=1)
    else:
        est.observe_probe(total_ms=5.0)
    assert est.available
    assert est.consecutive_failures == 0
    est.observe_failure("refused again")
    assert est.cooldown_until - clock() == pytest.approx(0.1)
    assert est.failures == 4


def test_cooldown_left_shows_in_the_snapshot() -> None:
    clock = FakeClock()
    est = estimator(clock, failure_cooldown_ms=500.0)
    est.observe_failure("refused")
    clock.advance(0.2)
    snapshot = est.snapshot()
    assert snapshot["available"] is False
    assert snapshot["cooldown_left_ms"] == pytest.approx(300.0)
    assert snapshot["last_error"] == "refused"


def test_idle_time_counts_from_the_last_answer_or_failure() -> None:
    clock = FakeClock()
    est = estimator(clock)
    assert math.isinf(est.idle_for_s())
    est.observe_probe(total_ms=1.0)
    clock.advance(2.5)
    assert est.idle_for_s() == pytest.approx(2.5)
    est.observe_failure("refused")
    assert est.idle_for_s() == 0.0


def test_service_scales_up_with_rows_beyond_the_batches_observed() -> None:
    est = estimator(FakeClock())
    est.observe_success(total_ms=20.0, server_ms=8.0, queue_ms=0.0, batch_rows=4)
    assert est.predict(rows=4).service_ms == pytest.approx(8.0)
    assert est.predict(rows=16).service_ms == pytest.approx(32.0)
    assert est.predict(rows=1).service_ms == pytest.approx(8.0), "fewer rows never predict less"
    assert est.predict(rows=16).network_ms == est.predict(rows=1).network_ms


def test_ewma_converges_on_a_constant() -> None:
    ewma = Ewma(0.2)
    for _ in range(50):
        ewma.update(12.5)
    assert ewma.mean == pytest.approx(12.5)
    assert ewma.var == pytest.approx(0.0)
    assert ewma.count == 50


def test_ewma_tracks_a_step_change() -> None:
    weight = 0.2
    ewma = Ewma(weight)
    for _ in range(20):
        ewma.update(10.0)
    ewma.update(20.0)
    peak_std = ewma.std
    assert peak_std > 1.0, "a step shows as spread"
    means = [ewma.mean]
    for _ in range(40):
        ewma.update(20.0)
        means.append(ewma.mean)
    assert means == sorted(means), "the mean moves monotonically toward the new level"
    assert 20.0 - ewma.mean <= 10.0 * (1 - weight) ** 41 + 1e-9
    assert ewma.std < 0.05 * peak_std, "the spread fades once the new level holds"


@pytest.mark.parametrize("weight", [0.0, -0.1, 1.5])
def test_ewma_rejects_a_weight_outside_the_unit_interval(weight: float) -> None:
    with pytest.raises(ValueError, match="weight"):
        Ewma(weight)

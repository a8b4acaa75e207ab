"""The retry budget on a fake clock: retries stay within a share of recent requests, with a
floor that always allows a few per second."""

from __future__ import annotations

from router.budget import RetryBudget
from router.policy import RetrySettings
from tests.unit.fakes import FakeClock

SETTINGS = RetrySettings(budget_ratio=0.1, budget_min_per_s=1.0, budget_window_s=10.0)


def spend_all(budget: RetryBudget) -> int:
    spent = 0
    while budget.try_spend():
        spent += 1
    return spent


def test_the_floor_allows_a_few_retries_without_traffic() -> None:
    budget = RetryBudget(SETTINGS, clock=FakeClock())
    assert spend_all(budget) == 10, "1 retry/s over a 10 s window"
    assert budget.denied == 1


def test_under_heavy_traffic_retries_are_a_tenth_of_requests() -> None:
    clock = FakeClock()
    budget = RetryBudget(SETTINGS, clock=clock)
    for _ in range(1000):
        budget.record_request()
        clock.advance(0.005)
    assert spend_all(budget) == 100
    assert budget.snapshot()["allowance"] == 100.0


def test_spent_budget_comes_back_as_the_window_slides() -> None:
    clock = FakeClock()
    budget = RetryBudget(SETTINGS, clock=clock)
    assert spend_all(budget) == 10
    clock.advance(5.0)
    assert not budget.try_spend()
    clock.advance(6.0)
    assert spend_all(budget) == 10


def test_required_retries_use_up_the_budget_for_discretionary_ones() -> None:
    budget = RetryBudget(SETTINGS, clock=FakeClock())
    for _ in range(8):
        budget.record_retry()
    assert spend_all(budget) == 2
    for _ in range(5):
        budget.record_retry()
    assert budget.snapshot()["retries"] == 15, "required retries are never refused"


def test_a_steady_retry_stream_is_held_to_the_ratio() -> None:
    """At 200 requests/s for 60 s, each wanting a retry: about 10% get one."""
    clock = FakeClock()
    budget = RetryBudget(SETTINGS, clock=clock)
    granted = 0
    for _ in range(12_000):
        budget.record_request()
        granted += budget.try_spend()
        clock.advance(0.005)
    assert 0.09 * 12_000 <= granted <= 0.11 * 12_000 + 10


def test_new_settings_apply_live() -> None:
    budget = RetryBudget(SETTINGS, clock=FakeClock())
    budget.configure(SETTINGS.model_copy(update={"budget_min_per_s": 0.0}))
    assert not budget.try_spend()

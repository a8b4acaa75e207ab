"""Dollars: the marginal cost of a request from the price book, and the ledger of totals."""

from __future__ import annotations

import pytest

from router.cost import BYTES_PER_ROW, Ledger, marginal_cost_usd
from router.policy import PriceBook, TierPrices

HOURLY = 3600.0
"""A compute price of $3600/h is $1 per compute second: figures below read as seconds."""


def test_compute_is_charged_by_the_request_share_of_its_batch() -> None:
    prices = TierPrices(usd_per_compute_hour=HOURLY)
    assert marginal_cost_usd(prices, rows=1, service_ms=1000.0, batch_rows=1) == pytest.approx(1.0)
    assert marginal_cost_usd(prices, rows=2, service_ms=1000.0, batch_rows=8) == pytest.approx(
        0.25
    )
    assert marginal_cost_usd(prices, rows=8, service_ms=500.0, batch_rows=8) == pytest.approx(0.5)


def test_a_request_never_pays_for_more_than_the_whole_batch() -> None:
    prices = TierPrices(usd_per_compute_hour=HOURLY)
    assert marginal_cost_usd(prices, rows=16, service_ms=1000.0, batch_rows=4) == pytest.approx(
        1.0
    )
    assert marginal_cost_usd(prices, rows=1, service_ms=1000.0, batch_rows=0) == pytest.approx(1.0)


def test_the_request_fee_is_flat() -> None:
    prices = TierPrices(usd_per_request=2e-7)
    assert marginal_cost_usd(prices, 1, 5.0, 1) == pytest.approx(2e-7)
    assert marginal_cost_usd(prices, 64, 5.0, 64) == pytest.approx(2e-7)


def test_per_inference_and_egress_grow_with_rows() -> None:
    per_row = TierPrices(usd_per_inference=5e-8)
    assert marginal_cost_usd(per_row, 10, 1.0, 10) == pytest.approx(5e-7)
    egress = TierPrices(usd_per_gb_egress=0.09)
    assert marginal_cost_usd(egress, 10, 1.0, 10) == pytest.approx(0.09 * 10 * BYTES_PER_ROW / 1e9)


def test_the_terms_add_up() -> None:
    prices = TierPrices(usd_per_compute_hour=HOURLY, usd_per_request=1e-3,
                        usd_per_inference=1e-4, usd_per_gb_egress=1.0)
    got = marginal_cost_usd(prices, rows=4, service_ms=100.0, batch_rows=16)
    want = 0.1 * 4 / 16 + 1e-3 + 4e-4 + 4 * BYTES_PER_ROW / 1e9
    assert got == pytest.approx(want)


def test_provisioned_hours_are_not_marginal() -> None:
    prices = TierPrices(usd_per_provisioned_hour=2.5)
    assert marginal_cost_usd(prices, 32, 100.0, 32) == 0.0


def test_the_default_price_book_makes_the_cloud_dearer_than_the_edge() -> None:
    book = PriceBook()
    cloud = marginal_cost_usd(book.for_target("cloud", "cloud"), 1, 3.0, 8)
    edge = marginal_cost_usd(book.for_target("edge-a", "edge"), 1, 3.0, 1)
    assert cloud > 5 * edge > 0


def test_the_ledger_totals_marginal_dollars_and_requests_per_target() -> None:
    ledger = Ledger()
    ledger.add("edge-a", 1e-7)
    ledger.add("edge-a", 2e-7)
    ledger.add("cloud", 3e-6, requests=2)
    snapshot = ledger.snapshot()
    assert snapshot["targets"]["edge-a"]["marginal_usd"] == pytest.approx(3e-7)
    assert snapshot["targets"]["edge-a"]["requests"] == 2
    assert snapshot["targets"]["cloud"]["requests"] == 2
    assert snapshot["total"]["marginal_usd"] == pytest.approx(3.3e-6)
    assert snapshot["total"]["requests"] == 4


def test_provisioned_seconds_are_priced_by_the_hour_at_the_prices_then_in_force() -> None:
    ledger = Ledger({"cloud": TierPrices(usd_per_provisioned_hour=2.5)})
    ledger.add_provisioned("cloud", 1800.0)
    assert ledger.entry("cloud").provisioned_usd == pytest.approx(1.25)
    ledger.set_prices({"cloud": TierPrices(usd_per_provisioned_hour=5.0)})
    ledger.add_provisioned("cloud", 360.0)
    entry = ledger.entry("cloud")
    assert entry.provisioned_s == pytest.approx(2160.0)
    assert entry.provisioned_usd == pytest.approx(1.25 + 0.5), "the past is not repriced"
    ledger.add("cloud", 0.25)
    assert ledger.snapshot()["targets"]["cloud"]["total_usd"] == pytest.approx(2.0)


def test_provisioned_time_of_an_unpriced_target_is_counted_but_free() -> None:
    ledger = Ledger()
    ledger.add_provisioned("edge-z", 60.0)
    assert ledger.entry("edge-z").provisioned_s == 60.0
    assert ledger.entry("edge-z").provisioned_usd == 0.0


@pytest.mark.parametrize("call", [
    lambda ledger: ledger.add("a", -1.0),
    lambda ledger: ledger.add("a", 1.0, requests=-1),
    lambda ledger: ledger.add_provisioned("a", -1.0),
])
def test_the_ledger_refuses_negative_amounts(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="negative"):
        call(Ledger())

"""Marginal dollars of one request on one target, from the price book and measured times."""

from __future__ import annotations

from edgeroute.config import Prices

BYTES_PER_ROW = 64 * 4 + 10 * 4 + 8
"""Wire bytes of one row in and out (input pixels, probabilities, label) in binary form."""


def marginal_cost_usd(prices: Prices, rows: int, service_ms: float, batch_rows: int) -> float:
    """What serving ``rows`` adds to the bill.

    Compute is charged by this request's share of the batch it ran in (a
    serverless bill's GPU-seconds); provisioned hours are not marginal and are
    left to the ledger.
    """
    share = rows / max(batch_rows, rows, 1)
    compute = prices.usd_per_compute_hour * (service_ms / 3_600_000) * share
    egress = prices.usd_per_gb_egress * rows * BYTES_PER_ROW / 1e9
    return compute + prices.usd_per_request + prices.usd_per_inference * rows + egress

"""Dollars: the marginal cost of one request on one target, and the ledger of what was spent.

Marginal cost is what serving a request adds to the bill, from the policy's
price book (:class:`~router.policy.TierPrices`) and measured times: the
request's share of its batch's compute time (a serverless GPU bill charges
GPU-seconds), a flat request fee, a per-row fee (edge energy and
amortisation) and egress per byte. Provisioned capacity (replicas and sites
paid by the hour, busy or idle) is not marginal: the :class:`Ledger` accrues
it apart, from the replica-seconds and site-seconds the app reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

BYTES_PER_ROW = 64 * 4 + 10 * 4 + 8
"""Wire bytes of one row in and out in binary form for the bundled digits model (input
pixels, probabilities, label); another model's come from its signature or its tensors."""

MS_PER_HOUR = 3_600_000.0


class MarginalPrices(Protocol):
    """The per-use prices of a tier or target (``TierPrices``)."""

    @property
    def usd_per_compute_hour(self) -> float: ...
    @property
    def usd_per_request(self) -> float: ...
    @property
    def usd_per_inference(self) -> float: ...
    @property
    def usd_per_gb_egress(self) -> float: ...


class ProvisionedPrices(Protocol):
    @property
    def usd_per_provisioned_hour(self) -> float: ...


def marginal_cost_usd(
    prices: MarginalPrices, rows: int, service_ms: float, batch_rows: int,
    bytes_per_row: float = BYTES_PER_ROW,
) -> float:
    """What serving ``rows`` rows adds to the bill when the batch they run in (``batch_rows``
    rows, at least ``rows``) takes ``service_ms`` of compute; egress is charged on
    ``bytes_per_row`` wire bytes (in and out) per row.

    Compute is charged by this request's share of the batch; provisioned hours are left to
    the :class:`Ledger`.
    """
    share = rows / max(batch_rows, rows, 1)
    compute = prices.usd_per_compute_hour * (service_ms / MS_PER_HOUR) * share
    egress = prices.usd_per_gb_egress * rows * bytes_per_row / 1e9
    return compute + prices.usd_per_request + prices.usd_per_inference * rows + egress


@dataclass
class LedgerEntry:
    marginal_usd: float = 0.0
    requests: int = 0
    provisioned_s: float = 0.0
    provisioned_usd: float = 0.0
    reused: int = 0
    """Requests answered with one of this target's answers again (the router's cache or a
    coalesced flight), at no charge..."""
    saved_usd: float = 0.0
    """...and what the calls they did not make would have cost (the original call's)."""

    @property
    def total_usd(self) -> float:
        return self.marginal_usd + self.provisioned_usd

    def as_dict(self) -> dict[str, float | int]:
        return {
            "marginal_usd": self.marginal_usd, "requests": self.requests,
            "provisioned_s": self.provisioned_s, "provisioned_usd": self.provisioned_usd,
            "total_usd": self.total_usd, "reused": self.reused, "saved_usd": self.saved_usd,
        }


class Ledger:
    """Running totals per target: marginal dollars and requests served, and provisioned
    replica-seconds (cloud) or site-seconds (edge) priced at ``usd_per_provisioned_hour``.

    Provisioned time is priced when it is reported, at the prices then in force, so a
    policy reload changes the rate from then on and never rewrites the past.
    """

    def __init__(self, prices: Mapping[str, ProvisionedPrices] | None = None) -> None:
        self._prices: dict[str, ProvisionedPrices] = dict(prices or {})
        self._entries: dict[str, LedgerEntry] = {}

    def set_prices(self, prices: Mapping[str, ProvisionedPrices]) -> None:
        self._prices = dict(prices)

    def _entry(self, target: str) -> LedgerEntry:
        entry = self._entries.get(target)
        if entry is None:
            entry = self._entries[target] = LedgerEntry()
        return entry

    def add(self, target: str, cost_usd: float, requests: int = 1) -> None:
        """Record ``requests`` requests served (or attempted) on ``target`` for ``cost_usd``."""
        if cost_usd < 0 or requests < 0:
            raise ValueError("cost and requests must not be negative")
        entry = self._entry(target)
        entry.marginal_usd += cost_usd
        entry.requests += requests

    def add_saved(self, target: str, saved_usd: float) -> None:
        """Record one request answered with an answer of ``target``'s again, saving
        ``saved_usd`` (what the call that produced it cost)."""
        if saved_usd < 0:
            raise ValueError("saved dollars must not be negative")
        entry = self._entry(target)
        entry.reused += 1
        entry.saved_usd += saved_usd

    def add_provisioned(self, target: str, seconds: float) -> None:
        """Record ``seconds`` of provisioned capacity (replica-seconds, site-seconds)."""
        if seconds < 0:
            raise ValueError("seconds must not be negative")
        entry = self._entry(target)
        entry.provisioned_s += seconds
        prices = self._prices.get(target)
        if prices is not None:
            entry.provisioned_usd += prices.usd_per_provisioned_hour * seconds / 3600.0

    def entry(self, target: str) -> LedgerEntry:
        return self._entries.get(target, LedgerEntry())

    def snapshot(self) -> dict[str, Any]:
        """Per-target totals and their sum, as plain JSON-ready numbers."""
        total = LedgerEntry()
        for entry in self._entries.values():
            total.marginal_usd += entry.marginal_usd
            total.requests += entry.requests
            total.provisioned_s += entry.provisioned_s
            total.provisioned_usd += entry.provisioned_usd
            total.reused += entry.reused
            total.saved_usd += entry.saved_usd
        return {
            "targets": {name: e.as_dict() for name, e in sorted(self._entries.items())},
            "total": total.as_dict(),
        }

"""The router's targets: transport, link, estimator and prices of each, plus active probing."""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from edgeroute.config import LinkProfile, Prices, Quality, Tier
from router.cost import marginal_cost_usd
from router.estimator import TargetEstimator
from router.link import Link, LinkedTransport
from router.placement import Candidate
from router.transport import TargetError, Transport

PROBE_TIMEOUT_S = 1.0


@dataclass
class Target:
    name: str
    tier: Tier
    quality: Quality
    prices: Prices
    transport: LinkedTransport
    estimator: TargetEstimator
    address: str
    """Where it lives: a URL, or ``serve:<deployment>`` for a handle."""

    @property
    def link(self) -> Link:
        return self.transport.link

    def candidate(self, rows: int) -> Candidate:
        prediction = self.estimator.predict(rows)
        batch = max(self.estimator.batch_rows.mean, 1.0) if self.estimator.successes else 1.0
        cost = marginal_cost_usd(self.prices, rows, prediction.service_ms, int(batch))
        return Candidate(
            self.name, self.tier, self.quality, self.estimator.available, prediction, cost
        )

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tier": self.tier,
            "quality": self.quality,
            "address": self.address,
            "estimates": self.estimator.snapshot(),
            "cost_usd_per_request": self.candidate(1).cost_usd,
            "prices": self.prices.model_dump(),
            "link_emulation": self.link.profile.model_dump(),
        }


def make_target(
    name: str,
    tier: Tier,
    quality: Quality,
    prices: Prices,
    link: LinkProfile,
    transport: Transport,
    address: str,
    estimator: TargetEstimator,
) -> Target:
    seeded = Link(link, rng=random.Random(zlib.crc32(name.encode())))
    return Target(name, tier, quality, prices, LinkedTransport(transport, seeded), estimator,
                  address)


class TargetSet:
    """All targets of one router replica, and the probe loop that keeps idle ones measured.

    Probing is bounded: at most one probe per target per ``probe_interval_s``,
    only for targets idle that long, each with its own timeout.
    """

    def __init__(
        self,
        targets: Iterable[Target],
        *,
        probe_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.targets = {t.name: t for t in targets}
        self.probe_interval_s = probe_interval_s
        self._clock = clock

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.targets.values())

    def get(self, name: str) -> Target | None:
        return self.targets.get(name)

    def candidates(self, rows: int) -> list[Candidate]:
        return [t.candidate(rows) for t in self.targets.values()]

    async def probe(self, target: Target) -> bool:
        started = self._clock()
        try:
            await asyncio.wait_for(target.transport.probe(PROBE_TIMEOUT_S), PROBE_TIMEOUT_S)
        except (TargetError, asyncio.TimeoutError) as exc:
            target.estimator.observe_failure(f"probe: {exc}")
            return False
        target.estimator.observe_probe((self._clock() - started) * 1000)
        return True

    def due(self) -> list[Target]:
        return [
            t for t in self.targets.values()
            if t.estimator.available and t.estimator.idle_for_s() >= self.probe_interval_s
            and t.estimator.in_flight == 0
        ]

    async def probe_due(self) -> None:
        await asyncio.gather(*(self.probe(t) for t in self.due()))

    async def run_probes(self) -> None:
        while True:
            await self.probe_due()
            await asyncio.sleep(self.probe_interval_s / 4)

    async def aclose(self) -> None:
        await asyncio.gather(*(t.transport.aclose() for t in self.targets.values()))

"""The router's targets: transport, link and estimator of each, plus the active probe loop."""

from __future__ import annotations

import asyncio
import math
import random
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from edgeroute import contract
from edgeroute.config import LinkProfile, Quality, Tier
from edgeroute.signature import Batch, blank_batch
from router.breaker import Breakers, CircuitBreaker
from router.estimator import TargetEstimator
from router.lag import LoopLag, late
from router.link import Link, LinkedTransport
from router.policy import TierPrices
from router.probing import (
    PROBE_LOOP_S,
    PROBE_TIMEOUT_S,
    due,
    learn_probe,
    learn_trial,
    wants_trial,
)
from router.transport import TargetError, TargetTimeout, Transport
from router.view import TargetView

TRIAL_ROW = blank_batch(contract.SIGNATURE)
"""The trial call's input for the bundled model; a target of another model has its own."""
MAINTAIN_S = 0.1
"""How often estimates are rebuilt off the request path (they are due every 0.25 s)."""


def _reason(exc: BaseException) -> str:
    """What failed, for ``last_error`` (a bare timeout has no text of its own)."""
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer within {PROBE_TIMEOUT_S * 1000:.0f} ms"
    return str(exc)


@dataclass
class Target:
    name: str
    tier: Tier
    quality: Quality
    transport: LinkedTransport
    estimator: TargetEstimator
    address: str
    """Where it lives: a URL, or ``serve:<deployment>`` for a handle."""
    scales_to_zero: bool = False
    """A deployment that may have no replica: it is probed only while replicas are known to
    run (a probe would otherwise wake it, and a GPU node with it)."""
    trial: Batch = TRIAL_ROW
    """A blank row of the target's model: what the prober's trial call sends."""

    @property
    def link(self) -> Link:
        return self.transport.link

    def view(self, rows: int, allowed: bool, prices: TierPrices) -> TargetView:
        return self.estimator.view(rows, allowed, prices)

    def snapshot(self, prices: TierPrices, confidence_threshold: float) -> dict[str, Any]:
        """What ``GET /v1/targets`` shows of this target; ``unsure_rate``: how often its
        answers fall below ``confidence_threshold`` (a small model's cascade escalation
        probability, as the decision prices it)."""
        unsure = (round(self.estimator.escalation_probability(confidence_threshold), 4)
                  if self.quality == "small" else None)
        estimates = self.estimator.snapshot()
        ago = estimates["last_error_s_ago"]
        estimates["last_error_at"] = None if ago is None else datetime.fromtimestamp(
            time.time() - ago, timezone.utc).isoformat(timespec="milliseconds")
        return {
            "name": self.name,
            "tier": self.tier,
            "quality": self.quality,
            "address": self.address,
            "estimates": estimates,
            "unsure_rate": unsure,
            "cost_usd_per_request": self.view(1, True, prices).cost_usd,
            "prices": prices.model_dump(),
            "link_emulation": self.link.profile.model_dump(),
        }


def make_target(
    name: str,
    tier: Tier,
    quality: Quality,
    link: LinkProfile,
    transport: Transport,
    address: str,
    estimator: TargetEstimator,
    scales_to_zero: bool = False,
    trial: Batch = TRIAL_ROW,
) -> Target:
    seeded = Link(link, rng=random.Random(zlib.crc32(name.encode())))
    return Target(name, tier, quality, LinkedTransport(transport, seeded), estimator, address,
                  scales_to_zero, trial)


class TargetSet:
    """All targets of one router replica, and the probe loop that keeps idle ones measured.

    Probing is bounded: at most one probe per target per probe interval, only
    for targets idle that long, each with its own timeout. What is probed, what
    a probe teaches and when a trial call follows are the rules of
    :mod:`router.probing`, which the simulator follows too.
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
        self.breakers: Breakers | None = None
        self.on_tick: Callable[[], None] | None = None
        """Called once per probe interval from the probe loop (the service's gauges)."""
        self.lag: LoopLag | None = None
        """The replica's own lateness: a probe it made late says nothing about the target."""
        self.generation = 0
        """Counts additions and removals, so that caches of the target list can tell."""
        self._clock = clock

    def __iter__(self) -> Iterator[Target]:
        return iter(self.targets.values())

    def get(self, name: str) -> Target | None:
        return self.targets.get(name)

    def add(self, target: Target) -> None:
        """Add (or replace) a target while the router runs: a worker that joined the fleet.

        The dict is replaced, not mutated, so a loop iterating the old one is unaffected."""
        self.targets = {**self.targets, target.name: target}
        self.generation += 1

    def in_flight(self, name: str) -> int:
        """Calls in flight at ``name`` (its estimator's count; 0 if unknown)."""
        target = self.targets.get(name)
        return target.estimator.in_flight if target is not None else 0

    def in_flight_counts(self) -> dict[str, int]:
        """Calls in flight at each target."""
        return {n: t.estimator.in_flight for n, t in self.targets.items()}

    def remove(self, name: str) -> Target | None:
        """Stop offering a target to new decisions; calls already made to it finish."""
        target = self.targets.get(name)
        if target is not None:
            self.targets = {n: t for n, t in self.targets.items() if n != name}
            self.generation += 1
        return target

    async def probe(self, target: Target) -> bool:
        """Probe ``target`` once, then make a trial call if :func:`router.probing.wants_trial`;
        whether it answered."""
        started = self._clock()
        breaker = self.breakers[target.name] if self.breakers is not None else None
        try:
            await asyncio.wait_for(target.transport.probe(PROBE_TIMEOUT_S), PROBE_TIMEOUT_S)
        except (TargetError, asyncio.TimeoutError) as exc:
            return learn_probe(target.estimator, breaker, answered=False,
                               elapsed_ms=self._ms_since(started), router_late=self._late(started),
                               timed_out=isinstance(exc, asyncio.TimeoutError | TargetTimeout),
                               reason=_reason(exc))
        learn_probe(target.estimator, breaker, answered=True, elapsed_ms=self._ms_since(started),
                    router_late=self._late(started))
        if breaker is not None and wants_trial(target.estimator, breaker):
            await self._trial(target, breaker)
        return True

    def _ms_since(self, started: float) -> float:
        return (self._clock() - started) * 1000

    def _late(self, started: float) -> bool:
        own_s = self.lag.max_since(started) if self.lag is not None else 0.0
        return late(own_s * 1000, self._ms_since(started))

    async def _trial(self, target: Target, breaker: CircuitBreaker) -> None:
        """Make a trial call of an idle target with a blank row (:mod:`router.probing`)."""
        permit = breaker.acquire()
        if permit is None:
            return
        started = self._clock()
        try:
            await asyncio.wait_for(target.transport.infer(target.trial, PROBE_TIMEOUT_S),
                                   PROBE_TIMEOUT_S)
        except (TargetError, asyncio.TimeoutError) as exc:
            learn_trial(permit, target.estimator, answered=False,
                        elapsed_ms=self._ms_since(started), reason=_reason(exc))
            return
        except BaseException:
            permit.release()
            raise
        learn_trial(permit, target.estimator, answered=True, elapsed_ms=self._ms_since(started))

    def due(self) -> list[Target]:
        now = self._clock()
        return [t for t in self.targets.values()
                if due(t.estimator, now, scales_to_zero=t.scales_to_zero)]

    async def probe_due(self) -> None:
        await asyncio.gather(*(self.probe(t) for t in self.due()))

    def warm_cascades(self) -> None:
        """Compute the latency of each small model escalating to each large one (a
        convolution, about 0.5 ms) for the tables in force, so that a cascade plan finds it
        memoised (:meth:`router.distribution.Distribution.sum_with`) instead of paying for it
        in a request's decision."""
        small = [t.estimator.distribution(1) for t in self.targets.values()
                 if t.quality == "small"]
        large = [t.estimator.distribution(1) for t in self.targets.values()
                 if t.quality == "large"]
        for a in small:
            for b in large:
                a.sum_with(b)

    async def run_probes(self) -> None:
        """Probe idle targets and rebuild due estimates, a few times per probe interval."""
        ticked = -math.inf
        while True:
            await self.probe_due()
            for target in self.targets.values():
                target.estimator.maintain()
            self.warm_cascades()
            if self.on_tick is not None and self._clock() - ticked >= self.probe_interval_s:
                ticked = self._clock()
                self.on_tick()
            await asyncio.sleep(min(self.probe_interval_s / 4, PROBE_LOOP_S))

    async def aclose(self) -> None:
        await asyncio.gather(*(t.transport.aclose() for t in self.targets.values()))

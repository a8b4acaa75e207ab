"""Link emulation: network distance between the router and a target, applied in the transport.

The emulator wraps any :class:`~router.transport.Transport`. Its settings can
be replaced on a running router (to slow or cut a link during a chaos run).
The estimators never read them: they only see the times that result.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from edgeroute.config import LinkProfile
from edgeroute.signature import Batch
from router.transport import Reply, TargetTimeout, TargetUnavailable, Transport

Sleep = Callable[[float], Awaitable[None]]


class Link:
    """The live profile of one link plus a seeded sampler of round-trip times."""

    def __init__(self, profile: LinkProfile, rng: random.Random | None = None) -> None:
        self.profile = profile
        self._rng = rng or random.Random()

    def sample_rtt_s(self) -> float:
        p = self.profile
        rtt_ms = p.base_ms + abs(self._rng.gauss(0.0, p.jitter_ms)) if p.jitter_ms else p.base_ms
        if p.spike_probability and self._rng.random() < p.spike_probability:
            rtt_ms *= p.spike_multiplier
        return rtt_ms / 1000

    def lost(self) -> bool:
        return bool(self.profile.loss_probability) and (
            self._rng.random() < self.profile.loss_probability
        )


class LinkedTransport:
    """A transport seen through a :class:`Link`: half the round trip before the call,
    half after, a lost exchange as a connection failure, a partition as silence."""

    def __init__(self, inner: Transport, link: Link, sleep: Sleep = asyncio.sleep) -> None:
        self.inner = inner
        self.name = inner.name
        self.link = link
        self._sleep = sleep

    async def _cross(self, timeout_s: float) -> float:
        """Spend the outbound half of the round trip; return the inbound half still owed."""
        if self.link.profile.partitioned:
            await self._sleep(timeout_s)
            raise TargetTimeout(self.name, "link partitioned")
        rtt = self.link.sample_rtt_s()
        if self.link.lost():
            await self._sleep(min(rtt, timeout_s))
            raise TargetUnavailable(self.name, "connection lost on the link")
        await self._sleep(rtt / 2)
        return rtt / 2

    async def infer(self, x: Batch, timeout_s: float) -> Reply:
        back = await self._cross(timeout_s)
        reply = await self.inner.infer(x, max(timeout_s - 2 * back, 1e-3))
        await self._sleep(back)
        return reply

    async def probe(self, timeout_s: float) -> None:
        back = await self._cross(timeout_s)
        await self.inner.probe(max(timeout_s - 2 * back, 1e-3))
        await self._sleep(back)

    async def aclose(self) -> None:
        await self.inner.aclose()

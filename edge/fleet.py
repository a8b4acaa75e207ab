"""An edge worker's membership in a router's fleet: join, heartbeat, leave.

The worker sends its member document with ``PUT /v1/fleet/{name}`` once it
listens, then again every heartbeat interval: the router drops a member it has
not heard from within its TTL and answers each beat with the interval it wants
(a third of the TTL), which caps ours. Every call has a timeout. While the
router cannot be reached, or refuses, beats are retried with capped, jittered
exponential backoff (AWS Architecture Blog, "Exponential Backoff And Jitter");
since a beat is a full registration, the first one that gets through rejoins.
On a clean shutdown the worker leaves (``DELETE``), so the router stops
choosing it at once instead of after the TTL.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

log = logging.getLogger("edgeroute.edge.fleet")

Sleep = Callable[[float], Awaitable[None]]


class FleetRefused(Exception):
    """The router answered a heartbeat with an error (bad token, bad document, conflict)."""


class FleetAgent:
    """Keeps one worker in the fleet of the router at ``router_url``.

    ``member`` is the document the router validates (``url``, ``tier``,
    ``quality``, ``concurrency``, ``link``); ``ready()`` says when the worker's
    own server listens (nothing is announced before). ``sleep`` and ``rng``
    are injected for tests.
    """

    def __init__(
        self,
        router_url: str,
        token: str,
        name: str,
        member: dict[str, Any],
        *,
        interval_s: float = 1.0,
        timeout_s: float = 2.0,
        max_backoff_s: float = 10.0,
        ready: Callable[[], bool] = lambda: True,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if interval_s <= 0 or timeout_s <= 0:
            raise ValueError("interval_s and timeout_s must be positive")
        self.url = f"{router_url.rstrip('/')}/v1/fleet/{name}"
        self.name = name
        self.member = member
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.max_backoff_s = max_backoff_s
        self._headers = {"authorization": f"Bearer {token}"}
        self._ready = ready
        self._client = httpx.AsyncClient(timeout=timeout_s, transport=transport)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.joined = False
        self.failures = 0
        self.beats = 0
        self.last_error: str | None = None

    async def beat(self) -> float:
        """One heartbeat; returns the interval to the next (the router's advice caps ours)."""
        try:
            response = await self._client.put(self.url, json=self.member, headers=self._headers)
        except httpx.HTTPError as exc:
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            try:
                reason = response.json().get("error", response.text)
            except ValueError:
                reason = response.text
            raise FleetRefused(f"{response.status_code}: {reason}")
        answer = response.json()
        if answer.get("status") == "joined":
            log.info("joined the fleet at %s as %s", self.url, self.name)
        self.joined = True
        self.beats += 1
        advised_ms = answer.get("heartbeat_interval_ms")
        advised = advised_ms / 1000 if isinstance(advised_ms, int | float) and advised_ms > 0 \
            else self.interval_s
        return min(self.interval_s, advised)

    def backoff_s(self) -> float:
        """Full jitter over a doubling ceiling, from the interval up to ``max_backoff_s``."""
        ceiling = min(self.max_backoff_s, self.interval_s * 2 ** max(self.failures - 1, 0))
        return self._rng.uniform(ceiling / 2, ceiling)

    async def run(self) -> None:
        """Beat until cancelled; never raises for the router's failures."""
        while not self._ready():
            await self._sleep(0.05)
        while True:
            try:
                wait = await self.beat()
                self.failures, self.last_error = 0, None
            except (ConnectionError, FleetRefused) as exc:
                self.failures += 1
                if str(exc) != self.last_error:
                    log.warning("fleet heartbeat to %s failed: %s", self.url, exc)
                self.last_error = str(exc)
                wait = self.backoff_s()
            await self._sleep(wait)

    async def leave(self) -> bool:
        """Leave the fleet (bounded by the timeout); True when the router confirmed it."""
        try:
            response = await self._client.delete(self.url, headers=self._headers)
        except httpx.HTTPError as exc:
            log.warning("could not leave the fleet: %s", exc)
            return False
        finally:
            await self._client.aclose()
        self.joined = False
        return response.status_code == 200

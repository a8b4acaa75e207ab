"""The response cache of one router replica: reuse a fresh answer, share a call in flight.

Two levers, both kept per router replica (nothing is shared between replicas: each holds
the answers it routed, so with N replicas an input may be called up to N times per TTL):

* **Cache.** An answer is kept under its :data:`CacheKey`: the model, the request's
  quality class and a digest of the input tensor's dtype, shape and bytes. The store is a
  ``cachetools.TTLCache`` sized in bytes (least recently used out first) whose entries
  expire ``ttl_s`` after the call that produced them. An entry answers only while the
  model version that produced it is the one its target last answered with (a new version
  drops that target's older entries at once), and a ``quality=high`` request is never
  answered from an entry a small model produced (a ``quality=any`` request may be
  answered from a ``quality=high`` entry: the large model's answer). An entry holds every
  output of the model, so which outputs a request selects is not part of the key.
  Failures are never kept.
* **Single flight.** Identical requests that arrive while one of them (the leader) is
  being routed wait for its answer instead of calling upstream themselves (Go's
  ``singleflight``, Varnish's request coalescing). A follower waits at most until its own
  deadline, and joins only a leader whose deadline is not much later than its own (by at
  most :data:`JOIN_SLACK_RATIO` of the time it has left): a request with a tight deadline
  is not held behind a slow plan made for a loose one, while identical requests sent
  together, whose deadlines differ by their arrival times, share one call. If the leader
  fails, or its client goes away, the followers start over and one of them leads.

A request's ``Cache-Control: no-cache`` routes it afresh (its answer still refreshes the
entry); ``no-store`` also keeps its answer out. Neither joins a flight.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
from cachetools import TTLCache

from edgeroute.config import Quality
from edgeroute.signature import Batch
from router.policy import CacheSettings
from router.served import NotServed
from router.tenancy import Caller
from router.transport import Reply

R = TypeVar("R")
CacheKey = tuple[str, str, bytes]
"""(model, quality class of the request, digest of the input tensor)."""
Outcome = Literal["hit", "coalesced", "miss", "bypass"]
ENTRY_OVERHEAD_BYTES = 512
"""What an entry is counted to hold beside its tensors (key, objects, the store's links)."""
JOIN_SLACK_RATIO = 0.2
"""A follower joins a leader whose deadline is later than its own by at most this share of
the time the follower has left."""
CACHE_TIER = "cache"
"""The ``tier`` label of a request answered with a reused answer (Prometheus, status page)."""


def cache_key(model: str, quality: str, x: Batch) -> CacheKey:
    """The model, the quality class and a digest of every input tensor's name, datatype,
    shape and bytes."""
    digest = hashlib.blake2b(digest_size=16)
    for tensor in x.tensors:
        digest.update(f"{tensor.name}{tensor.data.dtype.str}{tensor.data.shape}".encode())
        digest.update(np.ascontiguousarray(tensor.data).data)
    return (model, quality, digest.digest())


@dataclass(frozen=True)
class Directives:
    """What a request lets the cache do: answer it from the cache or a flight (``read``),
    keep its answer (``write``)."""

    read: bool = True
    write: bool = True


USE_CACHE = Directives()
"""A request without ``Cache-Control`` directives."""


def directives(cache_control: str | None) -> Directives:
    """A request's ``Cache-Control`` header read as :class:`Directives` (RFC 9111 names)."""
    words = {part.split("=")[0].strip().lower() for part in (cache_control or "").split(",")}
    if "no-store" in words:
        return Directives(read=False, write=False)
    if "no-cache" in words:
        return Directives(read=False, write=True)
    return Directives()


@dataclass(frozen=True)
class Entry:
    """One answer as a target gave it, with what its call cost."""

    reply: Reply
    target: str
    tier: str
    quality: Quality
    """Of the model that produced it."""
    cost_usd: float

    @property
    def nbytes(self) -> int:
        return sum(t.data.nbytes for t in self.reply.outputs) + ENTRY_OVERHEAD_BYTES


@dataclass(frozen=True)
class Reused:
    """A request answered with an answer it did not pay for: from the cache, or from an
    identical request's call in flight (``coalesced``)."""

    entry: Entry
    coalesced: bool

    @property
    def reply(self) -> Reply:
        return self.entry.reply

    @property
    def target_name(self) -> None:
        """No target answered this request (the answer's target is in :attr:`entry`)."""
        return None

    @property
    def metric_tier(self) -> str:
        return CACHE_TIER

    def parameters(self, caller: Caller, deadline_ms: float, explain: bool) -> dict[str, Any]:
        """The response ``parameters``: the target and model version that produced the
        answer, nothing charged, and what the call it replaced cost (``saved_usd``)."""
        entry = self.entry
        params: dict[str, Any] = {
            "target": entry.target,
            "tier": entry.tier,
            "model_version": entry.reply.model_version,
            "attempts": 0,
            "cache_hit": not self.coalesced,
            "coalesced": self.coalesced,
            "cost_usd": 0.0,
            "saved_usd": entry.cost_usd,
            "deadline_ms": deadline_ms,
            "policy": caller.policy_name,
            "tenant": caller.tenant,
        }
        if explain:
            how = ("an identical request's call in flight" if self.coalesced
                   else "the router's response cache")
            params["explanation"] = {"reason": f"answered from {how}; no plan ran"}
        return params


@dataclass(frozen=True)
class _Flight:
    done: asyncio.Future[Entry | None]
    deadline_at: float


class ResponseCache:
    """The answers of one router replica, and the requests it has in flight.

    ``on_outcome`` hears what the cache did for each request (``hit``, ``coalesced``,
    ``miss``, ``bypass``) while it is enabled; ``clock`` times the TTL and deadlines.
    """

    def __init__(self, settings: CacheSettings | None = None, *,
                 on_outcome: Callable[[Outcome], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings or CacheSettings()
        self._clock = clock
        self._on_outcome = on_outcome
        self._store = self._new_store()
        self._flights: dict[CacheKey, _Flight] = {}
        self._versions: dict[str, str] = {}
        self.counts: Counter[str] = Counter()

    def _new_store(self) -> TTLCache[CacheKey, Entry]:
        return TTLCache(maxsize=self.settings.max_bytes, ttl=self.settings.ttl_s,
                        timer=self._clock, getsizeof=lambda entry: entry.nbytes)

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def configure(self, settings: CacheSettings) -> None:
        """New settings; if anything changed, the entries go with the old store (a policy
        that turns the cache off drops what it held)."""
        if settings != self.settings:
            self.settings = settings
            self._store = self._new_store()

    @property
    def nbytes(self) -> int:
        self._store.expire()
        return int(self._store.currsize)

    def get(self, key: CacheKey, quality: str) -> Entry | None:
        """A fresh entry that may answer a request of ``quality`` for ``key``, if any."""
        model, _, digest = key
        keys = [key] + ([(model, "high", digest)] if quality != "high" else [])
        for candidate in keys:
            entry = self._store.get(candidate)
            if entry is None:
                continue
            if entry.reply.model_version != self._versions.get(entry.target,
                                                               entry.reply.model_version):
                self._store.pop(candidate, None)
                continue
            if quality == "high" and entry.quality != "large":
                continue
            return entry
        return None

    def put(self, key: CacheKey, entry: Entry) -> None:
        """Keep ``entry`` (unless it alone exceeds the store) after hearing its version."""
        self.observe(entry.target, entry.reply.model_version)
        if self.enabled and entry.nbytes <= self.settings.max_bytes:
            self._store[key] = entry

    def observe(self, target: str, version: str) -> None:
        """The model version ``target`` answered with: its entries of other versions go."""
        known = self._versions.get(target)
        self._versions[target] = version
        if known is not None and known != version:
            stale = [key for key, entry in list(self._store.items())
                     if entry.target == target and entry.reply.model_version != version]
            for key in stale:
                self._store.pop(key, None)

    def _count(self, outcome: Outcome) -> None:
        self.counts[outcome] += 1
        if self._on_outcome is not None:
            self._on_outcome(outcome)

    async def answer(self, model: str, quality: str, x: Batch, *, deadline_at: float,
                     directives: Directives,
                     compute: Callable[[], Awaitable[tuple[R, Entry]]]) -> R | Reused:
        """The request's answer: reused when the cache or a flight has it, else what
        ``compute`` returns (its entry kept as ``directives`` allow). Raises what
        ``compute`` raises, or :class:`NotServed` when ``deadline_at`` (on the cache's
        clock) passes while waiting for a flight."""
        if not self.enabled:
            return await self._alone(None, compute)
        key = cache_key(model, quality, x)
        if not directives.read:
            self._count("bypass")
            return await self._alone(key if directives.write else None, compute)
        while True:
            entry = self.get(key, quality)
            if entry is not None:
                self._count("hit")
                return Reused(entry, coalesced=False)
            flight = self._flights.get(key)
            if flight is None:
                return await self._lead(key, deadline_at, compute)
            left_s = deadline_at - self._clock()
            if flight.deadline_at > deadline_at + JOIN_SLACK_RATIO * max(left_s, 0.0):
                self._count("miss")
                return await self._alone(key, compute)
            entry = await self._follow(flight, deadline_at)
            if entry is not None:
                self._count("coalesced")
                return Reused(entry, coalesced=True)

    async def _alone(self, key: CacheKey | None,
                     compute: Callable[[], Awaitable[tuple[R, Entry]]]) -> R:
        result, entry = await compute()
        if key is None:
            self.observe(entry.target, entry.reply.model_version)
        else:
            self.put(key, entry)
        return result

    async def _lead(self, key: CacheKey, deadline_at: float,
                    compute: Callable[[], Awaitable[tuple[R, Entry]]]) -> R:
        flight = _Flight(asyncio.get_running_loop().create_future(), deadline_at)
        self._flights[key] = flight
        self._count("miss")
        entry: Entry | None = None
        try:
            result, entry = await compute()
            self.put(key, entry)
            return result
        finally:
            if self._flights.get(key) is flight:
                del self._flights[key]
            if not flight.done.done():
                flight.done.set_result(entry)

    async def _follow(self, flight: _Flight, deadline_at: float) -> Entry | None:
        """The leader's entry, or ``None`` if it failed; bounded by the follower's deadline."""
        left_s = deadline_at - self._clock()
        try:
            if left_s <= 0:
                raise asyncio.TimeoutError
            return await asyncio.wait_for(asyncio.shield(flight.done), left_s)
        except asyncio.TimeoutError:
            raise NotServed("the deadline passed while an identical request in flight was "
                            "being answered", attempts=0, deadline_passed=True) from None

    def snapshot(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "ttl_s": self.settings.ttl_s,
                "max_bytes": self.settings.max_bytes, "bytes": self.nbytes,
                "entries": len(self._store), "in_flight": len(self._flights),
                **{outcome: self.counts[outcome]
                   for outcome in ("hit", "coalesced", "miss", "bypass")}}

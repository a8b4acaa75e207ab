"""The edge fleet: workers that join and leave a running router, kept alive by heartbeats.

Membership is soft state. A worker registers by ``PUT /v1/fleet/{name}`` with
its :class:`Member` document and sends the same request again as its
heartbeat, so a registry that lost its table (a restarted actor) is rebuilt by
the next round of heartbeats. A member whose last heartbeat is older than the
TTL is expired: the router stops choosing it, as Consul and Eureka drop an
instance whose TTL check lapsed. ``DELETE`` leaves at once.

Pure logic, no Ray or HTTP: :class:`FleetTable` is the registry's table (one
per Serve application, in a named actor), :func:`changes` is what each router
replica applies to its own targets after reading the table. Clock injected.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator

from edgeroute.config import Frozen, LinkProfile, Quality, Tier

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"


class Member(Frozen):
    """What a joining worker says about itself (the body of ``PUT /v1/fleet/{name}``)."""

    name: str = Field(pattern=NAME_PATTERN)
    url: str = Field(max_length=2048)
    """Where the router reaches the worker's OIP endpoint (``http://host:port``)."""
    tier: Tier = "edge"
    quality: Quality = "small"
    concurrency: int = Field(1, ge=1, le=64)
    """Requests the worker runs at once (the router's queueing estimate uses it)."""
    link: LinkProfile = LinkProfile()
    """Emulated link for local experiments; leave it out on a real network."""
    models: list[str] | None = Field(None, max_length=256)
    """The models the worker hosts; none: the router's first model only."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        scheme, _, rest = url.partition("://")
        if scheme not in ("http", "https") or not rest or any(c.isspace() for c in url):
            raise ValueError("url must be an http:// or https:// URL")
        return url.rstrip("/")


def hosting(documents: list[dict[str, Any]], model: str, first: str) -> list[dict[str, Any]]:
    """The member documents of the workers that host ``model``: those that list it, and
    those that list nothing when it is the router's first model."""
    return [d for d in documents
            if (model in d["models"] if d.get("models") is not None else model == first)]


@dataclass(frozen=True)
class Entry:
    member: Member
    joined_at: float
    last_seen: float

    def as_dict(self, now: float) -> dict[str, Any]:
        return {**self.member.model_dump(mode="json"),
                "joined_s_ago": round(now - self.joined_at, 3),
                "last_heartbeat_s_ago": round(now - self.last_seen, 3)}


class FleetFull(Exception):
    """The table holds ``max_members`` members already."""


class FleetTable:
    """Name -> member and its last heartbeat; expired entries are dropped when read.

    A heartbeat with a changed document (a new URL after a restart elsewhere)
    replaces the entry. At most ``max_members`` entries, so a leaked token
    cannot grow the router's target list without bound.
    """

    def __init__(self, *, max_members: int = 64,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_members = max_members
        self._clock = clock
        self._entries: dict[str, Entry] = {}

    def heartbeat(self, member: Member) -> bool:
        """Register or refresh ``member``; True when it was not a member before."""
        now = self._clock()
        old = self._entries.get(member.name)
        if old is None and len(self._entries) >= self.max_members:
            raise FleetFull(f"the fleet is full ({self.max_members} members)")
        joined = old.joined_at if old is not None and old.member == member else now
        self._entries[member.name] = Entry(member, joined, now)
        return old is None

    def leave(self, name: str) -> bool:
        return self._entries.pop(name, None) is not None

    def expire(self, ttl_s: float) -> list[str]:
        """Drop the members not heard from within ``ttl_s``; returns their names."""
        now = self._clock()
        gone = [name for name, e in self._entries.items() if now - e.last_seen > ttl_s]
        for name in gone:
            del self._entries[name]
        return gone

    def live(self, ttl_s: float) -> list[Entry]:
        self.expire(ttl_s)
        return list(self._entries.values())

    def snapshot(self, ttl_s: float) -> list[dict[str, Any]]:
        now = self._clock()
        return [e.as_dict(now) for e in self.live(ttl_s)]


@dataclass(frozen=True)
class Changes:
    add: list[Member]
    remove: list[str]


def changes(current: Mapping[str, Member], live: Iterable[Member]) -> Changes:
    """What a replica holding ``current`` fleet targets must do to match ``live``.

    A member whose document changed is removed and added again (a new
    transport for a new URL, fresh estimates for what is effectively a new
    worker).
    """
    wanted = {m.name: m for m in live}
    remove = [n for n, m in current.items() if wanted.get(n) != m]
    add = [m for n, m in wanted.items() if current.get(n) != m]
    return Changes(add=add, remove=remove)

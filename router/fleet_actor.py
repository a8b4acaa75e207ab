"""Ray glue of the edge fleet: the registry all router replicas share, and each one's sync loop.

A registration reaches one router replica through the Serve proxy, but every
replica must route to the new worker. The table (:class:`router.fleet.FleetTable`)
therefore lives in one small named actor, :class:`FleetRegistry`, detached, in
the ``edgeroute`` namespace, created by whichever replica needs it first
(``get_if_exists``). Each replica reads it on a bounded interval, off the
request path (:class:`FleetSync`), and adds or removes targets; a request never
waits on the registry. Every call to the actor has a timeout: a registry that
is unreachable leaves the replica with the fleet it last saw, and the actor,
restarted with an empty table, is refilled by the workers' next heartbeats.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import ray

from router.fleet import Changes, FleetFull, FleetTable, Member, changes

if TYPE_CHECKING:
    from router.service import RoutingService
    from router.targets import Target

log = logging.getLogger("ray.serve")

REGISTRY_NAME = "edgeroute-fleet"
REGISTRY_NAMESPACE = "edgeroute"
CALL_TIMEOUT_S = 2.0


@ray.remote(num_cpus=0, max_restarts=-1)
class FleetRegistry:
    """The fleet table of one Serve application (its own clock: ``time.monotonic``)."""

    def __init__(self, max_members: int) -> None:
        self.table = FleetTable(max_members=max_members)

    def heartbeat(self, document: dict[str, Any]) -> str:
        """``joined``, ``refreshed``, or ``full`` when there is no room for a new member."""
        try:
            return "joined" if self.table.heartbeat(Member.model_validate(document)) \
                else "refreshed"
        except FleetFull:
            return "full"

    def leave(self, name: str) -> bool:
        return self.table.leave(name)

    def members(self, ttl_s: float) -> list[dict[str, Any]]:
        """Live members (expired ones are dropped first) with their heartbeat ages."""
        return self.table.snapshot(ttl_s)


class RegistryUnavailable(Exception):
    """The registry actor could not be reached or created within the call timeout."""


class FleetClient:
    """One replica's access to the registry, every call bounded by ``timeout_s``.

    Only a join creates the registry; reads and leaves of a stack nobody joined
    find none and answer an empty fleet, so a stack without a fleet runs no
    extra actor. A failed call forgets the handle so the next looks it up again.
    """

    def __init__(self, *, max_members: int, timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.max_members = max_members
        self.timeout_s = timeout_s
        self._actor: Any = None

    def _find(self, create: bool) -> Any:
        if create:
            return FleetRegistry.options(  # type: ignore[attr-defined]
                name=REGISTRY_NAME, namespace=REGISTRY_NAMESPACE, lifetime="detached",
                get_if_exists=True,
            ).remote(self.max_members)
        try:
            return ray.get_actor(REGISTRY_NAME, namespace=REGISTRY_NAMESPACE)
        except ValueError:
            return None

    async def _call(self, method: str, *args: Any, create: bool = False) -> Any:
        """The method's result, or None when there is no registry and ``create`` is false."""
        try:
            if self._actor is None:
                self._actor = await asyncio.wait_for(asyncio.to_thread(self._find, create),
                                                     self.timeout_s)
                if self._actor is None:
                    return None
            return await asyncio.wait_for(getattr(self._actor, method).remote(*args),
                                          self.timeout_s)
        except (asyncio.TimeoutError, ray.exceptions.RayError) as exc:
            self._actor = None
            raise RegistryUnavailable(f"fleet registry: {type(exc).__name__}: {exc}") from exc

    async def heartbeat(self, member: Member) -> str:
        return str(await self._call("heartbeat", member.model_dump(mode="json"), create=True))

    async def leave(self, name: str) -> bool:
        return bool(await self._call("leave", name))

    async def members(self, ttl_s: float) -> list[dict[str, Any]]:
        return list(await self._call("members", ttl_s) or [])


MakeTarget = Callable[[Member], "Target"]


class FleetSync:
    """Keeps one replica's fleet targets equal to the registry's live members.

    ``read()`` returns the live member documents (bounded by its own timeout);
    joined members become targets of ``service`` (built by ``make_target``, so
    they start from the prior estimate and are probed), expired or departed
    ones stop being chosen at once, and their connections are closed once no
    call to them is in flight. A failed read changes nothing: the replica keeps
    the fleet it last saw until the registry answers again.
    """

    def __init__(self, read: Callable[[], Awaitable[list[dict[str, Any]]]],
                 service: RoutingService, make_target: MakeTarget, *, interval_s: float,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._read = read
        self._service = service
        self._make_target = make_target
        self.interval_s = interval_s
        self._sleep = sleep
        self.members: dict[str, Member] = {}
        self.retired: list[Target] = []
        self.last_error: str | None = None

    async def sync_once(self) -> Changes | None:
        await self._close_idle()
        try:
            documents = await self._read()
        except RegistryUnavailable as exc:
            if self.last_error != str(exc):
                log.warning("fleet sync: %s", exc)
            self.last_error = str(exc)
            return None
        self.last_error = None
        live = [Member.model_validate({k: v for k, v in doc.items() if k in Member.model_fields})
                for doc in documents]
        todo = changes(self.members, live)
        for name in todo.remove:
            del self.members[name]
            target = self._service.remove_target(name)
            if target is not None:
                self.retired.append(target)
        for member in todo.add:
            self._service.add_target(self._make_target(member))
            self.members[member.name] = member
        if todo.add or todo.remove:
            log.info("fleet: joined %s, left %s",
                     [m.name for m in todo.add] or "-", todo.remove or "-")
        return todo

    async def _close_idle(self) -> None:
        idle = [t for t in self.retired if not t.estimator.in_flight]
        self.retired = [t for t in self.retired if t.estimator.in_flight]
        for target in idle:
            await target.transport.aclose()

    async def run(self) -> None:
        while True:
            await self.sync_once()
            await self._sleep(self.interval_s)

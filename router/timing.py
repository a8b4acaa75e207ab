"""``Server-Timing: router;dur=<ms>`` on every router response (raw ASGI, no per-request task).

Clients behind the Serve proxy see the proxy's time added to the router's; this
header tells them apart, so a shed request's cost in the router itself can be
measured from outside (W3C Server Timing). The time runs from the request's arrival at
the replica's front door (:mod:`router.frontdoor`) where it has one.
"""

from __future__ import annotations

import time
from typing import Any

from edgeroute.http import server_timing
from router.frontdoor import ARRIVED

Scope = dict[str, Any]
Receive = Any
Send = Any


class ServerTiming:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = scope.get(ARRIVED) or time.monotonic()

        async def timed(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                timing = server_timing(router=time.monotonic() - started)
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"server-timing", timing.encode())]
            await send(message)

        await self.app(scope, receive, timed)

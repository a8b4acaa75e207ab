"""The router replica's front door: refuse at once what the replica cannot finish in time.

A router replica behind HAProxy runs its own HTTP server, and every request passes
Serve's request machinery (request metadata, metrics, access log, the hop to the
thread that runs the router) and the web framework before the router's own admission
(:class:`router.admission.DeadlineAdmission`) sees it. Each of those steps costs the
replica's one core a little; under a herd, the requests at the back of the line wait
for all of them, and a refusal that the router makes within a millisecond of the
request reaching it reaches the client hundreds of milliseconds after it was sent.

:class:`FrontDoor` is a raw ASGI layer ahead of all that, installed as Serve's HTTP
callback (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=router.frontdoor:middlewares``, which
:func:`edgeroute.tools.ingress.ingress_env` sets). For each OIP infer request it

* stamps the request's arrival (the ASGI scope's ``edgeroute.arrived``): when it reached
  the door, less how late the HTTP server's loop runs (:meth:`Door.waited_s`, the wait
  in the server's backlog under a herd). The router counts its deadline from there, so
  the time spent in the backlog, Serve's machinery and the framework is the router's own
  and no target's;
* reads the request's ``parameters.deadline_ms`` and refuses it with 503 and
  ``Retry-After`` when that wait and the replica's committed work would leave less than
  ``min_start_left_ms`` of the deadline (the policy's ``admission`` section). The
  committed work is what the requests let in and not answered still need of the
  replica: a whole request's cost (:class:`RequestCost`, measured) for each the router
  has not yet handed to its routing, and only the part after that hand-over for each
  it has (:meth:`Door.dispatching`), which mostly waits on a target.

What the door cannot judge it passes on untouched, for the router to answer: a
request with no deadline of its own (its caller's policy gives it one), a body that is
compressed, binary (the binary tensor extension), over :data:`MAX_PEEK_BYTES` or not
JSON, and every other route. The door acts only in a process where a router has
registered its settings (:meth:`Door.configure`): behind Serve's Python proxy the
callback runs in the proxy's process, where it passes everything on.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import statistics
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgeroute.http import error_response, retry_after_header, server_timing
from edgeroute.oip import OIPError
from router.context import REQUEST_ID_HEADER, pick_request_id
from router.lag import LoopLag
from router.policy import AdmissionSettings

Clock = Callable[[], float]
OnShed = Callable[[str, float], None]
"""Told of each refusal: the model the request named and when it arrived."""

ARRIVED = "edgeroute.arrived"
"""The ASGI scope key of the request's arrival at the door (``time.monotonic``)."""
ANSWERED = "edgeroute.answered"
"""The ASGI scope key the router sets when it has the request's answer in hand."""
DISPATCHED = "edgeroute.dispatched"
"""The ASGI scope key of the router handing the request to its routing
(:meth:`Door.dispatching`)."""
ALONE = "edgeroute.alone"
"""The ASGI scope key marking a request that found no other in progress at the door."""
FINISH_SAMPLES = 256
""":meth:`Door.finish_ms` is the median of this many last requests' finishing times."""
BEFORE_SAMPLES = 64
""":meth:`Door.before_dispatch_s` is the median of this many last lone requests."""
INFER_PATH = re.compile(r"^/v2/models/(?P<model>[^/]+)(/versions/[^/]+)?/infer$")
MAX_PEEK_BYTES = 64 * 1024
"""The largest body the door reads for its deadline; a larger one is passed on unread."""
PRIOR_COST_S = 0.004
"""What one routed request costs a router replica's process in CPU before any is measured:
one replica on this project's 2-core reference machine routes 200-250 requests a second at
saturation (``python -m benchmarks.ingress``), about 4-5 ms each."""
WINDOW_S = 0.5
BUSY_REQUESTS = 25
""":class:`RequestCost` learns only from windows of at least ``WINDOW_S`` in which at least
this many requests ended (50 a second): at lower rates the process's background work (probes,
the lag ticker, Serve's own reporting) would be charged to the few requests."""
SMOOTHING = 0.3
MIN_COST_S, MAX_COST_S = 0.0002, 0.05


class RequestCost:
    """The replica process's CPU time per request ended, measured over busy windows and
    smoothed (``SMOOTHING`` of each new window)."""

    def __init__(self, *, cpu: Clock = time.process_time, clock: Clock = time.monotonic,
                 prior_s: float = PRIOR_COST_S) -> None:
        self._cpu, self._clock = cpu, clock
        self.cost_s = prior_s
        self.measured = False
        self._start, self._cpu_start, self._ended = clock(), cpu(), 0

    def ended(self) -> None:
        """A request ended; closes the window when it has lasted ``WINDOW_S``."""
        self._ended += 1
        now = self._clock()
        if now - self._start < WINDOW_S:
            return
        cpu = self._cpu()
        if self._ended >= BUSY_REQUESTS * (now - self._start) / WINDOW_S:
            sample = min(max((cpu - self._cpu_start) / self._ended, MIN_COST_S), MAX_COST_S)
            self.cost_s = sample if not self.measured else (
                SMOOTHING * sample + (1 - SMOOTHING) * self.cost_s)
            self.measured = True
        self._start, self._cpu_start, self._ended = now, cpu, 0


class Door:
    """What the front door knows in one process: the router's settings, the requests it let
    in and that have not ended, and what a request costs."""

    def __init__(self, *, clock: Clock = time.monotonic, cost: RequestCost | None = None) -> None:
        self.clock = clock
        self.cost = cost or RequestCost(clock=clock)
        self.settings: AdmissionSettings | None = None
        self.on_shed: OnShed | None = None
        self.in_progress = 0
        self.let_in = 0
        self.shed = 0
        # Each counter has one writer: the router's thread hands requests over, the door's
        # thread ends them; their difference is the requests waiting on their routing.
        self.handed_over = 0
        self.handed_over_ended = 0
        self._finish: deque[float] = deque(maxlen=FINISH_SAMPLES)
        self._finish_ms = 0.0
        self._before: deque[float] = deque(maxlen=BEFORE_SAMPLES)
        self._before_s: float | None = None
        self.lag = LoopLag(clock=lambda: self.clock())
        self._ticker: asyncio.Task[None] | None = None

    def watch_loop(self) -> None:
        """Keep a lag ticker on the running loop, the replica's HTTP server's (started by
        the first request; again if that loop has gone)."""
        loop = asyncio.get_running_loop()
        if self._ticker is None or self._ticker.done() or self._ticker.get_loop() is not loop:
            self._ticker = loop.create_task(self.lag.run(), name="edgeroute-door-lag")

    def waited_s(self) -> float:
        """How long a request reaching the door now has likely waited for it: how late the
        HTTP server's loop runs what is due (:class:`router.lag.LoopLag`). Under a herd the
        requests wait in the server's backlog before the door sees them; this is that wait,
        which the door counts against each deadline and the router counts from."""
        return self.lag.lag_s() if self._ticker is not None else 0.0

    def configure(self, settings: AdmissionSettings, on_shed: OnShed | None = None) -> None:
        """The router in this process takes its policy's admission settings (each policy),
        and counts the door's refusals with ``on_shed``."""
        self.settings, self.on_shed = settings, on_shed

    def finished(self, seconds: float) -> None:
        """A request's last byte went out ``seconds`` after the router had its answer (the
        median is taken here, after the response, so a decision only reads it)."""
        self._finish.append(seconds)
        self._finish_ms = 1000 * statistics.median(self._finish)

    def finish_ms(self) -> float:
        """How long the replica takes, once the router has an answer, to send it: encoding,
        the framework, Serve's hand-over to the HTTP server and the write (the median of the
        last :data:`FINISH_SAMPLES` requests; 0 before any). The router reserves it out of
        every deadline."""
        return self._finish_ms

    def dispatching(self, scope: Scope) -> None:
        """The router hands the request in ``scope`` to its routing: what the request still
        needs of the replica from here is its decision, its calls' encoding and its answer's
        way out; the rest of its time it waits on a target. A request that found the replica
        idle times the part before (:meth:`before_dispatch_s`). Called from the router's
        thread; a request that did not come through the door is not counted."""
        arrived = scope.get(ARRIVED)
        if arrived is None or DISPATCHED in scope:
            return
        now = self.clock()
        scope[DISPATCHED] = now
        if scope.get(ALONE):
            self._before.append(now - arrived)
            self._before_s = statistics.median(self._before)
        self.handed_over += 1

    def before_dispatch_s(self) -> float | None:
        """How long a request takes from the door to the router's hand-over when it has the
        replica to itself (the median of the last :data:`BEFORE_SAMPLES` such requests):
        Serve's request machinery, the framework and the router's parsing. ``None`` before
        any."""
        return self._before_s

    def after_dispatch_s(self) -> float:
        """What a handed-over request still costs the replica: a request's cost less the part
        before the hand-over, and at least its finishing time; a whole request's cost until
        the part before is measured."""
        before = self._before_s
        if before is None:
            return self.cost.cost_s
        return max(self.cost.cost_s - before, self._finish_ms / 1000)

    def waiting_on_routing(self) -> int:
        """Requests let in that the router has handed to its routing and not answered."""
        return max(0, min(self.handed_over - self.handed_over_ended, self.in_progress))

    def own_delay_s(self) -> float:
        """The replica's work committed ahead of a request arriving now."""
        handed = self.waiting_on_routing()
        return (self.in_progress - handed) * self.cost.cost_s + handed * self.after_dispatch_s()

    def refusal(self, deadline_ms: float, waited_s: float = 0.0) -> str | None:
        """Why a request with ``deadline_ms`` that waited ``waited_s`` before the door cannot
        be finished in time, or ``None``."""
        assert self.settings is not None
        delay_ms = self.own_delay_s() * 1000
        waited_ms = waited_s * 1000
        if deadline_ms - waited_ms - delay_ms >= self.settings.min_start_left_ms:
            return None
        handed = self.waiting_on_routing()
        return (f"the router cannot start the request in time: it waited about "
                f"{waited_ms:.0f} ms to reach the replica's door, and the {self.in_progress} "
                f"requests ahead of it need about {delay_ms:.0f} ms of its time "
                f"({self.in_progress - handed} not yet routed at "
                f"{self.cost.cost_s * 1000:.1f} ms each, {handed} waiting on a target at "
                f"{self.after_dispatch_s() * 1000:.1f} ms each), "
                f"the deadline is {deadline_ms:g} ms")

    def snapshot(self) -> dict[str, Any]:
        before = self.before_dispatch_s()
        return {"in_progress": self.in_progress, "waiting_on_routing": self.waiting_on_routing(),
                "let_in": self.let_in, "shed": self.shed,
                "cost_ms": round(self.cost.cost_s * 1000, 3), "measured": self.cost.measured,
                "before_dispatch_ms": None if before is None else round(before * 1000, 3),
                "after_dispatch_ms": round(self.after_dispatch_s() * 1000, 3),
                "finish_ms": round(self.finish_ms(), 3),
                "loop_lag_ms": round(self.waited_s() * 1000, 3)}


DOOR = Door()
"""The door of this process (one router replica per process)."""


def positive_ms(value: Any) -> float | None:
    """``value`` as a deadline in ms when it is a positive finite number (not a bool), else
    ``None``: the one check of ``parameters.deadline_ms``, at the door and in the router."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def deadline_of(body: bytes) -> float | None:
    """``parameters.deadline_ms`` of a JSON infer body when it is a positive finite number,
    else ``None`` (the router gives the request its deadline, or its 400)."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    params = document.get("parameters") if isinstance(document, dict) else None
    return positive_ms(params.get("deadline_ms")) if isinstance(params, dict) else None


def _peekable(headers: dict[bytes, bytes]) -> bool:
    length = headers.get(b"content-length", b"")
    return (length.isdigit() and int(length) <= MAX_PEEK_BYTES
            and not headers.get(b"content-encoding")
            and b"inference-header-content-length" not in headers)


class FrontDoor:
    """The raw ASGI layer (see the module's text)."""

    def __init__(self, app: ASGIApp, door: Door = DOOR) -> None:
        self.app, self.door = app, door

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        door = self.door
        infer = INFER_PATH.match(scope["path"]) if scope["type"] == "http" else None
        if door.settings is None or infer is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        door.watch_loop()
        at_door = door.clock()
        waited = door.waited_s()
        arrived = at_door - waited
        scope[ARRIVED] = arrived
        headers = dict(scope["headers"])
        if _peekable(headers):
            body, message = await _read_body(receive)
            deadline = deadline_of(body) if message is None else None
            if deadline is not None and (why := door.refusal(deadline, waited)) is not None:
                door.shed += 1
                await _refuse(scope, receive, send, why, headers, door.settings,
                              door.clock() - at_door)
                if door.on_shed is not None:
                    door.on_shed(infer["model"], arrived)
                return
            receive = _replay(body, message, receive)
        scope[ALONE] = door.in_progress == 0
        door.in_progress += 1
        door.let_in += 1
        try:
            # Refusals first: the requests that arrived with this one and are to be refused
            # are answered before this one takes the replica's time.
            await asyncio.sleep(0)
            await self.app(scope, receive, _finishing(scope, send, door))
        finally:
            door.in_progress -= 1
            if DISPATCHED in scope:
                door.handed_over_ended += 1
            door.cost.ended()


def _finishing(scope: Scope, send: Send, door: Door) -> Send:
    """``send``, telling ``door`` how long after the router's answer the last byte went."""

    async def finishing(message: Message) -> None:
        await send(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            answered = scope.get(ANSWERED)
            if answered is not None:
                door.finished(door.clock() - answered)

    return finishing


async def _read_body(receive: Receive) -> tuple[bytes, Message | None]:
    """The request's body, or what it has so far and the message that ended it early (a
    disconnect), which is handed on to the router as it came."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), message
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), None


def _replay(body: bytes, ended: Message | None, receive: Receive) -> Receive:
    """A ``receive`` that gives the body read already, then whatever comes next."""
    pending: list[Message] = [{"type": "http.request", "body": body,
                               "more_body": ended is not None}]
    if ended is not None:
        pending.append(ended)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


async def _refuse(scope: Scope, receive: Receive, send: Send, why: str,
                  headers: dict[bytes, bytes], settings: AdmissionSettings,
                  took_s: float) -> None:
    rid = pick_request_id(headers.get(REQUEST_ID_HEADER.lower().encode(), b"").decode("latin-1"))
    await error_response(OIPError(why, status=503), {
        "retry-after": retry_after_header(settings.shed_retry_after_s),
        REQUEST_ID_HEADER: rid, "server-timing": server_timing(router=took_s),
    })(scope, receive, send)


def middlewares() -> list[Middleware]:
    """Serve's HTTP callback: the front door, outermost."""
    return [Middleware(FrontDoor)]

"""The router replica's front door (router/frontdoor.py): pure logic and the ASGI layer,
driven through httpx's ASGI transport (the live path through HAProxy is the herd scenario,
``tests/chaos/test_herd.py``)."""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from router.frontdoor import (
    ALONE,
    ARRIVED,
    BUSY_REQUESTS,
    MAX_PEEK_BYTES,
    PRIOR_COST_S,
    WINDOW_S,
    Door,
    FrontDoor,
    RequestCost,
    deadline_of,
    middlewares,
)
from router.policy import AdmissionSettings

INFER = "/v2/models/digits/infer"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """The app behind the door: keeps the scope and the messages it received."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"routed"})


def _door(in_progress: int = 0, cost_s: float = 0.004,
          shed: list[tuple[str, float]] | None = None) -> Door:
    door = Door(cost=RequestCost(prior_s=cost_s))
    door.configure(AdmissionSettings(min_start_left_ms=20.0, shed_retry_after_s=2.0),
                   on_shed=None if shed is None else lambda *refused: shed.append(refused))
    door.in_progress = in_progress
    return door


def _post(door: Door, app: Recorder, path: str = INFER, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=FrontDoor(app, door))
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
            return await client.post(path, **kwargs)

    return asyncio.run(go())


def _infer(deadline_ms: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1], "data": [0.5]}],
            "parameters": {"deadline_ms": deadline_ms}}


def test_a_request_the_committed_work_leaves_no_time_for_is_refused_at_the_door() -> None:
    """70 requests in progress at 4 ms each is 280 ms of the replica's time: a 300 ms
    deadline keeps 20 ms (let in), a 299 ms one does not (503, Retry-After, the request's
    id, the door's own time, an OIP error saying why); the router never sees it."""
    app = Recorder()
    shed: list[tuple[str, float]] = []
    door = _door(in_progress=70, shed=shed)
    assert _post(door, app, json=_infer(300)).status_code == 200
    refused = _post(door, app, path="/v2/models/wine/versions/1/infer", json=_infer(299),
                    headers={"x-request-id": "herd-7"})
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "2"
    assert refused.headers["x-request-id"] == "herd-7"
    assert refused.headers["server-timing"].startswith("router;dur=")
    error = refused.json()["error"]
    assert "cannot start the request in time" in error and "70 requests ahead" in error
    assert len(app.bodies) == 1 and (door.shed, door.let_in) == (1, 1)
    assert [model for model, _ in shed] == ["wine"]  # counted as the model's shed request
    assert door.in_progress == 70  # the one let in has ended


def test_the_router_behind_the_door_reads_the_whole_body_and_the_arrival() -> None:
    clock = Clock()
    door = _door()
    door.clock = clock
    app = Recorder()
    payload = json.dumps(_infer(250)).encode()
    assert _post(door, app, content=payload,
                 headers={"content-type": "application/json"}).text == "routed"
    assert app.bodies == [payload]
    assert app.scopes[0][ARRIVED] == clock.now


@pytest.mark.parametrize("request_kwargs", [
    {"json": {"inputs": [], "parameters": {}}},  # no deadline: the caller's policy gives one
    {"json": {"inputs": [], "parameters": {"deadline_ms": "soon"}}},  # the router's 400
    {"content": b'{"inputs": [], "parameters": {"deadline_ms": Infinity}}'},
    {"json": {"inputs": [], "parameters": {"deadline_ms": True}}},
    {"content": b"{not json", "headers": {"content-type": "application/json"}},
    {"content": gzip.compress(json.dumps(_infer(1)).encode()),
     "headers": {"content-encoding": "gzip"}},
    {"content": json.dumps(_infer(1)).encode() + b"\0\0\0\0",
     "headers": {"inference-header-content-length": str(len(json.dumps(_infer(1))))}},
    {"content": json.dumps(_infer(1)).encode().ljust(MAX_PEEK_BYTES + 1)},
])
def test_what_the_door_cannot_judge_goes_on_to_the_router_untouched(
        request_kwargs: dict[str, Any]) -> None:
    """A replica with far more committed work than any deadline: still, a request without a
    readable deadline reaches the router with its body as sent."""
    app = Recorder()
    door = _door(in_progress=10_000)
    assert _post(door, app, **request_kwargs).status_code == 200
    assert len(app.bodies) == 1 and door.shed == 0


@pytest.mark.parametrize("path", ["/v2/health/ready", "/v1/targets", "/v2/models/digits"])
def test_other_routes_pass_the_door(path: str) -> None:
    app = Recorder()
    assert _post(_door(in_progress=10_000), app, path=path, json=_infer(1)).status_code == 200
    assert ARRIVED not in app.scopes[0]


def test_a_process_without_a_router_passes_everything_on() -> None:
    """Behind Serve's Python proxy the callback runs in the proxy's process, where no router
    configures the door: it neither refuses nor stamps (the proxy's clock is not the
    router's)."""
    app = Recorder()
    door = Door()
    door.in_progress = 10_000
    assert _post(door, app, json=_infer(1)).status_code == 200
    assert ARRIVED not in app.scopes[0] and door.let_in == 0


def test_a_disconnect_while_the_door_reads_the_body_reaches_the_router() -> None:
    door = _door()
    received: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        received.append(await receive())
        received.append(await receive())

    async def go() -> None:
        messages: list[Message] = [{"type": "http.request", "body": b'{"para',
                                    "more_body": True}, {"type": "http.disconnect"}]

        async def receive() -> Message:
            return messages.pop(0)

        async def send(message: Message) -> None:
            raise AssertionError("nothing is sent to a client that left")

        scope = {"type": "http", "method": "POST", "path": INFER,
                 "headers": [(b"content-length", b"40")]}
        await FrontDoor(app, door)(scope, receive, send)

    asyncio.run(go())
    assert received == [{"type": "http.request", "body": b'{"para', "more_body": True},
                        {"type": "http.disconnect"}]


def test_deadline_of_reads_only_a_positive_finite_number() -> None:
    assert deadline_of(json.dumps(_infer(60)).encode()) == 60.0
    assert deadline_of(json.dumps(_infer(0.5)).encode()) == 0.5
    for bad in (0, -1, None, "60", [60]):
        assert deadline_of(json.dumps(_infer(bad)).encode()) is None
    assert deadline_of(b"[1, 2]") is None
    assert deadline_of(b'{"parameters": 3}') is None
    assert deadline_of(b"\xff\xfe") is None


def test_request_cost_learns_from_busy_windows_only() -> None:
    """CPU per request ended: a window with 50 requests a second and 0.2 s of CPU says 4 ms
    each... A quiet window (a few requests, the CPU spent on background work) teaches
    nothing."""
    clock, cpu = Clock(), Clock()
    cost = RequestCost(cpu=cpu, clock=clock, prior_s=PRIOR_COST_S)
    # Quiet: 3 requests over a second with 0.3 s of CPU: 100 ms each would be wrong.
    for _ in range(3):
        clock.now += 1 / 3
        cpu.now += 0.1
        cost.ended()
    assert (cost.cost_s, cost.measured) == (PRIOR_COST_S, False)
    # Busy: 2 * BUSY_REQUESTS requests in 2 * WINDOW_S, 2 ms of CPU each.
    n = 2 * BUSY_REQUESTS
    for _ in range(n):
        clock.now += 2 * WINDOW_S / n
        cpu.now += 0.002
        cost.ended()
    assert cost.measured and cost.cost_s == pytest.approx(0.002)
    # The next busy window at 6 ms each moves it part of the way (smoothing).
    for _ in range(n):
        clock.now += 2 * WINDOW_S / n
        cpu.now += 0.006
        cost.ended()
    assert 0.002 < cost.cost_s < 0.006


def test_serves_callback_returns_the_door_as_a_starlette_middleware() -> None:
    (layer,) = middlewares()
    assert layer.cls is FrontDoor


def test_a_refusal_at_the_door_is_counted_as_the_models_shed_request() -> None:
    """``edgeroute_shed_total{reason="door"}`` and a 503 in ``edgeroute_requests_total``,
    under the model the request named (an unknown one under the shared stray label)."""
    from router.metrics import MemoryFactory, RouterMetrics
    from router.models import ModelServices
    from router.service import RoutingService
    from router.targets import TargetSet
    from tests.unit.fakes import FakeTransport, fake_target

    factory = MemoryFactory()
    svc = RoutingService(TargetSet([fake_target(FakeTransport("edge-a"))]),
                         metrics=RouterMetrics(factory))
    models = ModelServices.digits_only(svc)
    models.door_shed("digits", arrived=0.0)
    models.door_shed("no-such-model", arrived=0.0)
    shed = factory.instruments["edgeroute_shed_total"]
    assert shed.total(reason="door", model="digits") == 1
    assert shed.total(reason="door") == 2
    assert factory.instruments["edgeroute_requests_total"].total(status="503") == 2


def test_the_door_learns_how_long_an_answer_takes_to_leave_once_the_router_has_it() -> None:
    """The router marks when it has the answer; the door times the last byte after it. The
    median of recent requests is what the router reserves (nothing before any request)."""
    from router.frontdoor import ANSWERED

    clock = Clock()
    door = _door()
    door.clock = clock
    assert door.finish_ms() == 0.0

    async def router(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        scope[ANSWERED] = clock.now
        await send({"type": "http.response.start", "status": 200, "headers": []})
        clock.now += scope["finish_s"]
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def go(finish_s: float) -> None:
        async def receive() -> Message:
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message: Message) -> None:
            pass

        scope = {"type": "http", "method": "POST", "path": INFER, "finish_s": finish_s,
                 "headers": [(b"content-length", b"2")]}
        await FrontDoor(router, door)(scope, receive, send)

    for finish_s in (0.002, 0.003, 0.050):
        asyncio.run(go(finish_s))
    assert door.finish_ms() == pytest.approx(3.0)
    assert door.snapshot()["finish_ms"] == pytest.approx(3.0)


def test_the_stack_installs_the_door_behind_haproxy_only() -> None:
    """``ingress: haproxy`` starts Ray with Serve's HTTP callback naming the door, by an
    import path that resolves to it; behind the Python proxy the stack leaves it out."""
    import importlib

    from edgeroute.config import StackConfig
    from edgeroute.tools.ingress import FRONT_DOOR_ENV, INGRESS_VARS, ingress_env

    env = ingress_env(StackConfig(ingress="haproxy"))
    module, _, name = env[FRONT_DOOR_ENV].partition(":")
    assert getattr(importlib.import_module(module), name) is middlewares
    assert FRONT_DOOR_ENV in INGRESS_VARS  # restored when the stack stops
    assert FRONT_DOOR_ENV not in ingress_env(StackConfig(ingress="proxy"))


def test_requests_handed_to_routing_count_only_what_they_still_need() -> None:
    """A request the router has handed to its routing mostly waits on a target: it counts as
    a request's cost less the part before the hand-over (timed on a request that had the
    replica to itself), so 70 requests waiting on targets no longer refuse a 299 ms deadline;
    until that part is timed they count whole."""
    from router.frontdoor import DISPATCHED

    clock = Clock()
    door = _door()
    door.clock = clock
    waiting = [{ARRIVED: clock.now, ALONE: False} for _ in range(70)]
    door.in_progress = 70
    for scope in waiting:
        door.dispatching(scope)
    assert door.waiting_on_routing() == 70 and door.before_dispatch_s() is None
    assert door.own_delay_s() == pytest.approx(70 * 0.004)  # not timed yet: whole
    assert door.refusal(299) is not None

    lone = {ARRIVED: clock.now, ALONE: True}
    clock.now += 0.003
    door.dispatching(lone)
    door.dispatching(lone)  # once per request
    assert door.before_dispatch_s() == pytest.approx(0.003)
    assert door.after_dispatch_s() == pytest.approx(0.001)
    door.in_progress = 71
    assert door.own_delay_s() == pytest.approx(71 * 0.001)
    assert door.refusal(299) is None
    assert waiting[0][DISPATCHED] == 100.0
    assert door.snapshot()["before_dispatch_ms"] == pytest.approx(3.0)

    door.in_progress = 101  # 30 more let in, not yet handed over: whole cost each
    assert door.own_delay_s() == pytest.approx(30 * 0.004 + 71 * 0.001)
    error = door.refusal(200)
    assert error is not None and "30 not yet routed" in error and "71 waiting on a target" in error

    door.dispatching({})  # a request that did not come through the door
    assert door.handed_over == 71


def test_a_handed_over_request_still_needs_at_least_its_finishing_time() -> None:
    clock = Clock()
    door = _door(cost_s=0.002)
    door.clock = clock
    lone = {ARRIVED: clock.now, ALONE: True}
    clock.now += 0.005  # the part before the hand-over, longer than the whole measured cost
    door.dispatching(lone)
    door.finished(0.0015)
    assert door.after_dispatch_s() == pytest.approx(0.0015)


def test_the_door_counts_a_request_handed_over_until_it_ends() -> None:
    """Through the ASGI layer: the router's hand-over is counted while the request is in
    progress and no more once it has ended; the first request found the replica idle."""
    clock = Clock()
    door = _door()
    door.clock = clock
    seen: list[tuple[int, int]] = []

    async def router(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        clock.now += 0.002
        door.dispatching(scope)
        seen.append((door.in_progress, door.waiting_on_routing()))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def go() -> None:
        transport = httpx.ASGITransport(app=FrontDoor(router, door))
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
            await client.post(INFER, json=_infer(300))

    asyncio.run(go())
    assert seen == [(1, 1)]
    assert (door.in_progress, door.waiting_on_routing()) == (0, 0)
    assert door.before_dispatch_s() == pytest.approx(0.002)


def test_a_request_that_waited_behind_a_late_loop_counts_that_wait() -> None:
    """The door's ticker on the server's loop sees the loop stall (a herd's backlog, here a
    150 ms block): a request reaching the door then has waited about that long, so a 100 ms
    deadline cannot be met and is refused saying so, and a 400 ms one is let in with its
    arrival set back by the wait (the router counts its deadline from there)."""
    import time

    door = Door(cost=RequestCost(prior_s=0.001))
    door.configure(AdmissionSettings(min_start_left_ms=20.0, shed_retry_after_s=1.0))
    app = Recorder()

    async def go() -> tuple[httpx.Response, httpx.Response, float]:
        transport = httpx.ASGITransport(app=FrontDoor(app, door))
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
            assert (await client.post(INFER, json=_infer(300))).status_code == 200
            await asyncio.sleep(0.02)  # the ticker runs
            asyncio.get_running_loop().call_soon(time.sleep, 0.15)  # the loop stalls
            await asyncio.sleep(0)
            refused = await client.post(INFER, json=_infer(100))
            let_in_at = time.monotonic()
            let_in = await client.post(INFER, json=_infer(400))
            return refused, let_in, let_in_at

    refused, let_in, let_in_at = asyncio.run(go())
    assert refused.status_code == 503
    assert "waited about 1" in refused.json()["error"]  # 1xx ms
    assert let_in.status_code == 200
    assert let_in_at - app.scopes[-1][ARRIVED] >= 0.1

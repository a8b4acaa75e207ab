"""httpx over aiohttp's pool (router/aiohttp_pool.py), over real sockets on this machine:
answers come back as sent, and each failure on the wire is the httpx error, and then the
TargetError, that the router expects."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
import numpy as np
import pytest
from aiohttp import web

from edgeroute.contract import output_tensors
from edgeroute.oip import (
    InferRequest,
    InferResponse,
    Tensor,
    decode_request,
    encode_request,
    encode_response,
)
from edgeroute.signature import Batch
from router.aiohttp_pool import AiohttpTransport
from router.transport import HttpTransport, TargetTimeout, TargetUnavailable

T = TypeVar("T")
X = np.zeros((2, 64), np.float32)
PEERS = web.AppKey("peers", set[int])


def batch() -> Batch:
    return Batch("digits", (Tensor("input", X),), len(X))


async def serving(app: web.Application, main: Callable[[str], Awaitable[T]]) -> T:
    """Run ``main`` with the URL of ``app`` served on a free loopback port."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        return await main(f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


async def oip_answer(request: web.Request) -> web.Response:
    decoded = decode_request(await request.read(), dict(request.headers))
    rows = decoded.inputs[0].data.shape[0]
    response = InferResponse("digits", output_tensors(np.full((rows, 10), 0.1, np.float32),
                                                      np.arange(rows)), "3")
    body, wire = encode_response(response, frozenset({"probabilities", "label"}))
    request.app[PEERS].add(request.transport.get_extra_info("peername")[1])
    return web.Response(body=body, headers={**wire, "server-timing": "infer;dur=2.5"})


def oip_app() -> web.Application:
    app = web.Application()
    app[PEERS] = set()
    app.router.add_post("/v2/models/digits/infer", oip_answer)
    return app


def test_an_oip_answer_comes_back_whole_over_one_kept_connection() -> None:
    app = oip_app()

    async def main(url: str) -> list[np.ndarray]:
        transport = HttpTransport("edge-a", url)
        try:
            replies = [await transport.infer(batch(), 2.0) for _ in range(3)]
        finally:
            await transport.aclose()
        assert all(r.server_ms == 2.5 and r.model_version == "3" for r in replies)
        return [r.output("label") for r in replies]

    labels = asyncio.run(serving(app, main))
    assert [list(label) for label in labels] == [[0, 1]] * 3
    assert len(app[PEERS]) == 1, "the three calls shared one keep-alive connection"


def test_a_refused_connection_is_unavailable() -> None:
    async def main(url: str) -> str:
        return url

    closed_url = asyncio.run(serving(oip_app(), main))  # served, then closed: nothing listens

    async def call() -> None:
        transport = HttpTransport("edge-a", closed_url)
        try:
            await transport.infer(batch(), 1.0)
        finally:
            await transport.aclose()

    with pytest.raises(TargetUnavailable, match="ConnectError"):
        asyncio.run(call())


def test_a_server_silent_past_the_read_timeout_is_a_timeout() -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2.0)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_post("/v2/models/digits/infer", slow)

    async def main(url: str) -> float:
        transport = HttpTransport("edge-a", url)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            with pytest.raises(TargetTimeout, match="100 ms"):
                await transport.infer(batch(), 0.1)
        finally:
            await transport.aclose()
        return loop.time() - started

    assert asyncio.run(serving(app, main)) < 1.0


def test_a_connection_closed_before_any_answer_is_unavailable() -> None:
    async def main() -> None:
        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(100)
            writer.close()

        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport = HttpTransport("edge-a", f"http://127.0.0.1:{port}")
        try:
            with pytest.raises(TargetUnavailable, match="RemoteProtocolError"):
                await transport.infer(batch(), 1.0)
        finally:
            await transport.aclose()
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_httpx_sees_the_answer_as_the_server_sent_it() -> None:
    """Status, headers and body as sent; a gzip body is decoded by httpx (aiohttp leaves it);
    the request's own headers arrive."""
    import gzip

    async def echo(request: web.Request) -> web.Response:
        body = gzip.compress(await request.read())
        return web.Response(status=207, body=body, headers={
            "content-encoding": "gzip", "x-seen": request.headers.get("x-request-id", "")})

    app = web.Application()
    app.router.add_post("/echo", echo)

    async def main(url: str) -> httpx.Response:
        async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
            return await client.post(f"{url}/echo", content=b"payload",
                                     headers={"x-request-id": "r-1"})

    response = asyncio.run(serving(app, main))
    assert response.status_code == 207
    assert response.content == b"payload"
    assert response.headers["x-seen"] == "r-1"


def test_a_transport_used_from_a_new_event_loop_makes_a_new_session() -> None:
    transport = AiohttpTransport()

    async def main(url: str) -> int:
        client = httpx.AsyncClient(transport=transport)
        body, headers = encode_request(InferRequest(inputs=(Tensor("input", X),)), binary=True)
        response = await client.post(f"{url}/v2/models/digits/infer", content=body,
                                     headers=headers)
        return response.status_code

    assert asyncio.run(serving(oip_app(), main)) == 200
    assert asyncio.run(serving(oip_app(), main)) == 200  # a second loop, the same transport

    async def close() -> None:
        await transport.aclose()

    asyncio.run(close())


"""httpx's client over aiohttp's connection pool: the router's calls to HTTP targets.

The router speaks to edge workers and external OIP servers through ``httpx.AsyncClient``
(its request and response model, its errors, its test transports). Its own connection
layer, httpcore over anyio, costs a router replica about 1.3 ms of CPU per call, the
largest stage of a routed request (``python -m benchmarks.cpu_budget``); aiohttp's pool
does the same work in a fraction of it. :class:`AiohttpTransport` is an httpx transport
that sends each request through one ``aiohttp.ClientSession`` and hands httpx the answer
as it came (content encoding is left for httpx to decode), translating aiohttp's errors
into httpx's so that callers see the same exceptions either way:

* a refused or failed connection: ``httpx.ConnectError``;
* no connection within the connect or pool timeout: ``httpx.ConnectTimeout``;
* no bytes within the read timeout: ``httpx.ReadTimeout``;
* the server closing the connection early: ``httpx.RemoteProtocolError``;
* any other failure on the wire: ``httpx.ReadError``.

httpx's timeouts apply per phase as httpx applies them: ``pool`` and ``connect`` bound
getting a connection, ``read`` each read. The session is made on first use, inside the
event loop that uses it (aiohttp binds a session to its loop), and made anew if a later
call comes from another loop (the old one is closed when its loop has ended).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import httpx

MAX_CONNECTIONS = 64
"""Connections the pool keeps open at most, across hosts (idle ones are kept for reuse)."""


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport over one aiohttp session (see the module's text)."""

    def __init__(self, *, max_connections: int = MAX_CONNECTIONS) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _session_here(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is not None and (self._session.closed or self._loop is not loop):
            old, self._session = self._session, None
            if self._loop is not None and self._loop.is_closed():
                await old.close()  # its loop is gone with its sockets: this only marks it
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                auto_decompress=False, trust_env=False, skip_auto_headers=("User-Agent",))
            self._loop = loop
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = await self._session_here()
        timeout = _timeout(request.extensions.get("timeout", {}))
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        try:
            async with session.request(request.method, str(request.url),
                                       data=await request.aread(), headers=headers,
                                       timeout=timeout, allow_redirects=False) as answer:
                body = await answer.read()
                return httpx.Response(answer.status, headers=list(answer.raw_headers),
                                      content=body, request=request)
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc) or "connect timeout", request=request) from exc
        except TimeoutError as exc:  # aiohttp's read timeouts are TimeoutErrors too
            raise httpx.ReadTimeout(str(exc) or "read timeout", request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise httpx.RemoteProtocolError(str(exc) or "server disconnected",
                                            request=request) from exc
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}", request=request) from exc

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            with contextlib.suppress(RuntimeError):  # its loop has closed: nothing to close
                await session.close()


def _timeout(phases: dict[str, Any]) -> aiohttp.ClientTimeout:
    """httpx's per-phase timeouts as aiohttp's."""
    return aiohttp.ClientTimeout(total=None, connect=phases.get("pool"),
                                 sock_connect=phases.get("connect"),
                                 sock_read=phases.get("read"))

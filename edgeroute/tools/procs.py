"""Small process helpers of the stack: free ports, bounded waits, health checks."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httpx


class StackError(RuntimeError):
    """The stack could not start (a port in use, a worker that died, a timeout)."""


def port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, step_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(step_s)
    raise StackError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def http_ok(url: str, timeout_s: float = 1.0) -> bool:
    try:
        return httpx.get(url, timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False

"""Talking to a running router from the tools: its admin views, whatever it answers.

One boundary, as httpx translates foreign errors at one place: a router that
cannot be reached, answers a 4xx/5xx, or answers something that is not a JSON
object becomes a :class:`RouterError` with a one-line message; the CLI prints
it and exits 1 (no traceback). The admin token comes from the state file
``edgeroute up`` writes.
"""

from __future__ import annotations

from typing import Any

import httpx

TIMEOUT_S = 10.0


class RouterError(Exception):
    """The router could not be asked, or its answer was not the JSON object expected."""


def admin_headers(state: dict[str, Any]) -> dict[str, str]:
    """The ``Authorization`` header for the router's admin routes: the admin token, else
    the read-only ops token (a state file handed to someone who may only look); none
    without either."""
    token = state.get("admin_token") or state.get("ops_token")
    return {"authorization": f"Bearer {token}"} if token else {}


def _detail(response: httpx.Response) -> str:
    try:
        document = response.json()
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        return str(document["error"])
    text = " ".join(response.text.split())
    return text[:200] or "(empty body)"


def call(state: dict[str, Any], method: str, path: str, *, json: object = None,
         headers: dict[str, str] | None = None, timeout_s: float = TIMEOUT_S,
         admin: bool = True, transport: httpx.BaseTransport | None = None) -> dict[str, Any]:
    """``method path`` on the router of ``state`` (with the admin token unless ``admin``
    is false); the JSON object of a 200 answer, else :class:`RouterError`."""
    if not state.get("endpoint"):
        raise RouterError("the state file names no router endpoint")
    endpoint = str(state["endpoint"])
    headers = {**(admin_headers(state) if admin else {}), **(headers or {})}
    try:
        with httpx.Client(base_url=endpoint, timeout=timeout_s, transport=transport) as client:
            response = client.request(method, path, json=json, headers=headers)
    except httpx.HTTPError as exc:
        raise RouterError(f"could not reach the router at {endpoint}: "
                          f"{type(exc).__name__}: {exc}") from None
    if response.status_code != 200:
        raise RouterError(f"the router answered {response.status_code} to {method} {path}: "
                          f"{_detail(response)}")
    try:
        document = response.json()
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise RouterError(f"the router answered {method} {path} with something that is not "
                          f"a JSON object: {_detail(response)}")
    return document


def get(state: dict[str, Any], path: str, **options: Any) -> dict[str, Any]:
    return call(state, "GET", path, **options)


def policy_line(policy: dict[str, Any] | None) -> str:
    """What ``edgeroute targets`` says of the policy: the one in force and, when the
    latest offer was refused, which one and why."""
    if not policy:
        return "policy: not reported by this router"
    digest = policy.get("sha256")
    line = f"policy {digest[:12]} in force" if digest else "NO valid policy in force"
    rejected = policy.get("rejected")
    applied_at = policy.get("applied_at") or 0.0
    if rejected and rejected.get("rejected_at", 0.0) >= applied_at:
        line += (f"; policy {rejected['sha256'][:12]} was REJECTED "
                 f"({rejected.get('source', '?')}): {'; '.join(rejected.get('reasons', []))}")
    return line

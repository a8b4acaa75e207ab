"""The router's status page: ``GET /ui`` (``GET /`` redirects there) and its JSON feed.

``GET /ui`` is one self-contained HTML page (``router/status_page.html``: inline
script and style, nothing fetched from anywhere but this router) that redraws
every two seconds from ``GET /v1/targets`` and ``GET /v1/metrics/summary``. The
page itself holds no data and needs no token; both JSON routes are admin routes
(:mod:`router.admin`), so the page asks for the admin token once and keeps it in
the browser tab's ``sessionStorage``. Opening ``/ui#token=<admin token>`` hands it
over too: a URL fragment never reaches a server or its logs, and the page removes
it from the address bar at once.

``GET /v1/metrics/summary`` answers the replica's :class:`router.activity.Activity`
of each served model: placements and SLO attainment in ten-second buckets over the
last five minutes, each target's observed upstream p50/p99 there, and the recent
decisions with their explanations. Each model's summary is under ``models``; the
first model's is also at the top (as with one model). The page lists every model's
targets and charts the model picked at its top.

The routes are methods of :class:`StatusPage`, a mixin of the Serve ingress class:
Serve binds the methods of every class in the ingress' MRO to the replica.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from router.admin import refuse_non_admin
from router.models import ModelServices
from router.service import RoutingService

PAGE = Path(__file__).with_name("status_page.html")
PAGE_HEADERS = {
    "cache-control": "no-store",
    # Nothing but this router: no CDN, no other origin, no frames.
    "content-security-policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
    "x-content-type-options": "nosniff",
}

routes = APIRouter()


@cache
def page() -> str:
    return PAGE.read_text(encoding="utf-8")


class StatusPage:
    """The status page routes; the ingress class provides these attributes."""

    service: RoutingService
    models: ModelServices
    admin_token: str | None
    ops_token: str | None = None
    replica: str

    @routes.get("/", include_in_schema=False)
    async def root(self) -> Response:
        return RedirectResponse("ui", status_code=307)

    @routes.get("/ui", include_in_schema=False)
    async def status_page(self) -> Response:
        return HTMLResponse(page(), headers=PAGE_HEADERS)

    @routes.get("/v1/metrics/summary")
    async def metrics_summary(self, request: Request) -> Response:
        """The last minutes of this replica, per model: placements, SLO attainment, recent
        decisions."""
        refused = refuse_non_admin(request, self.admin_token, self.ops_token, view=True)
        if refused:
            return refused
        models = {m.model.name: m.service.activity.summary() for m in self.models}
        first = self.models.first.model.name
        return JSONResponse({"replica": self.replica, **models[first], "model": first,
                             "models": models})

"""What ops see of a running stack: a real Prometheus scraping it, and the status page in
headless Chromium.

Prometheus (Debian's ``prometheus``) scrapes the stack's ``metrics_url`` every second
while load runs on both tiers; then every PromQL expression of the Grafana dashboard
and of the alert rules runs through its HTTP API. Chromium renders ``/ui`` after the
same load; the screenshot goes to ``docs/status-page.png``. ``make system-deps``
installs both; without them these tests skip, saying so. (``promtool check`` and
``promtool test`` of the alert rules are unit tests: ``tests/unit/test_alerts.py``.)
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from router.metrics import NO_MODEL
from tests.stackkit import RunningStack, open_loop

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "infra/grafana/edgeroute.json"
ALERTS = ROOT / "infra/prometheus/alerts.yml"
DOCS_SCREENSHOT = ROOT / "docs/status-page.png"
"""Rewritten by the status page test only with ``EDGEROUTE_UPDATE_DOCS=1`` (a test run
leaves tracked files as they were)."""
PROMETHEUS_PORT = 18990
RATE_WINDOW = "2m"
ALL_MODELS = ".*"
"""The dashboard's ``model`` variable set to All (its ``allValue``)."""



def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for row in dashboard["panels"] for p in [row, *row.get("panels", [])]]
    return [(p["title"], t["expr"]) for p in panels for t in p.get("targets", [])]


CACHE_SERIES = re.compile(r"ray_edgeroute_cache_\w+")
"""The response cache's series: the session stack runs with the cache off (the default),
so they exist only on a stack with it on; ``tests/integration/test_cache.py`` checks them
there."""


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (make system-deps installs it with apt)")
    return path


def test_the_state_file_names_the_status_page_and_the_metrics(stack: RunningStack) -> None:
    state = stack.state
    assert state["dashboard_url"] == f"{stack.endpoint}/ui"
    page = httpx.get(state["dashboard_url"], timeout=5)
    assert page.status_code == 200 and "<svg" in page.text
    assert httpx.get(stack.endpoint + "/", timeout=5, follow_redirects=True).url.path == "/ui"
    assert httpx.get(f"{stack.endpoint}/v1/metrics/summary", timeout=5).status_code == 401
    assert httpx.get(state["metrics_url"], timeout=10).status_code == 200


def test_metrics_url_serves_the_routers_series_after_load(stack: RunningStack,
                                                          loaded: dict[str, int]) -> None:
    scraped = httpx.get(stack.state["metrics_url"], timeout=10).text
    placed = set(re.findall(r'^ray_edgeroute_placements_total\{[^}]*tier="(\w+)"', scraped,
                            re.MULTILINE))
    assert placed >= {"edge", "cloud"}
    latency = set(re.findall(r'^ray_edgeroute_request_latency_ms_bucket\{[^}]*tier="([^"]+)"',
                             scraped, re.MULTILINE))
    assert latency, "no request latency histogram"
    assert latency >= {"edge", "cloud"}


@pytest.fixture(scope="module")
def prometheus(stack: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prometheus scraping the stack every second; its API's base URL."""
    binary = tool("prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    scrape = urlsplit(stack.state["metrics_url"])
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "rule_files": [str(ALERTS)],
              "scrape_configs": [{"job_name": "ray", "metrics_path": scrape.path,
                                  "static_configs": [{"targets": [scrape.netloc]}]}]}
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{PROMETHEUS_PORT}"
    with open(workdir / "prometheus.log", "wb") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address={address}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    api = f"http://{address}/api/v1"
    try:
        deadline = time.monotonic() + 30
        while not _scraped_up(api):
            assert process.poll() is None, (workdir / "prometheus.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "Prometheus did not scrape the stack in 30 s"
            time.sleep(0.5)
        yield api
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _scraped_up(api: str) -> bool:
    try:
        return bool(query(api, 'up{job="ray"} == 1'))
    except (httpx.HTTPError, AssertionError):
        return False


def query(api: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{api}/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (expr, body)
    return list(body["data"]["result"])


@pytest.fixture(scope="module")
def loaded(stack: RunningStack, prometheus: str) -> dict[str, int]:
    """Load on both tiers (a relaxed deadline goes to the cheaper cloud, a tight one to the
    nearer edge), then until Prometheus has the router's counts; what the load got."""

    async def both() -> list[list[tuple[int, str]]]:
        return await asyncio.gather(
            open_loop(stack.endpoint, 10, 15, field="tier", deadline_ms=2000),
            open_loop(stack.endpoint, 10, 15, field="tier", deadline_ms=40))

    results = [r for batch in asyncio.run(both()) for r in batch]
    tiers = {tier: sum(1 for s, t in results if s == 200 and t == tier) for tier in
             ("edge", "cloud")}
    assert tiers["edge"] > 0 and tiers["cloud"] > 0, results
    deadline = time.monotonic() + 60
    while True:
        placed = query(prometheus, "sum by (tier) (ray_edgeroute_placements_total)")
        if {s["metric"].get("tier") for s in placed} >= {"edge", "cloud"}:
            break
        assert time.monotonic() < deadline, f"Prometheus has no placements per tier: {placed}"
        time.sleep(1)
    time.sleep(3)  # a few more scrapes, so that rates span the whole load
    return tiers


@pytest.mark.parametrize(("title", "expr"), dashboard_queries(),
                         ids=[f"{t}: {e[:60]}" for t, e in dashboard_queries()])
def test_every_dashboard_query_returns_series(prometheus: str, loaded: dict[str, int],
                                              title: str, expr: str) -> None:
    if CACHE_SERIES.search(expr):
        pytest.skip("a response cache panel: the cache is off here; test_cache.py checks it")
    series = query(prometheus, expr.replace("$__rate_interval", RATE_WINDOW)
                   .replace("$model", ALL_MODELS))
    assert series, f"panel '{title}' has no data: {expr}"


def test_latency_series_name_both_tiers(prometheus: str, loaded: dict[str, int]) -> None:
    placed = query(prometheus, "sum by (tier) (ray_edgeroute_placements_total)")
    assert {s["metric"]["tier"] for s in placed} >= {"edge", "cloud"}
    tiers = {s["metric"].get("tier") for s in query(
        prometheus, "sum by (tier) (ray_edgeroute_request_latency_ms_count)")}
    assert tiers >= {"edge", "cloud"}


@pytest.mark.parametrize("rule", alert_rules(), ids=[r["alert"] for r in alert_rules()])
def test_every_alert_rule_evaluates(prometheus: str, loaded: dict[str, int],
                                    rule: dict[str, Any]) -> None:
    """Each alert's expression runs over the stack's series (whether it fires under this
    load is ``tests/unit/test_alerts.py``'s, on synthetic series)."""
    query(prometheus, rule["expr"])


def test_the_series_the_alerts_watch_exist(stack: RunningStack, prometheus: str,
                                           loaded: dict[str, int]) -> None:
    """Gauges the alerts compare are there from the start, not only after an event."""
    breakers = {s["metric"]["target"] for s in query(
        prometheus, "ray_edgeroute_target_breaker_open")}
    assert breakers == set(stack.targets())
    models = {s["metric"]["model"] for s in query(prometheus, "ray_edgeroute_requests_total")}
    assert models - {NO_MODEL} == {"digits"}, "a request for no served model is labelled '-'"
    assert query(prometheus, "ray_edgeroute_cloud_replicas")
    queued = query(prometheus, 'ray_serve_deployment_queued_queries'
                               '{application="edgeroute", deployment!="router"}')
    assert queued, "Serve exports no queue length for the cloud deployment"


def chromium(*args: str, profile: Path, timeout_s: float = 90) -> str:
    result = subprocess.run(
        [tool("chromium"), "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=timeout_s)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_the_status_page_renders_every_target_and_both_charts(
        stack: RunningStack, loaded: dict[str, int], tmp_path: Path) -> None:
    url = f"{stack.state['dashboard_url']}#token={stack.state['admin_token']}"
    dom = chromium("--virtual-time-budget=10000", "--dump-dom", url, profile=tmp_path / "p1")
    targets = stack.targets()
    rendered = re.findall(r'<tr data-target="([^"]+)"', dom)
    assert sorted(rendered) == sorted(targets), dom[:3000]
    assert 'class="tier-edge"' in dom and 'class="tier-cloud"' in dom
    bars = set(re.findall(r'<rect class="bar"[^>]*data-target="([^"]+)"', dom))
    assert {targets[name]["tier"] for name in bars} == {"edge", "cloud"}, bars
    assert re.search(r'<path class="slo-line" d="M[\d.]+ [\d.]+ L', dom), "no SLO line"
    assert len(re.findall(r"<details>", dom)) > 0, "no decision explained"
    assert "admin token required" not in dom
    screenshot = tmp_path / "status-page.png"
    chromium("--virtual-time-budget=10000", "--hide-scrollbars", "--window-size=1400,1150",
             f"--screenshot={screenshot}", url, profile=tmp_path / "p2")
    assert screenshot.stat().st_size > 20_000
    if os.environ.get("EDGEROUTE_UPDATE_DOCS") == "1":
        shutil.copyfile(screenshot, DOCS_SCREENSHOT)

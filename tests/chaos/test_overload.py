"""Scenario 6: offered load rises from 1x to 5x of a target's capacity."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeroute.tools.loadgen import Phase
from tests.chaos.conftest import (
    edge_stats,
    load,
    percentile,
    record,
    restore,
    summary,
    within_bounds,
)
from tests.stackkit import RunningStack, router_pids

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

CAPACITY_RPS = 5.0
"""edge-c: 200 ms per request, one at a time (5x is then 25 rps, which this 2-core machine
can offer and route; the router's own cost per request is what overload tests, not the
machine's)."""
PHASE_S = 12.0
DEADLINE_MS = 1000.0
GOODPUT_RATIO = 0.9
"""Goodput at 5x over goodput at 1x (the design's target). At 5x edge-c should never idle
and never run a call that will answer late: the router admits a call while the calls it has
in flight there, each a service time, leave it time (the estimator's wait-ahead term), and
counts a call in flight from its launch."""
SHED_P50_MS = 10.0
"""A shed request is answered within this inside the router (its ``Server-Timing``), at the
median: the design's goal."""
SHED_P99_MS = 100.0
"""...and within this at p99. On this 2-core machine the router replica shares its cores
with the Serve proxy, the edge workers and the load generator, and its event loop stalls
for tens of ms at times (measured p99 41 ms, p50 7 ms on a quiet run): the tail is the
machine's scheduling, which the figures print; the bound still catches queueing."""


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_overload_from_1x_to_5x_keeps_goodput_and_sheds_fast(chaos_stack: RunningStack) -> None:
    """The named policy ``overload`` places on edge-c alone (capacity 5 rps) and rejects what
    it predicts would miss the deadline. Offered load: 1x, then 5x the capacity. Goodput
    (answers within the deadline, per second) at 5x stays >= 90% of the 1x level; the excess
    is refused with 503 and Retry-After, cheaply in the router (its Server-Timing) and fast
    at the client (the Serve proxy adds its share there); edge-c's queue stays within its
    bound, the router's requests in flight stay bounded, and the memory of the router
    replica and of edge-c grows by less than 50 MB."""
    stack = chaos_stack
    edge_pid = stack.pid("edge-c")
    routers = router_pids(stack)
    rss_before = {"edge-c": _rss_mb(edge_pid),
                  **{f"router-{p}": _rss_mb(p) for p in routers}}
    peaks = {"edge_c_waiting": 0, "router_in_flight": 0}
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.2):
            try:
                waiting = edge_stats(stack, "edge-c")["waiting"]
                in_flight = stack.admin_get("/v1/targets")[
                    "executor"]["admission"]["in_flight"]
            except (httpx.HTTPError, KeyError):
                continue
            peaks["edge_c_waiting"] = max(peaks["edge_c_waiting"], waiting)
            peaks["router_in_flight"] = max(peaks["router_in_flight"], in_flight)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = load(stack, [Phase("1x", PHASE_S, CAPACITY_RPS),
                              Phase("5x", PHASE_S, 5 * CAPACITY_RPS)],
                      deadline_ms=DEADLINE_MS, policy="overload")
    finally:
        stop.set()
        watcher.join()
    rss_after = {"edge-c": _rss_mb(edge_pid), **{f"router-{p}": _rss_mb(p) for p in routers}}
    by_phase: dict[str, Any] = {}
    for phase in ("1x", "5x"):
        outcomes = [o for o in result.outcomes if o.phase == phase]
        good = [o for o in outcomes if o.ok and o.latency_ms <= o.deadline_ms]
        by_phase[phase] = {**summary(outcomes), "goodput_rps": round(len(good) / PHASE_S, 2)}
    shed = [s for s in result.seen if s.status in (429, 503)]
    figures = {
        **by_phase,
        "goodput_ratio_5x_to_1x": round(by_phase["5x"]["goodput_rps"]
                                        / max(by_phase["1x"]["goodput_rps"], 1e-9), 3),
        "shed": len(shed),
        "shed_router_p50_ms": round(percentile([s.router_ms or 0.0 for s in shed], 0.5), 2),
        "shed_router_p99_ms": round(percentile([s.router_ms or 0.0 for s in shed], 0.99), 2),
        "shed_client_p50_ms": round(percentile([s.client_ms for s in shed], 0.5), 1),
        "shed_client_p99_ms": round(percentile([s.client_ms for s in shed], 0.99), 1),
        **peaks,
        "rss_mb_before": {k: round(v, 1) for k, v in rss_before.items()},
        "rss_mb_after": {k: round(v, 1) for k, v in rss_after.items()},
        **{k: v for k, v in summary(result.outcomes, result.seen).items()
           if k in ("max_overrun_ms", "router_max_overrun_ms")},
    }
    record("6 overload 1x -> 5x", **figures)
    assert shed and all(s.retry_after for s in shed)
    assert {o.status for o in result.outcomes} <= {200, 429, 503, 504}
    assert figures["shed_router_p50_ms"] <= SHED_P50_MS
    assert figures["shed_router_p99_ms"] <= SHED_P99_MS
    assert peaks["edge_c_waiting"] <= 8
    assert peaks["router_in_flight"] <= 256
    assert all(rss_after[k] - rss_before[k] < 50 for k in rss_before), figures
    assert figures["goodput_ratio_5x_to_1x"] >= GOODPUT_RATIO, figures
    within_bounds(figures)
    restore(stack)



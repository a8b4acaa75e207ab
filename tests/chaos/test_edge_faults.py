"""Edge workers killed, hung, held down, flapping, or answering 503 under open-loop load."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Sequence

import httpx
import pytest

from edgeroute.config import StackConfig
from edgeroute.tools.loadgen import Outcome, Phase
from tests.chaos.conftest import (
    chaos,
    edge_stats,
    link,
    load,
    must,
    percentile,
    record,
    restore,
    routed_to,
    summary,
    wait_for,
    within_bounds,
)
from tests.stackkit import RunningStack, alive

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

DEADLINE_MS = 300.0
"""Only the edges can meet it (the cloud is 400 ms away)."""


def test_a_flapping_edge_is_ejected_for_longer_each_time(chaos_stack: RunningStack) -> None:
    """Scenario 7 (first on the stack, so edge-a's breaker starts from its first ejection):
    edge-a answers 503 for 5 s, then serves for 5 s, three times over, under
    load at a deadline only the edges meet. No client sees an error (each 503 falls back to
    edge-b at once); each ejection of edge-a lasts at least as long as the one before and the
    last is longer than the first (Envoy's growing ejections), so traffic does not swing
    back and forth with the flapping: edge-a is ejected at most twice per unhealthy spell,
    and in the later spells it carries no traffic while sick (its breaker, or what its
    estimator learned of its failures, keeps it off)."""
    stack = chaos_stack
    events = tuple((t, kind) for start in (1.0, 11.0, 21.0)
                   for t, kind in ((start, "sick"), (start + 5.0, "well")))
    ejections: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        count = stack.targets()["edge-a"]["breaker"]["ejections"]
        while not stop.wait(0.2):
            try:
                breaker = stack.targets()["edge-a"]["breaker"]
            except httpx.HTTPError:
                continue
            if breaker["ejections"] > count:
                count = breaker["ejections"]
                ejections.append(breaker["ejected_for_ms"])

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = load(stack, [Phase("flapping", 31.0, 20.0, events=events)],
                      deadline_ms=DEADLINE_MS,
                      at={"sick": must(stack, "unavailable", "edge-a"),
                          "well": must(stack, "available", "edge-a")})
    finally:
        stop.set()
        watcher.join()
        chaos(stack, "available", "edge-a")
    share = [round(sum(o.target == "edge-a" for o in window) / max(len(window), 1), 2)
             for window in _windows(result.outcomes, 2.5)]
    figures = {**summary(result.outcomes, result.seen), "ejections_ms": ejections,
               "edge_a_share_per_2_5_s": share}
    record("7 flapping edge (503 for 5 s, well for 5 s)", **figures)
    assert figures["failed"] == 0, figures["errors"]
    assert ejections and len(ejections) <= 6
    assert all(b >= a * 0.9 for a, b in itertools.pairwise(ejections)), ejections
    if len(ejections) > 1:
        assert ejections[-1] > ejections[0], ejections
    # Later spells: edge-a is kept off while it is sick (by a longer ejection, or by its
    # learned failures when its health checks pass), whole 2.5 s windows inside them.
    assert share[5] <= 0.05 and share[9] <= 0.05, figures
    within_bounds(figures)
    restore(stack)


def test_sigkill_of_one_of_two_edge_workers_at_50_rps(chaos_stack: RunningStack) -> None:
    """Scenario 1: SIGKILL edge-a at 50 rps open-loop, at a deadline only the edges can meet
    (the cloud is 150 ms away): no request fails, traffic leaves edge-a at once, and is back
    on it within 15 s of the supervisor restarting it."""
    stack = chaos_stack
    pid = stack.pid("edge-a")
    # The kill must hit a worker that carries traffic: after an earlier scenario's failures
    # the router may prefer edge-b until edge-a's failure estimate has decayed.
    assert wait_for(lambda: routed_to(stack, "edge-a"), 30) is not None, (
        "edge-a never served before the kill")
    result = load(stack, [Phase("kill", 8.0, 50.0, events=((2.0, "kill"),))],
                  deadline_ms=DEADLINE_MS, at={"kill": must(stack, "kill", "edge-a")})
    killed_at = result.events[0][0]
    after = [o for o in result.outcomes if o.scheduled_s >= killed_at]
    # The supervisor restarts a dead worker edge_restart_delay_s after noticing: an answer
    # from edge-a before then came from the killed process.
    restart_s = StackConfig().edge_restart_delay_s or 0.0
    last_on_a = max((o.scheduled_s for o in after if o.target == "edge-a"
                      and o.scheduled_s < killed_at + restart_s), default=killed_at)
    assert wait_for(lambda: stack.pid("edge-a") != pid, 60) is not None, (
        "the supervisor did not restart the killed worker")
    restarted_at = stack.state_file.stat().st_mtime  # the supervisor rewrote it on restart
    back_at = wait_for(lambda: routed_to(stack, "edge-a"), 30)
    back = None if back_at is None else time.time() - restarted_at
    figures = {**summary(result.outcomes, result.seen),
               "traffic_off_edge_a_after_s": round(last_on_a - killed_at, 3),
               "traffic_back_after_restart_s": None if back is None else round(back, 1)}
    record("1 sigkill edge worker at 50 rps", **figures)
    failed = [o for o in result.outcomes if not o.ok]
    assert not failed, f"{len(failed)} failed: {[(o.status, o.error) for o in failed[:5]]}"
    assert {o.target for o in result.outcomes} >= {"edge-a", "edge-b"}
    assert back is not None and back <= 15, json.dumps(stack.targets()["edge-a"]["breaker"])
    within_bounds(figures)
    restore(stack)


def test_a_hung_edge_worker_costs_at_most_the_requests_waiting_on_it(
        chaos_stack: RunningStack) -> None:
    """Scenario 2: SIGSTOP edge-a under load at a deadline only the edges can meet; attempts
    time out from the deadline left and fall back or hedge to edge-b, and edge-a is used
    again after SIGCONT. The requests already waiting on edge-a when it hangs can miss
    (their attempt had most of the deadline): at most a few, each a 504 by the deadline plus
    the bound, never a hang or a 5xx other than 504."""
    stack = chaos_stack
    try:
        result = load(stack, [Phase("hang", 7.0, 20.0, events=((1.0, "hang"),))],
                      deadline_ms=DEADLINE_MS, at={"hang": must(stack, "hang", "edge-a")})
    finally:
        assert chaos(stack, "resume", "edge-a").returncode == 0
    back = wait_for(lambda: routed_to(stack, "edge-a"), 60)
    hung_at = result.events[0][0]
    figures = {**summary(result.outcomes, result.seen),
               "served_after_hang": dict(Counter(o.target for o in result.outcomes
                                                 if o.scheduled_s >= hung_at)),
               "traffic_back_after_sigcont_s": None if back is None else round(back, 1)}
    record("2 sigstop edge worker at 20 rps", **figures)
    failed = [o for o in result.outcomes if not o.ok]
    assert len(failed) <= 3, [(o.status, o.error) for o in failed[:5]]
    assert {o.status for o in failed} <= {504}
    assert "edge-a" not in {o.target for o in result.outcomes[-40:]}
    assert back is not None, "edge-a did not get traffic back after SIGCONT"
    within_bounds(figures)
    restore(stack)


def test_all_edges_down_cloud_serves_and_tight_deadlines_fail_fast(
        chaos_stack: RunningStack) -> None:
    """Scenario 3: with every edge worker held down, ``quality=any`` is served by the cloud
    when the deadline allows, and a deadline only an edge could meet gets a fast 503/504 with
    no attempt beyond the cloud's. While down, each edge's breaker lets at most one trial
    call through per ejection (half-open probes), and the ejections grow."""
    stack = chaos_stack
    pids = {edge: stack.pid(edge) for edge in ("edge-a", "edge-b")}
    for edge in pids:
        assert chaos(stack, "down", edge).returncode == 0
    try:
        relaxed = load(stack, [Phase("relaxed", 4.0, 10.0)], deadline_ms=2000)
        tight = load(stack, [Phase("tight", 3.0, 10.0)], deadline_ms=40)
        breakers = {edge: stack.targets()[edge]["breaker"] for edge in pids}
        held = all(not alive(pid) and stack.pid(edge) == pid for edge, pid in pids.items())
    finally:
        for edge in pids:
            assert chaos(stack, "up", edge).returncode == 0
    figures = {"relaxed": summary(relaxed.outcomes, relaxed.seen),
               "tight": summary(tight.outcomes, tight.seen),
               "edge_breakers": {edge: {k: b[k] for k in ("state", "ejections",
                                                          "next_ejection_ms", "transitions")}
                                 for edge, b in breakers.items()},
               **{key: max(figures_of[key] for figures_of in (
                   summary(relaxed.outcomes, relaxed.seen), summary(tight.outcomes, tight.seen)))
                  for key in ("max_overrun_ms", "router_max_overrun_ms")}}
    record("3 all edges down", **figures)
    assert held, "a held-down worker was restarted"
    unknown = chaos(stack, "kill", "edge-z")
    assert unknown.returncode == 1 and "no edge worker named 'edge-z'" in unknown.stderr
    assert {o.status for o in relaxed.outcomes} == {200}
    assert {o.target for o in relaxed.outcomes[-10:]} == {"cloud"}
    assert {o.status for o in tight.outcomes} <= {503, 504}
    for breaker in breakers.values():
        opened = breaker["transitions"].get("half_open->open", 0)
        trials = opened + breaker["transitions"].get("half_open->closed", 0)
        assert trials <= breaker["ejections"], breaker
    within_bounds(figures)
    restore(stack)


def test_everything_503_costs_few_upstream_attempts_and_a_fast_503(
        chaos_stack: RunningStack) -> None:
    """Scenario 4: both edges answer every inference 503 (their health checks pass) and the
    cloud is unreachable (every exchange lost). Fallbacks try each target once, breakers
    eject them, and the retry budget refuses retries: upstream attempts per client request
    stay <= 1.10 over the run, no request makes more than 3, and every request gets a 503
    with Retry-After, fast once the targets are ejected."""
    stack = chaos_stack
    before = {edge: edge_stats(stack, edge)["refused"] for edge in ("edge-a", "edge-b")}
    try:
        for edge in before:
            assert chaos(stack, "unavailable", edge).returncode == 0
        link(stack, "cloud", loss_probability=1.0)()
        result = load(stack, [Phase("all-503", 10.0, 20.0)], deadline_ms=1000)
        refused = {edge: edge_stats(stack, edge)["refused"] - n for edge, n in before.items()}
    finally:
        for edge in before:
            chaos(stack, "available", edge)
        link(stack, "cloud", loss_probability=0.0)()
    outcomes, seen = result.outcomes, result.seen
    late = seen[len(seen) // 2:]
    figures = {**summary(outcomes, seen),
               "edge_calls_per_request": round(sum(refused.values()) / len(outcomes), 3),
               "second_half_client_p50_ms": round(percentile([s.client_ms for s in late], 0.5), 1),
               "second_half_router_p99_ms": round(percentile(
                   [s.router_ms for s in late if s.router_ms is not None], 0.99), 2),
               "with_retry_after": sum(1 for s in seen if s.retry_after) / max(len(seen), 1)}
    record("4 everything 503", **figures)
    assert {o.status for o in outcomes} == {503}, figures["statuses"]
    assert figures["attempts_per_request"] <= 1.10
    assert figures["max_attempts"] <= 3
    assert figures["edge_calls_per_request"] <= 1.10
    assert figures["second_half_router_p99_ms"] <= 50.0
    assert all(s.retry_after for s in seen)
    within_bounds(figures)
    restore(stack)


def _windows(outcomes: Sequence[Outcome], width_s: float) -> list[list[Outcome]]:
    windows: dict[int, list[Outcome]] = {}
    for o in outcomes:
        windows.setdefault(int(o.scheduled_s // width_s), []).append(o)
    return [windows[k] for k in sorted(windows)]

"""``edgeroute top``: the status page in a terminal, for a shell on the router's machine.

It redraws every ``--interval`` seconds (rich ``Live``) from the same two admin routes
as ``GET /ui``: ``/v1/targets`` (each target's health, breaker, predicted latency, calls
in flight, cost) and ``/v1/metrics/summary`` (placements and SLO attainment over the
last minutes, observed upstream p50/p99 per target, recent decisions). Ctrl-C ends it;
``--count N`` stops after N frames. A router that stops answering is shown as such in
the frame, and the view goes on trying.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from edgeroute.tools.cli import DEFAULT_STATE_FILE, read_state

SPARK = " ▁▂▃▄▅▆▇█"
RECENT = 8


def sparkline(values: Sequence[float | None], top: float | None = None) -> str:
    """One character per value, scaled to ``top`` (default: the largest); ``None`` is a
    blank (a bucket with no request)."""
    known = [v for v in values if v is not None]
    scale = top if top is not None else max(known, default=0.0)
    if scale <= 0:
        return "".join(" " if v is None else SPARK[1] for v in values)
    steps = len(SPARK) - 1
    return "".join(" " if v is None else SPARK[max(1, round(min(v / scale, 1.0) * steps))]
                   for v in values)


def targets_view(targets: list[dict[str, Any]], observed: dict[str, Any]) -> Table:
    table = Table(title="targets", expand=True)
    for column in ("target", "tier", "available", "breaker", "in flight", "predicted p50",
                   "observed p50", "observed p99", "share", "USD/request"):
        table.add_column(column, justify="left" if column in ("target", "tier") else "right")
    for t in targets:
        seen = observed.get(t["name"], {})
        breaker = t.get("breaker", {}).get("state", "-")
        table.add_row(
            t["name"], t["tier"], "yes" if t.get("available") else "[red]no[/red]",
            breaker if breaker == "closed" else f"[yellow]{breaker}[/yellow]"
            + (" DRAINED" if t.get("drained") else ""),
            str(t.get("in_flight", "-")), f"{t['estimates']['predicted_ms']:.1f} ms",
            _ms(seen.get("p50_ms")), _ms(seen.get("p99_ms")),
            f"{t.get('traffic_share', 0.0):.0%}", f"{t['cost_usd_per_request']:.2e}")
    return table


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def activity_view(summary: dict[str, Any]) -> Table:
    buckets = summary.get("buckets", [])
    totals = summary.get("totals", {})
    table = Table(title=f"last {summary.get('window_s', 0) / 60:g} min "
                        f"({summary.get('bucket_s', 0):g} s per column)", expand=True)
    table.add_column("series")
    table.add_column("chart")
    table.add_column("over the window", justify="right")
    attainment = [b.get("slo_attainment") for b in buckets]
    table.add_row("SLO attainment", sparkline(attainment, 1.0),
                  "-" if totals.get("slo_attainment") is None
                  else f"{totals['slo_attainment']:.1%}")
    table.add_row("requests", sparkline([float(b.get("requests", 0)) for b in buckets]),
                  f"{totals.get('requests', 0)} ({totals.get('failed', 0)} failed, "
                  f"{totals.get('shed', 0)} shed)")
    tiers = sorted({tier for b in buckets for tier in b.get("tiers", {})})
    for tier in tiers:
        counts = [float(b.get("tiers", {}).get(tier, 0)) for b in buckets]
        table.add_row(f"placed: {tier}", sparkline(counts),
                      str(totals.get("tiers", {}).get(tier, 0)))
    return table


def recent_view(summary: dict[str, Any]) -> Table:
    table = Table(title="recent decisions (newest first)", expand=True)
    for column in ("age", "status", "target", "latency", "deadline", "plan", "why"):
        table.add_column(column, overflow="ellipsis", no_wrap=column != "why")
    for r in summary.get("recent", [])[:RECENT]:
        late = "" if r.get("within_deadline") else "[red]"
        table.add_row(f"{r['age_s']:.1f} s", f"{late}{r['status']}", r.get("target") or "-",
                      f"{r['latency_ms']:.1f} ms", f"{r['deadline_ms']:g} ms",
                      r.get("plan") or "-", (r.get("reason") or "")[:120])
    return table


def frame(state: dict[str, Any]) -> Group:
    """One screen: the targets, the window's charts and the recent decisions."""
    from edgeroute.tools import router_api

    try:
        targets = router_api.get(state, "/v1/targets")
        summary = router_api.get(state, "/v1/metrics/summary")
    except router_api.RouterError as exc:
        return Group(Text(f"edgeroute top: {exc}", style="red"))
    replica = targets.get("replica")
    title = Text(f"edgeroute at {state.get('endpoint')}, router replica {replica}, "
                 f"{time.strftime('%H:%M:%S')}", style="bold")
    return Group(title, targets_view(targets.get("targets", []), summary.get("observed", {})),
                 activity_view(summary), recent_view(summary),
                 Text(router_api.policy_line(targets.get("policy"))))


def run(args: argparse.Namespace) -> int:
    state = read_state(args.state_file)
    console = Console() if Console().is_terminal else Console(width=180)
    frames = 0
    with Live(frame(state), console=console, auto_refresh=False,
              screen=console.is_terminal) as live:
        try:
            while args.count is None or frames < args.count:
                live.update(frame(state), refresh=True)
                frames += 1
                if args.count is not None and frames >= args.count:
                    break
                time.sleep(args.interval)
        except KeyboardInterrupt:
            pass
    return 0


def top_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    top = sub.add_parser("top", help="a live terminal view of the router (like its status page)",
                         description="A live terminal view of the router: targets, the last "
                                     "minutes' placements and SLO attainment, recent decisions.")
    top.add_argument("--state-file", default=str(DEFAULT_STATE_FILE))
    top.add_argument("--interval", type=float, default=2.0, help="seconds between frames")
    top.add_argument("--count", type=int, help="stop after N frames")
    top.set_defaults(func=run)

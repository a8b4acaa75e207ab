"""The console report of a simulation: placement against the oracle, then each router's cost."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from edgeroute.tools.sim.engine import ORACLE


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.2f}%"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def placement_table(summary: dict[str, Any]) -> Table:
    table = Table(title="Placement (every arm over the same requests and draws)")
    for column in ("arm", "replicas", "attainment", "below oracle", "$ per 1,000",
                   "cost / oracle's (both met)", "p50 ms", "p99 ms", "cloud", "calls/req",
                   "hedged", "escalated", "fallback"):
        table.add_column(column, justify="left" if column == "arm" else "right")
    rows = [*summary["arms"].items(), (ORACLE, summary[ORACLE])]
    for name, arm in rows:
        vs = arm.get("vs_oracle", {})
        table.add_row(
            name, str(arm.get("replicas", "-")), _pct(arm["attainment"]),
            f"{vs['attainment_gap'] * 100:.2f} pp" if vs else "-",
            f"{arm['cost_per_1000_usd']:.6f}", _ratio(vs.get("cost_ratio_both_attained")),
            f"{arm['p50_ms']:.1f}", f"{arm['p99_ms']:.1f}", _pct(arm["cloud_share"]),
            f"{arm['calls_per_request']:.3f}", _pct(arm["hedged"]), _pct(arm["escalated"]),
            _pct(arm["fallbacks"]),
        )
    return table


def deadline_table(summary: dict[str, Any]) -> Table:
    deadlines = list(summary[ORACLE]["attainment_by_deadline_ms"])
    table = Table(title="Attainment by deadline class")
    table.add_column("arm")
    for d in deadlines:
        table.add_column(f"{d} ms", justify="right")
    for name, arm in [*summary["arms"].items(), (ORACLE, summary[ORACLE])]:
        table.add_row(name, *(_pct(arm["attainment_by_deadline_ms"][d]) for d in deadlines))
    return table


def router_table(summary: dict[str, Any]) -> Table:
    table = Table(title="Each deployment's router: decision time (wall clock), probes, upkeep")
    for column in ("arm", "decide p50 us", "decide p99 us", "views p50 us", "probes/s",
                   "per target/s", "ejections", "table rebuilds", "queue refused", "dropped"):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for name, arm in summary["arms"].items():
        d, v = arm["decide"], arm["views"]
        table.add_row(name, f"{d['p50_us']:.0f}", f"{d['p99_us']:.0f}", f"{v['p50_us']:.0f}",
                      f"{arm['probes_per_s']:.0f}", f"{arm['probes_per_target_per_s']:.2f}",
                      str(arm["ejections"]), f"{arm['table_rebuilds']:,}",
                      f"{arm['queue_refused']:,}", f"{arm['queue_dropped']:,}")
    return table


def render(summary: dict[str, Any], console: Console) -> None:
    s = summary["scenario"]
    console.print(
        f"[bold]{s['requests']:,} requests[/] over [bold]{s['sites']:,} sites[/] + cloud, "
        f"{summary['virtual_s']:.1f} s virtual at {s['rate_rps']:,.0f} rps, seed {s['seed']}; "
        f"sites down {summary['sites_down_share'] * 100:.1f}% of the time, cloud down "
        f"{'never' if s['cloud_outage_s'] is None else 'once'}")
    console.print(placement_table(summary))
    console.print(deadline_table(summary))
    console.print(router_table(summary))
    for w in summary["workers"]:
        console.print(f"worker {', '.join(w['arms'])}: wall {w['wall_s']:.1f} s, "
                      f"CPU {w['cpu_s']:.1f} s, peak RSS {w['peak_rss_mib']:.0f} MiB")
    console.print(
        f"[bold]wall {summary['wall_s']:.1f} s[/], CPU {summary['cpu_s']:.1f} s; "
        f"{summary['decisions']:,} decisions, {summary['decisions_per_wall_s']:,.0f} per "
        f"wall-clock second (every arm, events and learning included)")

"""What a load run means to a user: per-phase figures, a console report, JSON and a plot.

:func:`summarize` returns plain JSON-ready data (no NaN: an undefined figure,
such as the accuracy of a phase with no successful response, is ``None``)::

    {"phases": {name: Figures, ...}, "overall": Figures,
     "events": [{"t_s", "name"}], "event_errors": [{"name", "error"}]}

A request *attains its SLO* when it is answered 200 within its deadline and,
if it asked for ``quality: high``, by a ``cloud``-tier target: a fast answer
from the wrong model is a miss. Latency percentiles include failures at the
latency they took (a timeout counts as slow, not as absent), as in the SRE
book's treatment of errors in latency SLIs. A *useful answer* attains the SLO
and carries the right label: the rate the user gets, accuracy counted.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from edgeroute.tools.loadgen import LoadResult, Outcome, ProgressTick

PERCENTILES = (50, 95, 99)
TARGET_COLOURS = ("tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:cyan",
                  "tab:olive", "tab:pink", "tab:gray")
"""Red is kept for failures."""
PERCENTILE_GREYS = ("0.75", "0.5", "0.2")
CLIENT_LAG_WARNING_MS = 50.0
"""A p99 send lag above this means the load generator, not the router, set the pace."""


def attained_slo(outcome: Outcome) -> bool:
    return on_time(outcome) and (outcome.quality != "high" or outcome.tier == "cloud")


def useful(outcome: Outcome) -> bool:
    """On time, by the model asked for, and right."""
    return attained_slo(outcome) and outcome.predicted == outcome.label


def on_time(outcome: Outcome) -> bool:
    """Answered within the deadline at the client: what a plan's P(miss) predicts."""
    return outcome.ok and outcome.latency_ms <= outcome.deadline_ms


def calibration(outcomes: Sequence[Outcome]) -> dict[str, dict[str, Any]]:
    """Per deadline class: the mean P(miss) the router predicted for the requests a plan
    ran for, beside the share of them the client saw miss their deadline (no answer in
    time); ``gap_points``: observed less predicted, in percentage points. Requests refused
    before any decision carry no prediction and are counted apart (``unplanned``)."""
    classes: dict[float, list[Outcome]] = {}
    for outcome in outcomes:
        classes.setdefault(outcome.deadline_ms, []).append(outcome)
    found = {}
    for deadline, group in sorted(classes.items()):
        planned = [o for o in group if o.predicted_p_miss is not None]
        predicted = _ratio(sum(o.predicted_p_miss or 0.0 for o in planned), len(planned))
        observed = _ratio(sum(not on_time(o) for o in planned), len(planned))
        found[f"{deadline:g}"] = {
            "requests": len(group), "planned": len(planned),
            "unplanned": len(group) - len(planned),
            "predicted_p_miss": predicted, "observed_miss": observed,
            "gap_points": (None if predicted is None or observed is None
                           else (observed - predicted) * 100),
        }
    return found


def _percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {f"p{q}": None for q in PERCENTILES}
    points = np.percentile(np.asarray(values, dtype=float), PERCENTILES)
    return {f"p{q}": float(v) for q, v in zip(PERCENTILES, points, strict=True)}


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def figures(outcomes: Sequence[Outcome], duration_s: float) -> dict[str, Any]:
    """The figures of one group of requests sent over ``duration_s`` seconds."""
    n = len(outcomes)
    ok = [o for o in outcomes if o.ok]
    failures = Counter(str(o.status) for o in outcomes if not o.ok)
    placement = Counter(o.target for o in ok)
    overhead = [o.latency_ms - o.upstream_ms for o in ok if o.upstream_ms is not None]
    cost_total = float(sum(o.cost_usd for o in outcomes))
    cost_per_1k = _ratio(cost_total, len(ok))
    return {
        "requests": n,
        "ok": len(ok),
        "failed": n - len(ok),
        "failures_by_status": dict(sorted(failures.items())),
        "latency_ms": _percentiles([o.latency_ms for o in outcomes]),
        "slo_attainment": _ratio(sum(attained_slo(o) for o in outcomes), n),
        "placement": {
            str(target): {"count": count, "share": count / len(ok)}
            for target, count in sorted(placement.items(), key=lambda kv: str(kv[0]))
        },
        "accuracy": _ratio(sum(o.predicted == o.label for o in ok), len(ok)),
        "useful_rate": _ratio(sum(useful(o) for o in outcomes), n),
        "cost_usd_total": cost_total,
        "cost_per_1k_usd": None if cost_per_1k is None else cost_per_1k * 1000,
        "fallbacks": sum(o.fallback for o in ok),
        "hedged": sum(o.hedged for o in ok),
        "mean_attempts": _ratio(sum(o.attempts for o in ok), len(ok)),
        "router_overhead_p50_ms": float(np.median(overhead)) if overhead else None,
        "send_lag_p99_ms": _percentiles([o.send_lag_ms for o in outcomes])["p99"],
        "duration_s": duration_s,
        "achieved_rps": _ratio(n, duration_s),
        "goodput_rps": _ratio(len(ok), duration_s),
        "calibration": calibration(outcomes),
    }


def summarize(result: LoadResult) -> dict[str, Any]:
    by_phase: dict[str, list[Outcome]] = {name: [] for name, _, _ in result.phases}
    for outcome in result.outcomes:
        by_phase.setdefault(outcome.phase, []).append(outcome)
    bounds = {name: (start, end) for name, start, end in result.phases}
    phases = {}
    for name, outcomes in by_phase.items():
        start, end = bounds.get(name, (0.0, result.duration_s))
        phases[name] = {**figures(outcomes, end - start), "start_s": start, "end_s": end}
    total_s = sum(end - start for start, end in bounds.values()) or result.duration_s
    return {
        "phases": phases,
        "overall": figures(result.outcomes, total_s),
        "events": [{"t_s": t, "name": name} for t, name in result.events],
        "event_errors": [{"name": name, "error": error} for name, error in result.event_errors],
    }


def _num(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _failed(row: dict[str, Any]) -> str:
    detail = " ".join(f"{status}:{n}" for status, n in row["failures_by_status"].items())
    return f"{row['failed']} ({detail})" if detail else str(row["failed"])


def _figures_row(name: str, row: dict[str, Any]) -> list[str]:
    lat = row["latency_ms"]
    return [
        name, str(row["requests"]), _num(row["achieved_rps"]), _failed(row),
        _num(lat["p50"]), _num(lat["p95"]), _num(lat["p99"]), _pct(row["slo_attainment"]),
        _pct(row["accuracy"]), _num(row["cost_per_1k_usd"], ".3g"),
        _num(row["cost_usd_total"], ".3g"), str(row["fallbacks"]),
        _num(row["mean_attempts"], ".2f"), _num(row["router_overhead_p50_ms"], ".2f"),
    ]


def render(summary: dict[str, Any], console: Console) -> None:
    table = Table(title="Load test by phase", header_style="bold")
    for header in ("phase", "req", "rps", "failed", "p50 ms", "p95 ms", "p99 ms", "SLO",
                   "accuracy", "$/1k inf", "cost $", "fallbacks", "attempts", "overhead ms"):
        table.add_column(header, justify="left" if header in ("phase", "failed") else "right")
    for name, row in summary["phases"].items():
        table.add_row(*_figures_row(name, row))
    table.add_section()
    table.add_row(*_figures_row("overall", summary["overall"]), style="bold")
    console.print(table)

    rows = {**summary["phases"], "overall": summary["overall"]}
    targets = sorted({t for row in rows.values() for t in row["placement"]})
    mix = Table(title="Placement mix (answered requests)", header_style="bold")
    mix.add_column("phase")
    for target in targets:
        mix.add_column(target, justify="right")
    for name, row in rows.items():
        cells = [row["placement"].get(t) for t in targets]
        mix.add_row(name, *("-" if c is None else f"{c['count']} ({c['share']:.0%})"
                            for c in cells), style="bold" if name == "overall" else None)
    console.print(mix)
    for error in summary["event_errors"]:
        console.print(f"[red]event {error['name']!r} failed: {error['error']}[/red]")
    lag = summary["overall"]["send_lag_p99_ms"]
    if lag is not None and lag > CLIENT_LAG_WARNING_MS:
        console.print(f"[yellow]the load generator saturated: p99 send lag {lag:.0f} ms; "
                      "latencies include client-side delay, lower the rate[/yellow]")


def write_json(summary: dict[str, Any], path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return path


def _timeline(ax: Any, result: LoadResult) -> None:
    for i, (name, start, end) in enumerate(result.phases):
        ax.axvspan(start, end, color="0.93" if i % 2 == 0 else "0.86", zorder=0)
        ax.text((start + end) / 2, 1.01, name, transform=blended_transform_factory(
            ax.transData, ax.transAxes), ha="center", va="bottom", fontsize=9)
    targets = sorted({o.target for o in result.outcomes if o.ok and o.target is not None})
    for i, target in enumerate(targets):
        points = [o for o in result.outcomes if o.ok and o.target == target]
        ax.scatter([o.scheduled_s for o in points], [o.latency_ms for o in points], s=6,
                   alpha=0.6, color=TARGET_COLOURS[i % len(TARGET_COLOURS)], label=target)
    failed = [o for o in result.outcomes if not o.ok]
    if failed:
        ax.scatter([o.scheduled_s for o in failed], [o.latency_ms for o in failed], s=14,
                   marker="x", color="tab:red", label=f"failed ({len(failed)})")
    for t, name in result.events:
        ax.axvline(t, color="black", linestyle="--", linewidth=1)
        ax.text(t, 0.98, f" {name}", transform=blended_transform_factory(
            ax.transData, ax.transAxes), rotation=90, va="top", ha="right", fontsize=8)
    if result.outcomes and min(o.latency_ms for o in result.outcomes) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("scheduled send time (s)")
    ax.set_ylabel("latency (ms)")
    if targets or failed:
        ax.legend(loc="upper left", fontsize=8, markerscale=2)


def _percentile_bars(ax: Any, summary: dict[str, Any]) -> None:
    names = list(summary["phases"])
    x = np.arange(len(names))
    width = 0.27
    for i, q in enumerate(PERCENTILES):
        values = [summary["phases"][n]["latency_ms"][f"p{q}"] or 0.0 for n in names]
        ax.bar(x + (i - 1) * width, values, width, label=f"p{q}", color=PERCENTILE_GREYS[i])
    ax.set_xticks(x, names)
    ax.set_ylabel("latency (ms)")
    ax.set_title("latency percentiles per phase (failures included)", fontsize=10)
    ax.legend(fontsize=8)


def plot(result: LoadResult, summary: dict[str, Any], path: Path | str) -> Path:
    """One PNG: latency of every request over time (top) and percentiles per phase (bottom)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(12, 8), layout="constrained")
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, height_ratios=(3, 1.3))
    _timeline(top, result)
    _percentile_bars(bottom, summary)
    figure.savefig(path, dpi=110)
    return path


@contextmanager
def rich_progress(console: Console | None = None) -> Iterator[Callable[[ProgressTick], None]]:
    """A progress bar for :func:`edgeroute.tools.loadgen.run_load`'s ``progress`` callback."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("failed {task.fields[failed]}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("starting", total=None, failed=0)

        def update(tick: ProgressTick) -> None:
            bar.update(task, description=tick.phase, completed=tick.done, total=tick.total,
                       failed=tick.failed)

        yield update

"""Summaries of hand-built outcomes with answers worked out by hand."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from edgeroute.tools.figures import attained_slo, plot, render, rich_progress, summarize, write_json
from edgeroute.tools.loadgen import LoadResult, Outcome, ProgressTick

BASE = Outcome(phase="b", scheduled_s=0.0, latency_ms=10.0, status=200, deadline_ms=100.0,
               quality="any", label=1, predicted=1, target="edge-a", tier="edge", cost_usd=0.0,
               attempts=1, fallback=False, hedged=False, upstream_ms=5.0, error=None)


def outcome(**changes: Any) -> Outcome:
    return replace(BASE, **changes)


def failure(status: int, latency_ms: float, error: str) -> Outcome:
    return outcome(status=status, latency_ms=latency_ms, error=error, predicted=None, target=None,
                   tier=None, attempts=0, upstream_ms=None)


MIXED = (
    outcome(latency_ms=50.0, upstream_ms=45.0, cost_usd=1e-6, target="edge-a"),
    outcome(latency_ms=150.0, upstream_ms=140.0, cost_usd=1e-6, target="edge-b", attempts=2,
            fallback=True),
    outcome(latency_ms=20.0, upstream_ms=18.0, cost_usd=2e-5, target="cloud", tier="edge",
            quality="high", predicted=7),
    outcome(latency_ms=20.0, upstream_ms=15.0, cost_usd=2e-5, target="cloud", tier="cloud",
            quality="high", attempts=3),
    failure(503, 10.0, "overloaded"),
    failure(0, 2100.0, "timeout after 2.100 s"),
)


def result() -> LoadResult:
    steady = tuple(outcome(phase="a", scheduled_s=i / 100, latency_ms=float(i), deadline_ms=1000.0)
                   for i in range(1, 101))
    mixed = tuple(replace(o, scheduled_s=1.0 + i * 0.3) for i, o in enumerate(MIXED))
    events = ((1.2, "kill edge-a"), (2.5, "restart edge-a"))
    return LoadResult(outcomes=steady + mixed, events=events,
                      phases=(("a", 0.0, 1.0), ("b", 1.0, 3.0), ("quiet", 3.0, 4.0)),
                      duration_s=4.1)


def test_percentiles_include_every_request() -> None:
    latency = summarize(result())["phases"]["a"]["latency_ms"]
    assert latency == pytest.approx({"p50": 50.5, "p95": 95.05, "p99": 99.01})


def test_slo_attainment_needs_success_in_time_from_the_right_tier() -> None:
    assert [attained_slo(o) for o in MIXED] == [True, False, False, True, False, False]
    assert summarize(result())["phases"]["b"]["slo_attainment"] == pytest.approx(2 / 6)


def test_mixed_phase_figures() -> None:
    b = summarize(result())["phases"]["b"]
    assert (b["requests"], b["ok"], b["failed"]) == (6, 4, 2)
    assert b["failures_by_status"] == {"0": 1, "503": 1}
    assert b["accuracy"] == pytest.approx(0.75)
    assert b["cost_usd_total"] == pytest.approx(4.2e-5)
    assert b["cost_per_1k_usd"] == pytest.approx(4.2e-5 / 4 * 1000)
    assert b["placement"] == {
        "cloud": {"count": 2, "share": 0.5},
        "edge-a": {"count": 1, "share": 0.25},
        "edge-b": {"count": 1, "share": 0.25},
    }
    assert b["fallbacks"] == 1
    assert b["mean_attempts"] == pytest.approx(1.75)
    assert b["router_overhead_p50_ms"] == pytest.approx(5.0)
    assert b["achieved_rps"] == pytest.approx(3.0)
    assert b["goodput_rps"] == pytest.approx(2.0)


def test_overall_and_empty_phases() -> None:
    summary = summarize(result())
    overall, quiet = summary["overall"], summary["phases"]["quiet"]
    assert (overall["requests"], overall["ok"]) == (106, 104)
    assert overall["achieved_rps"] == pytest.approx(106 / 4.0)
    assert overall["placement"]["edge-a"]["count"] == 101
    assert quiet["requests"] == 0
    assert quiet["accuracy"] is None and quiet["latency_ms"]["p99"] is None
    assert summary["events"] == [{"t_s": 1.2, "name": "kill edge-a"},
                                 {"t_s": 2.5, "name": "restart edge-a"}]


def test_render_shows_every_phase_and_the_placement_mix() -> None:
    console = Console(file=io.StringIO(), width=200)
    summary = summarize(replace(result(), event_errors=(("restart edge-a", "refused"),)))
    render(summary, console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "saturated" not in text
    for expected in ("Load test by phase", "Placement mix", "quiet", "overall", "33.3%",
                     "0:1 503:1", "edge-b", "refused"):
        assert expected in text


def test_write_json_round_trips(tmp_path: Path) -> None:
    summary = summarize(result())
    path = write_json(summary, tmp_path / "out" / "summary.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(summary))


def test_plot_writes_a_png(tmp_path: Path) -> None:
    run = result()
    path = plot(run, summarize(run), tmp_path / "run.png")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000


def test_plot_survives_a_run_without_requests(tmp_path: Path) -> None:
    run = LoadResult(outcomes=(), events=(), phases=(("a", 0.0, 1.0),))
    path = plot(run, summarize(run), tmp_path / "empty.png")
    assert path.read_bytes().startswith(b"\x89PNG")


def test_rich_progress_accepts_ticks() -> None:
    console = Console(file=io.StringIO(), width=120)
    with rich_progress(console) as update:
        update(ProgressTick(sent=5, done=3, failed=1, phase="steady", total=10, elapsed_s=0.5))
        update(ProgressTick(sent=10, done=10, failed=1, phase="done", total=10, elapsed_s=1.0))
    assert "10/10" in console.file.getvalue()  # type: ignore[attr-defined]


def test_render_warns_when_the_client_was_the_bottleneck() -> None:
    lagging = replace(result(), outcomes=tuple(replace(o, send_lag_ms=400.0) for o in MIXED))
    console = Console(file=io.StringIO(), width=200)
    render(summarize(lagging), console)
    assert "load generator saturated" in console.file.getvalue()  # type: ignore[attr-defined]

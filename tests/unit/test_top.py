"""``edgeroute top``'s frame, drawn from a routing service's real views (no Ray, no HTTP)."""

from __future__ import annotations

from rich.console import Console, Group

from edgeroute.tools.top_cli import activity_view, recent_view, sparkline, targets_view
from tests.unit.fakes import FakeTransport
from tests.unit.test_service import route, service


def _text(*renderables: object) -> str:
    console = Console(record=True, width=200)
    console.print(Group(*renderables))  # type: ignore[arg-type]
    return console.export_text()


def test_sparkline_scales_and_leaves_empty_buckets_blank() -> None:
    assert sparkline([None, 0.0, 0.5, 1.0], 1.0) == " ▁▄█"
    assert sparkline([2.0, 4.0]) == "▄█"
    assert sparkline([None, None]) == "  "


def test_a_frame_shows_every_target_the_window_and_recent_decisions() -> None:
    svc, _ = service((FakeTransport("edge-a"), "edge", "small"),
                     (FakeTransport("cloud"), "cloud", "large"))
    for _ in range(5):
        route(svc)
    route(svc, "high")
    summary = svc.activity.summary()
    shown = _text(targets_view(svc.snapshot()["targets"], summary["observed"]),
                  activity_view(summary), recent_view(summary))
    assert "edge-a" in shown and "cloud" in shown
    assert "SLO attainment" in shown and "100.0%" in shown
    assert "placed: cloud" in shown
    assert "6 (0 failed, 0 shed)" in shown
    assert shown.count(" 200 ") >= 6

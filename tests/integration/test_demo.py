"""``edgeroute demo``, the main job, end to end in its quick form on its own ports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.stackkit import stack_config

pytestmark = pytest.mark.integration


def test_quick_demo_reports_every_phase_and_stops_cleanly(tmp_path: Path, models: object) -> None:
    config = tmp_path / "stack.yaml"
    config.write_text(yaml.safe_dump(stack_config(18600, (18701, 18702))))
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "edgeroute", "demo", "--quick", "--config", str(config),
         "--out", str(out)],
        capture_output=True, text=True, timeout=400,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Load test by phase" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert list(report["phases"]) == ["warm-up", "steady", "burst", "edge-kill"]
    overall = report["overall"]
    assert overall["requests"] > 100
    assert overall["ok"] >= 0.9 * overall["requests"], {
        name: phase["failures_by_status"] for name, phase in report["phases"].items()}
    assert overall["accuracy"] >= 0.94
    assert overall["cost_per_1k_usd"] > 0
    assert {"cloud", "edge-a"} <= set(overall["placement"])
    assert report["events"][0]["name"] == "kill edge-a"
    assert report["overhead"]["edge"]["direct_ms"]["p50"] > 0
    assert report["overhead"]["cloud"]["direct_ms"]["p50"] > 0
    assert (out / "report.png").stat().st_size > 10_000
    wine = report["models"]["wine"]
    assert wine["default"]["failed"] == 0 and wine["default"]["accuracy"] >= 0.9
    assert set(wine["quality=high"]["placement"]) == {"cloud"}
    assert "second model: wine" in result.stdout

"""``edgeroute bench`` end to end: the smoke scenario on its own ports, report checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgeroute.tools.bench.compare import ORACLE

pytestmark = pytest.mark.integration

SMOKE = Path(__file__).resolve().parents[2] / "infra" / "scenarios" / "smoke.yaml"


def test_smoke_scenario_reports_every_arm_and_the_oracle_bounds_them(
        tmp_path: Path, models: object) -> None:
    document = yaml.safe_load(SMOKE.read_text())
    document["stack"] = {"port": 18900, "edges": [{"name": "edge-a", "port": 18901},
                                                   {"name": "edge-b", "port": 18902}]}
    scenario = tmp_path / "smoke.yaml"
    scenario.write_text(yaml.safe_dump(document))
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "edgeroute", "bench", str(scenario),
                             "--out", str(out)], capture_output=True, text=True, timeout=500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Goals (this run)" in result.stdout

    report = json.loads((out / "report.json").read_text())
    arms = document["arms"]
    assert list(report["arms"]) == [*arms, ORACLE]
    requests = {report["arms"][a]["overall"]["requests"] for a in [*arms, ORACLE]}
    assert len(requests) == 1 and requests.pop() > 50, "every arm replays the same trace"
    oracle_slo = report["arms"][ORACLE]["overall"]["slo_attainment"]
    for arm in arms:
        figures = report["arms"][arm]["overall"]
        assert oracle_slo >= figures["slo_attainment"]
        assert set(report["arms"][arm]["phases"]) == {"ramp", "faults"}
        assert figures["decision_us"]["p50"] is not None
        events = [e["name"] for e in report["events"][arm]]
        assert "kill edge-a" in events and any(e.startswith("link cloud") for e in events)
    placements = report["arms"]["always-cloud"]["overall"]["placement"]
    assert placements["cloud"]["share"] > 0.5
    # always-edge falls back to the cloud only when no edge can answer (the kill).
    edge_only = report["arms"]["always-edge"]["overall"]["placement"]
    assert edge_only.get("cloud", {"share": 0.0})["share"] < 0.2
    assert {g["name"] for g in report["goals"]} >= {"cost vs always-cloud", "attainment vs oracle"}
    assert report["overhead"]["throughput"]["direct_rps"] > 0
    rows = (out / "requests.csv").read_text().splitlines()
    assert len(rows) == 1 + len(arms) * report["arms"][ORACLE]["overall"]["requests"]
    markdown = (out / "report.md").read_text()
    assert "| oracle |" in markdown and "## Goals" in markdown
    for plot in ("cdf.png", "cost_attainment.png", "timeline.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"

"""The Prometheus alert rules: valid, and each one fires on the series it is about.

``promtool`` (Debian's ``prometheus`` package; ``make system-deps`` installs it) checks
``infra/prometheus/alerts.yml`` and runs its unit tests, ``alerts_test.yml``, on
synthetic series: each alert fires in its scenario and stays silent, or clears, in
the healthy one next to it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

RULES = Path(__file__).resolve().parents[2] / "infra/prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool is not installed (make system-deps installs prometheus with apt)")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60,
                          cwd=RULES)


def test_promtool_accepts_the_alert_rules() -> None:
    rules = [r for g in yaml.safe_load((RULES / "alerts.yml").read_text())["groups"]
             for r in g["rules"]]
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_every_alert_fires_in_its_scenario_and_only_there() -> None:
    tested = {case["alertname"] for test in yaml.safe_load(
        (RULES / "alerts_test.yml").read_text())["tests"] for case in test["alert_rule_test"]}
    alerts = {r["alert"] for g in yaml.safe_load((RULES / "alerts.yml").read_text())["groups"]
              for r in g["rules"]}
    assert tested == alerts
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr

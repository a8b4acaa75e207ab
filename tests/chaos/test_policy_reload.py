"""Scenario 9: the policy is replaced live under load; an invalid one is refused."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from edgeroute.tools.loadgen import Phase
from tests.chaos.conftest import chaos_policy, load, record, summary, within_bounds
from tests.stackkit import RunningStack

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def _policy(stack: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeroute", "policy", *args,
                           "--state-file", str(stack.state_file)],
                          capture_output=True, text=True, timeout=120)


def _apply(stack: RunningStack, path: Path) -> subprocess.CompletedProcess[str]:
    return _policy(stack, "apply", str(path))


def test_policy_reload_under_load_fails_no_request(chaos_stack: RunningStack,
                                                   tmp_path: Path) -> None:
    stack = chaos_stack
    before = stack.admin_get("/v1/policy")
    document = before["policy"]
    document["policies"]["default"]["risk_budget"] = 0.02
    changed, invalid, original = (tmp_path / "changed.yaml", tmp_path / "invalid.yaml",
                                  tmp_path / "original.yaml")
    changed.write_text(yaml.safe_dump(document))
    invalid.write_text("policies:\n  default: {risk_budget: 2}\n")
    original.write_text(yaml.safe_dump(chaos_policy()))
    applied: list[subprocess.CompletedProcess[str]] = []
    took: list[float] = []

    def reload() -> None:
        started = time.monotonic()
        applied.append(_apply(stack, changed))
        took.append(time.monotonic() - started)

    try:
        result = load(stack, [Phase("reload", 10.0, 20.0, events=((1.0, "reload"),))],
                      deadline_ms=1000, at={"reload": reload})
        after = stack.admin_get("/v1/policy")
        refused = _apply(stack, invalid)
        kept = stack.admin_get("/v1/policy")["sha256"]
        shown, diffed = _policy(stack, "show"), _policy(stack, "diff", "--previous", "1")
        rolled = _policy(stack, "rollback")
        rolled_back = stack.admin_get("/v1/policy")
    finally:
        assert _apply(stack, original).returncode == 0
    figures = {**summary(result.outcomes, result.seen),
               "apply_s": round(took[0], 1) if took else None}
    record("9 policy reload under load", **figures)
    assert applied and applied[0].returncode == 0, applied
    assert figures["failed"] == 0, figures["errors"]
    assert after["sha256"] != before["sha256"]
    assert after["policy"]["policies"]["default"]["risk_budget"] == 0.02
    assert refused.returncode == 1 and "risk_budget" in refused.stdout
    assert kept == after["sha256"]
    assert shown.returncode == 0 and "risk_budget: 0.02" in shown.stdout, shown
    assert "-    risk_budget: 0.02" in diffed.stdout and "+    risk_budget: 0.01" in diffed.stdout
    assert rolled.returncode == 0, rolled
    assert rolled_back["sha256"] == before["sha256"]
    assert rolled_back["source"].startswith("edgeroute policy rollback")
    within_bounds(figures)

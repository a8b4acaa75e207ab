"""``edgeroute chaos``: every subcommand dispatches, and ``heal`` knows the configured link."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from edgeroute.config import EdgeWorker, LinkProfile, StackConfig
from edgeroute.tools import chaos
from edgeroute.tools.cli import main
from edgeroute.tools.serve_config import serve_config


def _state(tmp_path: Path, config: StackConfig) -> Path:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    state = {"endpoint": f"http://127.0.0.1:{port}", "admin_token": "t",
             "serve_config": serve_config(config, {}), "control_dir": str(tmp_path),
             "processes": []}
    path = tmp_path / "state.json"
    path.write_text(json.dumps(state))
    return path


def _config() -> StackConfig:
    edge = EdgeWorker(name="edge-a", port=9001,
                      link=LinkProfile(base_ms=4.0, jitter_ms=1.5, loss_probability=0.01))
    return StackConfig(edges=[edge])


def test_heal_restores_the_link_of_the_stack_config(tmp_path: Path) -> None:
    state: dict[str, Any] = json.loads(_state(tmp_path, _config()).read_text())
    assert chaos.configured_link(state, "edge-a") == LinkProfile(
        base_ms=4.0, jitter_ms=1.5, loss_probability=0.01).model_dump()
    assert chaos.configured_link(state, "cloud") == StackConfig().cloud.link.model_dump()
    assert chaos.configured_link(state, "edge-z") is None
    assert chaos.configured_link({"endpoint": "x"}, "edge-a") is None


@pytest.mark.parametrize("action", [["slow", "edge-a", "--base-ms", "50"],
                                    ["slow", "edge-a", "--base-ms", "50", "--jitter-ms", "2"],
                                    ["partition", "edge-a"], ["heal", "edge-a"],
                                    ["heal", "cloud"]])
def test_link_actions_reach_the_router(tmp_path: Path, action: list[str],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Each link action gets as far as calling the router (here: nothing listens), and says
    so in one line instead of a traceback."""
    code = main(["chaos", *action, "--state-file", str(_state(tmp_path, _config()))])
    assert code == 1
    assert "edgeroute chaos: the router did not answer" in capsys.readouterr().err

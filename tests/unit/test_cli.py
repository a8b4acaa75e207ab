"""The command line: clear errors for the cases a person hits first."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edgeroute.tools.cli import build_parser, main


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeroute", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_help_lists_every_command() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("models", "edge", "up", "demo", "link", "targets"):
        assert command in result.stdout


def test_link_without_a_running_stack_says_so(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="is `edgeroute up` running"):
        main(["link", "edge-a", "--base-ms", "5", "--state-file", str(tmp_path / "none.json")])


def test_partition_and_heal_are_exclusive() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["link", "edge-a", "--partition", "--heal"])


def test_up_refuses_a_busy_port_before_starting_anything(tmp_path: Path, models: object) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run("up", "--port", str(port), "--state-file", str(tmp_path / "s.json"))
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr and "already in use" in result.stderr
    assert not (tmp_path / "s.json").exists()

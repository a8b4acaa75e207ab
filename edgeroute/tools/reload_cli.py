"""``edgeroute reload [CONFIG]``: the stack config's edges and links applied to the running
stack by its supervisor (:mod:`edgeroute.tools.reload`); prints what changed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgeroute.tools.cli import DEFAULT_STATE_FILE, read_state


def run(args: argparse.Namespace) -> int:
    from edgeroute.tools import reload

    path = Path(args.config) if args.config else None
    if path is not None and not path.is_file():
        raise SystemExit(f"edgeroute reload: no file {path}")
    try:
        result = reload.request(read_state(args.state_file), path, args.timeout_s)
    except reload.ReloadError as exc:
        result = {"ok": False, "error": str(exc)}
    if not result["ok"]:
        print(f"edgeroute reload: {result['error']}", file=sys.stderr)
        return 1
    for line in result["changes"] or [f"{result['config_file']}: nothing to change"]:
        print(line)
    return 0


def reload_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    reload = sub.add_parser(
        "reload", help="apply the stack config's edges and links to the running stack, "
                       "without a restart")
    reload.add_argument("config", nargs="?",
                        help="stack YAML (default: the one the stack was started from)")
    reload.add_argument("--state-file", default=str(DEFAULT_STATE_FILE))
    reload.add_argument("--timeout-s", type=float, default=180.0,
                        help="how long to wait for the supervisor's answer")
    reload.set_defaults(func=run)

"""``edgeroute targets``: the router's live view of its targets, and the operator's actions.

* ``edgeroute targets [--json] [--watch SECONDS [--count N]]``: the table (or the raw
  ``GET /v1/targets``), once or refreshed until Ctrl-C (or ``N`` refreshes);
* ``edgeroute targets drain NAME``: no new request goes to ``NAME``; calls in flight
  finish (``in flight`` in the table counts them down); probes keep it measured;
* ``edgeroute targets undrain NAME``: it takes traffic again;
* ``edgeroute targets reset NAME``: forget its estimates and breaker history, as for a
  worker that joined anew (after replacing the hardware behind a name, say).

Each action reaches the router replica that answers it (its name is printed); with
several router replicas, repeat it until each has answered, or use the Serve config.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from edgeroute.tools.cli import DEFAULT_STATE_FILE, read_state

ACTIONS = ("drain", "undrain", "reset")


def _show(state: dict[str, Any], as_json: bool) -> None:
    from rich.console import Console

    from edgeroute.tools import router_api
    from edgeroute.tools.tables import targets_table

    snapshot = router_api.get(state, "/v1/targets")
    if as_json:
        print(json.dumps(snapshot, indent=2))
        return
    console = Console()
    if not console.is_terminal:  # a pipe or a file: keep every column readable
        console = Console(width=200)
    console.print(targets_table(snapshot.get("targets", []), snapshot.get("replica")))
    print(router_api.policy_line(snapshot.get("policy")))


def run(args: argparse.Namespace) -> int:
    from edgeroute.tools import router_api

    state = read_state(args.state_file)
    if args.action is not None:
        if args.name is None:
            raise SystemExit(f"edgeroute targets {args.action}: name the target")
        answer = router_api.call(state, "POST", f"/v1/targets/{args.name}/{args.action}")
        print(f"{args.name}: {args.action} done on router replica {answer.get('replica')} "
              f"(drained: {'yes' if answer.get('drained') else 'no'}, "
              f"in flight: {answer.get('in_flight')})")
        return 0
    refreshes = 0
    while True:
        if args.watch is not None and not args.json:
            print("\033[2J\033[H", end="")
        _show(state, args.json)
        refreshes += 1
        if args.watch is None or (args.count is not None and refreshes >= args.count):
            return 0
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return 0


def targets_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    targets = sub.add_parser(
        "targets", help="the router's live view of its targets; drain, undrain or reset one",
        description="The router's live view of its targets, and the operator's actions on one.")
    targets.add_argument("action", nargs="?", choices=ACTIONS,
                         help="drain: no new traffic, in-flight calls finish; undrain; "
                              "reset: forget what was learned about it")
    targets.add_argument("name", nargs="?", help="the target the action is for")
    targets.add_argument("--state-file", default=str(DEFAULT_STATE_FILE))
    targets.add_argument("--json", action="store_true")
    targets.add_argument("--watch", type=float, metavar="SECONDS",
                         help="refresh every SECONDS until Ctrl-C")
    targets.add_argument("--count", type=int, help="with --watch: stop after N refreshes")
    targets.set_defaults(func=run)

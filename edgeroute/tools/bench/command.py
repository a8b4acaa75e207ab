"""``edgeroute bench``: its options, and the run they ask for."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", help="scenario YAML, e.g. infra/scenarios/default.yaml")
    parser.add_argument("--out", help="report directory (default: out/bench/<scenario name>)")
    parser.add_argument("--port", type=int, help="router port (default from the scenario: 8000)")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run every arm N times, seeds seed..seed+N-1; reports the spread")
    parser.add_argument("--sim", action="store_true",
                        help="run the scenario in the simulator instead of on the real stack")
    parser.add_argument("--quick", action="store_true",
                        help="each phase cut to 3 s, no warm-up or overhead: checks structure")


def bench(args: argparse.Namespace) -> int:
    from edgeroute.tools.bench.run import run_bench
    from edgeroute.tools.bench.scenario import ScenarioError

    if args.repeat < 1:
        print("edgeroute bench: --repeat must be at least 1", file=sys.stderr)
        return 2
    try:
        return run_bench(Path(args.scenario), Path(args.out) if args.out else None, args.port,
                         simulate=args.sim, repeat=args.repeat, quick=args.quick)
    except ScenarioError as exc:
        print(f"edgeroute bench: {exc}", file=sys.stderr)
        return 2

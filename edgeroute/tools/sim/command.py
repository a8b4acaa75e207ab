"""``edgeroute simulate``: its options, and the run they ask for."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_BASELINES = ("always-edge", "always-cloud")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1], metavar="N",
                        help="router replicas, each learning from its own traffic; several "
                             "values (1 4) simulate one router deployment each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate-rps", type=float, default=None,
                        help="requests per virtual second, all sites together (20,000)")
    parser.add_argument("--baselines", nargs="*", default=list(DEFAULT_BASELINES),
                        metavar="POLICY", help="named baseline policies to run beside the router")
    parser.add_argument("--workers", type=int, default=2,
                        help="processes the arms are split over")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON")


def simulate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from edgeroute.tools.sim.console import render
    from edgeroute.tools.sim.engine import ArmSpec
    from edgeroute.tools.sim.runner import run
    from edgeroute.tools.sim.synthetic import Scenario
    from router.policy import PolicyDocument

    known = PolicyDocument().policies
    unknown = [b for b in args.baselines if b not in known]
    if unknown or min(args.replicas) < 1:
        raise SystemExit(f"edgeroute simulate: unknown policies {unknown} (known: "
                         f"{', '.join(known)}) or replicas below 1")
    extra = {} if args.rate_rps is None else {"rate_rps": args.rate_rps}
    try:
        scenario = Scenario(sites=args.sites, requests=args.requests, seed=args.seed, **extra)
    except ValueError as exc:
        raise SystemExit(f"edgeroute simulate: {exc}") from exc
    arms = [ArmSpec("router" if n == 1 else f"router x{n}", "default", n)
            for n in dict.fromkeys(args.replicas)]
    arms += [ArmSpec(name, name) for name in dict.fromkeys(args.baselines)]
    console = Console()
    if not console.is_terminal:
        console = Console(width=170)
    summary = run(scenario, arms, workers=args.workers, console=console)
    render(summary, console)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0

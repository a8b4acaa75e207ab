"""The ``edgeroute`` command line.

Subcommands import what they need when they run, so ``edgeroute edge`` starts without Ray.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeroute.config import StackConfig

DEFAULT_STATE_FILE = Path(".edgeroute/state.json")


def _models(args: argparse.Namespace) -> int:
    from rich.console import Console

    from edgeroute.models.store import ensure_models
    from edgeroute.tools.tables import card_table

    console = Console()
    directory = Path(args.dir) if args.dir else None
    models = ensure_models(directory, progress=console.print, force=args.force)
    console.print(card_table(models))
    console.print(f"models in {models.directory}")
    if directory is None:
        from edgeroute.models.wine import ensure_wine
        from edgeroute.tools.tables import wine_table

        wine = ensure_wine(progress=console.print, force=args.force)
        console.print(wine_table(wine))
        console.print(f"wine models in {wine.directory}")
    return 0


def _edge(args: argparse.Namespace) -> int:
    from edge.server import serve
    from edgeroute.models.store import ensure_models, model_path
    from edgeroute.tools.stack import die_with_parent

    die_with_parent()
    path = Path(args.model)
    if not path.exists():
        path = model_path(args.model, ensure_models().directory)
    hosted = json.loads(args.models_json) if args.models_json else None
    serve(str(path), host=args.host, port=args.port, name=args.name,
          concurrency=args.concurrency, max_queue=args.max_queue,
          service_delay_ms=args.service_delay_ms, join=_fleet_agent(args), hosted=hosted)
    return 0


def _fleet_agent(args: argparse.Namespace) -> Any:
    """With ``--join``: a factory of the agent that keeps this worker in the router's fleet."""
    import logging
    import os
    import socket

    if not args.join:
        return None
    token = args.fleet_token or os.environ.get("EDGEROUTE_FLEET_TOKEN")
    if not token:
        raise SystemExit("edgeroute edge: --join needs --fleet-token or EDGEROUTE_FLEET_TOKEN")
    from edge.fleet import FleetAgent

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    host = socket.getfqdn() if args.host in ("0.0.0.0", "::") else args.host
    member = {
        "url": args.advertise_url or f"http://{host}:{args.port}",
        "tier": "edge",
        "quality": "large" if Path(args.model).name.startswith("teacher") else "small",
        "concurrency": args.concurrency,
        "link": {field: getattr(args, f"link_{field}") for field in (
            "base_ms", "jitter_ms", "spike_probability", "spike_multiplier", "loss_probability")},
    }
    if args.models_json:
        member["models"] = [m["name"] for m in json.loads(args.models_json)]
    return lambda ready: FleetAgent(args.join, token, args.name, member,
                                    interval_s=args.heartbeat_interval_s, ready=ready)


def _fleet(args: argparse.Namespace) -> int:
    from rich.console import Console

    from edgeroute.tools import router_api
    from edgeroute.tools.tables import fleet_table

    document = router_api.get(read_state(args.state_file), "/v1/fleet", admin=False)
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        Console().print(fleet_table(document.get("members", []), document.get("ttl_ms", 0)))
    return 0


def _config_path(args: argparse.Namespace) -> Path | None:
    from edgeroute.config import DEFAULT_CONFIG_PATH

    path = Path(args.config) if args.config else None
    return DEFAULT_CONFIG_PATH if path is None and DEFAULT_CONFIG_PATH.exists() else path


def _load_config(args: argparse.Namespace) -> StackConfig:
    """The stack config with command-line overrides, and admin and fleet tokens for this run."""
    import secrets

    from edgeroute.config import StackConfig

    document = StackConfig.load(_config_path(args)).model_dump()
    if args.port is not None:
        document["port"] = args.port
    for token in ("admin_token", "ops_token", "fleet_token"):
        document["router"][token] = document["router"][token] or secrets.token_urlsafe(24)
    return StackConfig.model_validate(document)


def _load_policy(args: argparse.Namespace) -> dict[str, object]:
    """The policy document to start with, validated (exits with the reasons if invalid)."""
    from edgeroute.tools.policy_cli import PolicyError, load
    from router.policy import DEFAULT_POLICY_PATH, PolicyDocument

    path = Path(args.policy) if args.policy else None
    if path is None and DEFAULT_POLICY_PATH.exists():
        path = DEFAULT_POLICY_PATH
    try:
        document = load(path) if path else PolicyDocument()
    except PolicyError as exc:
        raise SystemExit(str(exc)) from None
    return document.model_dump(mode="json")


def _up(args: argparse.Namespace) -> int:
    from edgeroute.models.store import ensure_models
    from edgeroute.tools.stack import Stack, StackError

    config = _load_config(args)
    policy = _load_policy(args)
    models = ensure_models(progress=print)
    stop = threading.Event()

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    def take_signals(handler: Any) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, handler)

    try:
        stack = Stack(config, models, policy=policy, state_file=Path(args.state_file))
    except StackError as exc:
        print(f"edgeroute up: {exc}", file=sys.stderr)
        return 1
    take_signals(interrupt)
    path = _config_path(args)
    stack.config_file, stack.port_override = path and path.resolve(), args.port
    try:
        stack.start()
        take_signals(lambda *_: stop.set())  # ray.init installed its own SIGTERM handler
        print(f"state file: {args.state_file}")
        print("press Ctrl-C to stop", flush=True)
        while not stop.wait(0.5):
            pass
    except StackError as exc:
        print(f"edgeroute up: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        take_signals(signal.SIG_IGN)
        print("stopping ...", flush=True)
        stack.stop()
        print("stopped", flush=True)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from edgeroute.tools.demo import run_demo

    return run_demo(_load_config(args), _load_policy(args), out_dir=Path(args.out),
                    quick=args.quick)


def read_state(path: str) -> dict[str, object]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SystemExit(f"no state file at {path}: is `edgeroute up` running?") from None


def _chaos(args: argparse.Namespace) -> int:
    from edgeroute.tools import chaos

    state = read_state(args.state_file)
    try:
        if args.action == "slow":
            print(json.dumps(chaos.slow(state, args.name, args.base_ms, args.jitter_ms)))
        elif args.action in ("partition", "heal"):
            print(json.dumps(getattr(chaos, args.action)(state, args.name)))
        else:
            print(getattr(chaos, args.action)(state, args.name))
    except chaos.ChaosError as exc:
        print(f"edgeroute chaos: {exc}", file=sys.stderr)
        return 1
    return 0


def _chaos_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    chaos = sub.add_parser("chaos", help="inject faults into a running stack")
    actions = chaos.add_subparsers(dest="action", required=True)
    helps = {
        "kill": "SIGKILL an edge worker (the supervisor restarts it after its delay)",
        "hang": "SIGSTOP an edge worker (port open, no answers)",
        "resume": "SIGCONT a hung edge worker",
        "unavailable": "make an edge worker answer every inference 503 (health still passes)",
        "available": "end 'unavailable'",
        "down": "stop an edge worker and keep it down",
        "up": "let a held-down edge worker start again",
        "restart": "restart an edge worker now",
        "slow": "slow a target's link (undo: heal)",
        "partition": "cut a target's link (attempts hang until their timeout; undo: heal)",
        "heal": "restore the target's link from the stack config (ends slow and partition)",
    }
    for action, text in helps.items():
        parser = actions.add_parser(action, help=text)
        parser.add_argument("name", help="edge worker or target name")
        parser.add_argument("--state-file", default=str(DEFAULT_STATE_FILE))
        if action == "slow":
            parser.add_argument("--base-ms", type=float, required=True)
            parser.add_argument("--jitter-ms", type=float, default=None,
                                help="jitter of the slowed link (default: keep the current)")
    chaos.set_defaults(func=_chaos)


def _link(args: argparse.Namespace) -> int:
    from edgeroute.tools import chaos

    state = read_state(args.state_file)
    changes = {k: v for k, v in {
        "base_ms": args.base_ms, "jitter_ms": args.jitter_ms,
        "spike_probability": args.spike_probability, "spike_multiplier": args.spike_multiplier,
        "loss_probability": args.loss_probability,
        "partitioned": True if args.partition else False if args.heal else None,
    }.items() if v is not None}
    try:
        print(json.dumps(chaos.set_link(state, args.target, changes), indent=2))
    except chaos.ChaosError as exc:
        print(f"edgeroute link: {exc}", file=sys.stderr)
        return 1
    return 0


def _infra_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``edgeroute infra ...``: parsed here, carried out by :func:`.infra_gen.main`."""

    def run(args: argparse.Namespace) -> int:
        from edgeroute.tools.infra_gen import main as infra_main

        return infra_main(args)

    infra = sub.add_parser("infra", help="print deployment files and the policy reference")
    actions = infra.add_subparsers(dest="action", required=True)
    serve_cfg = actions.add_parser("serve-config",
                                   help="print the Ray Serve deploy YAML for a stack and policy")
    serve_cfg.add_argument("--config", help="stack YAML (default: infra/stack.yaml if present, "
                                            "else the embedded default)")
    serve_cfg.add_argument("--policy", help="policy YAML (default: infra/policy.yaml if "
                                            "present, else the embedded default)")
    actions.add_parser("policy-reference", help="print the policy fields as Markdown")
    generate = actions.add_parser("generate", help="rewrite the checked-in generated files "
                                                   "(run from the repository root)")
    generate.add_argument("--check", action="store_true",
                          help="write nothing; exit 1 listing the files that are out of date")
    infra.set_defaults(func=run)


def _stack_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="stack YAML (default: infra/stack.yaml if present, "
                                          "else the embedded default)")
    parser.add_argument("--port", type=int, help="router port (default from the config: 8000)")
    parser.add_argument("--policy", help="policy YAML (default: infra/policy.yaml if present, "
                                         "else the embedded default)")


def build_parser() -> argparse.ArgumentParser:
    from edgeroute.tools.policy_cli import policy_parser

    parser = argparse.ArgumentParser(
        prog="edgeroute", description="Edge-versus-cloud placement router for ML inference."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="build and inspect the bundled models (digits, wine)")
    models_sub = models.add_subparsers(dest="action", required=True)
    build = models_sub.add_parser("build", help="build the models (cached; --force rebuilds)")
    build.add_argument("--dir", help="output directory (default: the model cache)")
    build.add_argument("--force", action="store_true")
    build.set_defaults(func=_models)

    edge = sub.add_parser("edge", help="run one edge worker (OIP v2 server)")
    edge.add_argument("--model", default="student-int8",
                      help="ONNX file, or a model name: student, student-int8, teacher")
    edge.add_argument("--models-json", help="the models to host, a JSON list of "
                      "{name, path, sha256, input_range} (the stack passes it); default: "
                      "--model as digits")
    edge.add_argument("--host", default="127.0.0.1")
    edge.add_argument("--port", type=int, default=8101)
    edge.add_argument("--name", default="edge")
    edge.add_argument("--concurrency", type=int, default=1)
    edge.add_argument("--service-delay-ms", type=float, default=0.0,
                      help="emulated extra compute per request (a slower device)")
    edge.add_argument("--max-queue", type=int, default=32)
    edge.add_argument("--join", metavar="ROUTER_URL",
                      help="join this router's edge fleet (heartbeats; leaves on shutdown)")
    edge.add_argument("--fleet-token", help="the router's fleet token "
                                            "(default: $EDGEROUTE_FLEET_TOKEN)")
    edge.add_argument("--advertise-url", help="where the router reaches this worker "
                                              "(default: http://HOST:PORT)")
    edge.add_argument("--heartbeat-interval-s", type=float, default=1.0,
                      help="at most this long between heartbeats (the router may ask for less)")
    edge.add_argument("--link-base-ms", type=float, default=0.0,
                      help="emulated link the router applies to this worker (local tests)")
    for option, default in (("jitter-ms", 0.0), ("spike-probability", 0.0),
                            ("spike-multiplier", 1.0), ("loss-probability", 0.0)):
        edge.add_argument(f"--link-{option}", type=float, default=default)
    edge.set_defaults(func=_edge)

    up = sub.add_parser("up", help="start the local stack and serve until Ctrl-C")
    _stack_options(up)
    up.add_argument("--state-file", default=str(DEFAULT_STATE_FILE))
    up.set_defaults(func=_up)

    demo = sub.add_parser("demo", help="start the stack, drive a minute of load, report")
    _stack_options(demo)
    demo.add_argument("--out", default="out/demo", help="where the report and plot go")
    demo.add_argument("--quick", action="store_true", help="a 15 s run instead of a minute")
    demo.set_defaults(func=_demo)

    bench = sub.add_parser("bench", help="run a benchmark scenario: every arm on the real stack, "
                                         "the oracle, goals, report and plots")
    from edgeroute.tools.bench import command as bench_command

    bench_command.add_arguments(bench)
    bench.set_defaults(func=bench_command.bench)

    from edgeroute.tools.sim.command import add_arguments, simulate

    sim = sub.add_parser("simulate", help="discrete-event simulation in virtual time: the real "
                                          "decision code over 1,000 synthetic sites, vs the oracle")
    add_arguments(sim)
    sim.set_defaults(func=simulate)

    link = sub.add_parser("link", help="change a target's emulated link on a running stack")
    link.add_argument("target")
    link.add_argument("--state-file", default=str(DEFAULT_STATE_FILE))
    for flag in ("base-ms", "jitter-ms", "spike-probability", "spike-multiplier",
                 "loss-probability"):
        link.add_argument(f"--{flag}", type=float)
    cut = link.add_mutually_exclusive_group()
    cut.add_argument("--partition", action="store_true", help="blackhole the link")
    cut.add_argument("--heal", action="store_true", help="end a partition")
    link.set_defaults(func=_link)

    from edgeroute.tools.jobs_cli import jobs_parser
    from edgeroute.tools.reload_cli import reload_parser
    from edgeroute.tools.targets_cli import targets_parser
    from edgeroute.tools.top_cli import top_parser
    jobs_parser(sub)
    reload_parser(sub)
    targets_parser(sub)
    top_parser(sub)

    fleet = sub.add_parser("fleet", help="the edge workers that joined the running router")
    fleet_actions = fleet.add_subparsers(dest="action", required=True)
    fleet_list = fleet_actions.add_parser("list", help="members and their last heartbeats")
    fleet_list.add_argument("--state-file", default=str(DEFAULT_STATE_FILE))
    fleet_list.add_argument("--json", action="store_true")
    fleet.set_defaults(func=_fleet)
    policy_parser(sub)
    _chaos_parser(sub)
    _infra_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from edgeroute.tools.router_api import RouterError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except RouterError as exc:
        print(f"edgeroute {args.command}: {exc}", file=sys.stderr)
        return 1

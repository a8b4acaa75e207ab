"""What the client-to-router leg costs: HAProxy direct ingress against Serve's Python proxy.

Run from the repository root: ``.venv/bin/python -m benchmarks.ingress``
(``--quick`` for fewer requests, ``--replicas 1,2,4`` to add throughput rows for more
router replicas behind HAProxy, ``--herd 100,400`` for the herd sizes, ``--json PATH`` to
keep the figures).

Each configuration starts its own local stack (a fresh Ray: the ingress is chosen when
Ray starts) in a child process, one after another, never two at once. In each, links
zeroed, the same edge worker and the cloud are called directly and through the router,
alternating one call of each (:func:`edgeroute.tools.overhead.measure`), then both are
driven closed-loop at saturation (:func:`edgeroute.tools.overhead.throughput`). The
differences are what the hop adds: ingress, router, transport. Last, herds of requests
written at once with a 300 ms deadline (:func:`edgeroute.tools.herd.send_herd`): what
their clients saw, answered or refused, and how fast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

PORT, EDGE_PORTS = 18400, (18401, 18402)
TOKEN = "bench-ingress-admin"
HERD_DEADLINE_MS = 300.0
POLICY = Path("infra/policy.yaml")
"""It names ``always-edge``, which the saturation run asks for."""


def _config(ingress: str, replicas: int) -> Any:
    from edgeroute.config import StackConfig

    zero = {"base_ms": 0.0, "jitter_ms": 0.0}
    return StackConfig.model_validate({
        "port": PORT, "ingress": ingress,
        "router": {"num_replicas": replicas, "admin_token": TOKEN},
        "cloud": {"link": zero},
        "edges": [{"name": name, "port": port, "link": zero}
                  for name, port in zip(("edge-a", "edge-b"), EDGE_PORTS, strict=True)],
    })


def child(ingress: str, replicas: int, requests: int, duration_s: float,
          herds: tuple[int, ...] = ()) -> dict[str, Any]:
    """One stack, measured; runs in its own process (Ray is imported once the stack has
    started it: Ray reads its authentication mode at import)."""
    from edgeroute.dataset import digits_split
    from edgeroute.models.store import ensure_models
    from edgeroute.tools.herd import herd_figures, send_herd
    from edgeroute.tools.overhead import measure, throughput
    from edgeroute.tools.serve_config import APP_NAME
    from edgeroute.tools.stack import Stack

    config = _config(ingress, replicas)
    rows = digits_split().x_test
    with tempfile.TemporaryDirectory() as tmp:
        policy = yaml.safe_load(POLICY.read_text())
        stack = Stack(config, ensure_models(), policy=policy,
                      state_file=Path(tmp) / "state.json", say=lambda *_: None)
        try:
            stack.start()
            figures: dict[str, Any] = {"ingress": ingress, "replicas": replicas}
            if requests:
                from ray import serve

                handle = serve.get_deployment_handle(config.cloud.name, app_name=APP_NAME)
                edge = config.edges[0]
                figures["hop"] = measure(config.endpoint, TOKEN, rows, edge_name=edge.name,
                                         edge_url=edge.url, cloud_name=config.cloud.name,
                                         cloud_handle=handle, n=requests)
            edges = {e.name: e.url for e in config.edges}
            figures["throughput"] = throughput(config.endpoint, TOKEN, rows, edges,
                                               duration_s=duration_s)
            figures["herd"] = {}
            for size in herds:
                answers = asyncio.run(send_herd(config.endpoint, rows, size, HERD_DEADLINE_MS))
                figures["herd"][size] = herd_figures(answers, HERD_DEADLINE_MS)
                time.sleep(3)  # the next herd meets a settled router
        finally:
            stack.stop()
    return figures


def _run_child(ingress: str, replicas: int, requests: int, duration_s: float,
               console: Console, herds: str = "") -> dict[str, Any]:
    console.print(f"[bold]{ingress}[/bold], {replicas} router replica(s) ...")
    argv = [sys.executable, "-m", "benchmarks.ingress", "--child", ingress,
            "--child-replicas", str(replicas), "--requests", str(requests),
            "--duration-s", str(duration_s), "--herd", herds]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{ingress} x{replicas} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(lines[-1]))


def _table(runs: list[dict[str, Any]]) -> Table:
    table = Table(title="Client-to-router leg: direct vs routed (links zeroed, same run)")
    for column in ("ingress", "replicas", "target", "direct p50", "routed p50", "hop p50",
                   "direct p99", "routed p99", "hop p99", "direct rps", "routed rps", "ratio"):
        table.add_column(column, justify="left" if column in ("ingress", "target") else "right")
    for run in runs:
        tp = run["throughput"]
        rates = (f"{tp['direct_rps']:.0f}", f"{tp['routed_rps']:.0f}",
                 f"{tp['ratio']:.2f}" if tp["ratio"] is not None else "-")
        hops = run.get("hop", {}) or {"-": None}
        for kind, row in hops.items():
            if row is None or "routed_ms" not in row:
                table.add_row(run["ingress"], str(run["replicas"]), kind, *["-"] * 6, *rates)
                continue
            d, r = row["direct_ms"], row["routed_ms"]
            table.add_row(run["ingress"], str(run["replicas"]), f"{kind} ({row['target']})",
                          f"{d['p50']:.2f}", f"{r['p50']:.2f}", f"+{r['p50'] - d['p50']:.2f}",
                          f"{d['p99']:.2f}", f"{r['p99']:.2f}", f"+{r['p99'] - d['p99']:.2f}",
                          *rates)
    return table


def _herd_table(runs: list[dict[str, Any]]) -> Table:
    table = Table(title=f"Herds written at once, deadline {HERD_DEADLINE_MS:.0f} ms "
                        "(times at the client)")
    for column in ("ingress", "herd", "200 in time", "200 late", "shed 503/429", "504",
                   "shed p50", "shed p99", "shed p99 at router"):
        table.add_column(column, justify="left" if column == "ingress" else "right")
    for run in runs:
        for size, f in run.get("herd", {}).items():
            served = f["statuses"].get("200", 0)
            table.add_row(run["ingress"], str(size), str(f["answered_in_time"]),
                          str(served - f["answered_in_time"]), str(f["shed"]),
                          str(f["statuses"].get("504", 0)), f"{f['shed_client_p50_ms']} ms",
                          f"{f['shed_client_p99_ms']} ms", f"{f['shed_router_p99_ms']} ms")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 requests, 3 s saturation")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--replicas", default="1",
                        help="router replica counts for HAProxy throughput rows, e.g. 1,2,4")
    parser.add_argument("--herd", default="100,400",
                        help="herd sizes sent at once after the hop runs ('' for none)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--child", choices=("haproxy", "proxy"), help=argparse.SUPPRESS)
    parser.add_argument("--child-replicas", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.duration_s = 50, 3.0
    if args.child:
        herds = tuple(int(n) for n in args.herd.split(",") if n)
        print(json.dumps(child(args.child, args.child_replicas, args.requests,
                               args.duration_s, herds)), flush=True)
        return 0
    console = Console(width=160)
    runs = [_run_child(mode, 1, args.requests, args.duration_s, console, args.herd)
            for mode in ("haproxy", "proxy")]
    for replicas in sorted({int(r) for r in args.replicas.split(",")} - {1}):
        runs.append(_run_child("haproxy", replicas, 0, args.duration_s, console))
    console.print(_table(runs))
    console.print(_herd_table(runs))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(runs, indent=2) + "\n")
        console.print(f"figures: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

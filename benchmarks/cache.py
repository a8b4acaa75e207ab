"""What the router's response cache buys on a trace with repeats: hit rate, cost, latency.

Run from the repository root: ``.venv/bin/python -m benchmarks.cache`` (``--quick`` for a
short trace, ``--replicas 1,2`` for the router replica counts to measure, ``--json PATH``
to keep the figures).

Each replica count starts its own local stack (the embedded default: two edge workers,
the cloud, emulated links) in a child process, one after another, with the policy of
``infra/policy.yaml`` and the cache enabled. The trace is drawn once from a seed: Poisson
arrivals, each input drawn from a catalogue of digits by a Zipf law over their ranks (a
few inputs are asked often, most rarely). It is sent twice, open loop, with latency taken
from each request's scheduled send time: first with ``Cache-Control: no-store`` on every
request (the cache is neither read nor written: "off"), then without it ("on", from an
empty cache). Both arms see the same stack, the same inputs in the same order.
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

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

PORT, EDGE_PORTS = 19750, (19751, 19752)
TOKEN = "bench-cache-admin"
POLICY = Path("infra/policy.yaml")
DEADLINE_MS = 250.0


def trace(requests: int, rate_rps: float, catalogue: int, zipf_s: float,
          seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Send times (s from the start) and catalogue indices of the trace."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(1.0 / rate_rps, requests))
    weights = 1.0 / np.arange(1, catalogue + 1) ** zipf_s
    picks = rng.choice(catalogue, size=requests, p=weights / weights.sum())
    return times, picks


async def send(endpoint: str, rows: np.ndarray, times: np.ndarray, picks: np.ndarray,
               headers: dict[str, str]) -> list[dict[str, Any]]:
    """Each request at its time whatever the others do; bounded by deadline + 5 s."""
    import httpx

    outcomes: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=DEADLINE_MS / 1000 + 5,
                                 limits=httpx.Limits(max_connections=256)) as client:

        async def one(at: float, row: int) -> None:
            body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                "data": rows[row].tolist()}],
                    "parameters": {"deadline_ms": DEADLINE_MS}}
            try:
                response = await client.post(f"{endpoint}/v2/models/digits/infer", json=body,
                                              headers=headers)
                status = response.status_code
                params = response.json().get("parameters", {}) if status == 200 else {}
            except httpx.HTTPError:
                status, params = 0, {}
            outcomes.append({"status": status, "latency_ms": (loop.time() - start - at) * 1000,
                             "cost_usd": params.get("cost_usd", 0.0),
                             "cache_hit": bool(params.get("cache_hit")),
                             "coalesced": bool(params.get("coalesced")),
                             "tier": params.get("tier")})

        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for at, row in zip(times, picks, strict=True):
            await asyncio.sleep(max(start + at - loop.time(), 0))
            tasks.append(asyncio.create_task(one(float(at), int(row))))
        await asyncio.gather(*tasks)
    return outcomes


def summary(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(outcomes)
    ok = [o for o in outcomes if o["status"] == 200]
    latency = np.array([o["latency_ms"] for o in ok]) if ok else np.array([np.nan])
    cost = sum(o["cost_usd"] for o in ok)
    hits = sum(o["cache_hit"] for o in ok)
    coalesced = sum(o["coalesced"] for o in ok)
    return {
        "requests": n, "ok": len(ok),
        "hit_rate": hits / n, "coalesced_rate": coalesced / n,
        "upstream_requests": len(ok) - hits - coalesced,
        "cost_usd": cost, "usd_per_1k": 1000 * cost / n,
        "p50_ms": float(np.percentile(latency, 50)), "p99_ms": float(np.percentile(latency, 99)),
        "slo_attainment": sum(o["latency_ms"] <= DEADLINE_MS for o in ok) / n,
    }


def child(replicas: int, requests: int, rate_rps: float, catalogue: int, zipf_s: float,
          seed: int) -> dict[str, Any]:
    """One stack, both arms; runs in its own process (Ray reads its authentication mode at
    import, so it is imported only once the stack has started it)."""
    from edgeroute.config import StackConfig
    from edgeroute.dataset import digits_split
    from edgeroute.models.store import ensure_models
    from edgeroute.tools.stack import Stack

    document = StackConfig().model_dump(mode="json")
    document["port"] = PORT
    document["router"].update(num_replicas=replicas, admin_token=TOKEN)
    for edge, port in zip(document["edges"], EDGE_PORTS, strict=True):
        edge["port"] = port
    config = StackConfig.model_validate(document)
    rows = digits_split().x_test
    catalogue = min(catalogue, len(rows))
    times, picks = trace(requests, rate_rps, catalogue, zipf_s, seed)
    warm_times, warm_picks = trace(min(200, requests), rate_rps, len(rows), 0.0, seed + 1)
    policy = yaml.safe_load(POLICY.read_text())
    policy["cache"] = {"enabled": True, "ttl_s": 3600, "max_bytes": 64 << 20}
    figures: dict[str, Any] = {"replicas": replicas, "requests": requests,
                               "rate_rps": rate_rps, "catalogue": catalogue, "zipf_s": zipf_s,
                               "distinct_inputs": len(set(picks.tolist()))}
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(config, ensure_models(), policy=policy,
                      state_file=Path(tmp) / "state.json", say=lambda *_: None)
        try:
            stack.start()
            off = {"cache-control": "no-store"}
            asyncio.run(send(config.endpoint, rows, warm_times, warm_picks, off))
            for arm, headers in (("off", off), ("on", {})):
                started = time.monotonic()
                outcomes = asyncio.run(send(config.endpoint, rows, times, picks, headers))
                figures[arm] = {**summary(outcomes),
                                "wall_s": round(time.monotonic() - started, 1)}
        finally:
            stack.stop()
    return figures


def _run_child(replicas: int, args: argparse.Namespace, console: Console) -> dict[str, Any]:
    console.print(f"[bold]{replicas} router replica(s)[/bold] ...")
    argv = [sys.executable, "-m", "benchmarks.cache", "--child", str(replicas),
            "--requests", str(args.requests), "--rate-rps", str(args.rate_rps),
            "--catalogue", str(args.catalogue), "--zipf-s", str(args.zipf_s),
            "--seed", str(args.seed)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1200)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{replicas} replica(s) failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(lines[-1]))


def _table(runs: list[dict[str, Any]]) -> Table:
    first = runs[0]
    table = Table(title=(f"Response cache off vs on: {first['requests']} requests at "
                         f"{first['rate_rps']:g}/s, Zipf s={first['zipf_s']:g} over "
                         f"{first['catalogue']} inputs ({first['distinct_inputs']} distinct "
                         f"drawn), deadline {DEADLINE_MS:g} ms"))
    for column in ("replicas", "cache", "ok", "hit rate", "coalesced", "routed",
                   "$ / 1k req", "p50 ms", "p99 ms", "SLO"):
        table.add_column(column, justify="right")
    for run in runs:
        for arm in ("off", "on"):
            f = run[arm]
            table.add_row(str(run["replicas"]), arm, f"{f['ok']}/{f['requests']}",
                          f"{f['hit_rate']:.1%}", f"{f['coalesced_rate']:.1%}",
                          str(f["upstream_requests"]), f"{f['usd_per_1k']:.6f}",
                          f"{f['p50_ms']:.1f}", f"{f['p99_ms']:.1f}",
                          f"{f['slo_attainment']:.1%}")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 requests")
    parser.add_argument("--requests", type=int, default=1200)
    parser.add_argument("--rate-rps", type=float, default=40.0)
    parser.add_argument("--catalogue", type=int, default=300,
                        help="distinct inputs the trace draws from (digits test rows)")
    parser.add_argument("--zipf-s", type=float, default=1.1)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--replicas", default="1", help="router replica counts, e.g. 1,2")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.requests = 300
    if args.child:
        print(json.dumps(child(args.child, args.requests, args.rate_rps, args.catalogue,
                               args.zipf_s, args.seed)), flush=True)
        return 0
    console = Console(width=160)
    runs = [_run_child(int(r), args, console) for r in args.replicas.split(",")]
    console.print(_table(runs))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(runs, indent=2) + "\n")
        console.print(f"figures: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

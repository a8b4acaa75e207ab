"""What a batch job costs against the same rows sent online, and what it does to online
traffic.

Run from the repository root: ``.venv/bin/python -m benchmarks.jobs`` (``--rows N`` for
the job's size, ``--json PATH`` to keep the figures).

One local stack (the embedded default: two edge workers, the cloud, emulated links) on its
own ports, with the policy of ``infra/policy.yaml``, in a child process. Three phases, one
after another:

1. **online, always-cloud**: the job's rows sent as online requests, one row each (the
   online pattern), ``concurrency`` at a time, under the named policy ``always-cloud``;
2. **online load alone**: ``rate_rps`` open-loop requests under the default policy
   (deadline 250 ms) for ``load_s`` seconds: the SLO attainment without a job;
3. **job under load**: the same load again while the rows run as one job (deadline
   ``deadline_s``): the job's cost, time and placement, and the SLO attainment of the
   requests sent while it ran.

Cost is the router's own account: ``parameters.cost_usd`` of each online answer, the job's
``cost_usd`` (the same price book, the same marginal cost model).
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

PORT, EDGE_PORTS = 19760, (19761, 19762)
TOKEN = "bench-jobs-admin"
POLICY = Path("infra/policy.yaml")
DEADLINE_MS = 250.0


async def online_rows(endpoint: str, x: np.ndarray, policy: str,
                      concurrency: int) -> dict[str, Any]:
    """Every row as its own request, ``concurrency`` in flight; cost and time."""
    import httpx

    queue = list(range(len(x)))
    cost, ok, failed = 0.0, 0, 0
    async with httpx.AsyncClient(timeout=10.0,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:

        async def worker() -> None:
            nonlocal cost, ok, failed
            while queue:
                row = queue.pop()
                body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                    "data": x[row].tolist()}],
                        "parameters": {"deadline_ms": 2000, "policy": policy}}
                try:
                    answer = await client.post(f"{endpoint}/v2/models/digits/infer", json=body)
                except httpx.HTTPError:
                    failed += 1
                    continue
                if answer.status_code == 200:
                    ok += 1
                    cost += answer.json()["parameters"]["cost_usd"]
                else:
                    failed += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"rows": len(x), "ok": ok, "failed": failed, "cost_usd": cost,
            "wall_s": time.monotonic() - started}


async def open_load(endpoint: str, x: np.ndarray, rate_rps: float,
                    seconds: float) -> list[tuple[float, int, float]]:
    """Open-loop online requests (default policy): (sent at, status, latency ms) each."""
    import httpx

    outcomes: list[tuple[float, int, float]] = []
    async with httpx.AsyncClient(timeout=DEADLINE_MS / 1000 + 5) as client:

        async def one(row: int) -> None:
            sent = time.time()
            body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                "data": x[row % len(x)].tolist()}],
                    "parameters": {"deadline_ms": DEADLINE_MS}}
            try:
                status = (await client.post(f"{endpoint}/v2/models/digits/infer",
                                            json=body)).status_code
            except httpx.HTTPError:
                status = 0
            outcomes.append((sent, status, (time.time() - sent) * 1000))

        tasks = []
        start = time.monotonic()
        for i in range(int(rate_rps * seconds)):
            await asyncio.sleep(max(start + i / rate_rps - time.monotonic(), 0))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return outcomes


def slo(outcomes: list[tuple[float, int, float]]) -> dict[str, Any]:
    met = sum(status == 200 and latency <= DEADLINE_MS for _, status, latency in outcomes)
    return {"requests": len(outcomes), "slo_attainment": met / max(len(outcomes), 1)}


async def job_under_load(endpoint: str, x: np.ndarray, deadline_s: float, rate_rps: float,
                         seconds: float) -> dict[str, Any]:
    from edgeroute.tools.jobs_cli import Jobs

    jobs = Jobs(endpoint, None)
    load = asyncio.create_task(open_load(endpoint, x, rate_rps, seconds))
    submitted = time.time()
    job_id = await asyncio.to_thread(jobs.submit, x, "digits", deadline_s, "any")
    while (status := await asyncio.to_thread(jobs.status, job_id))["status"] not in (
            "done", "failed", "cancelled"):
        await asyncio.sleep(0.5)
    outcomes = await load
    finished = status["finished_at"] or time.time()
    during = [o for o in outcomes if o[0] <= finished]
    labels = (await asyncio.to_thread(jobs.result, job_id))["label"] \
        if status["status"] == "done" else np.zeros(0)
    return {"status": status["status"], "rows": status["rows"], "cost_usd": status["cost_usd"],
            "wall_s": finished - submitted, "placement": status["placement"],
            "will_miss_deadline": status["will_miss_deadline"],
            "labels_returned": len(labels), "load_during_job": slo(during),
            "load_whole_phase": slo(outcomes)}


def child(rows: int, deadline_s: float, rate_rps: float, load_s: float,
          concurrency: int) -> dict[str, Any]:
    """The stack and the three phases, in their own process (Ray reads its authentication
    mode at import)."""
    from edgeroute.config import StackConfig
    from edgeroute.dataset import digits_split
    from edgeroute.models.store import ensure_models
    from edgeroute.tools.stack import Stack

    document = StackConfig().model_dump(mode="json")
    document["port"] = PORT
    document["router"]["admin_token"] = TOKEN
    for edge, port in zip(document["edges"], EDGE_PORTS, strict=True):
        edge["port"] = port
    config = StackConfig.model_validate(document)
    test = digits_split().x_test
    x = np.ascontiguousarray(np.resize(test, (rows, test.shape[1])), dtype=np.float32)
    policy = yaml.safe_load(POLICY.read_text())
    figures: dict[str, Any] = {"rows": rows, "deadline_s": deadline_s, "rate_rps": rate_rps}
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(config, ensure_models(), policy=policy,
                      state_file=Path(tmp) / "state.json", say=lambda *_: None)
        try:
            stack.start()
            endpoint = config.endpoint
            figures["online_always_cloud"] = asyncio.run(
                online_rows(endpoint, x, "always-cloud", concurrency))
            figures["load_alone"] = slo(asyncio.run(open_load(endpoint, test, rate_rps,
                                                              load_s)))
            figures["job"] = asyncio.run(job_under_load(endpoint, x, deadline_s, rate_rps,
                                                        load_s))
        finally:
            stack.stop()
    return figures


def _table(f: dict[str, Any]) -> Table:
    online, job = f["online_always_cloud"], f["job"]
    table = Table(title=f"{f['rows']} digits rows: one batch job (deadline {f['deadline_s']:g} s)"
                        " vs online requests of one row under always-cloud")
    for column in ("way", "rows ok", "cost USD", "$ / 1k rows", "wall s", "placement"):
        table.add_column(column, justify="right")
    table.add_row("online, always-cloud", f"{online['ok']}/{online['rows']}",
                  f"{online['cost_usd']:.3g}", f"{1000 * online['cost_usd'] / f['rows']:.3g}",
                  f"{online['wall_s']:.1f}", "cloud")
    table.add_row("batch job", f"{job['labels_returned']}/{job['rows']} ({job['status']})",
                  f"{job['cost_usd']:.3g}", f"{1000 * job['cost_usd'] / f['rows']:.3g}",
                  f"{job['wall_s']:.1f}", json.dumps(job["placement"]))
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--deadline-s", type=float, default=600.0)
    parser.add_argument("--rate-rps", type=float, default=20.0,
                        help="online load (default policy) beside the job")
    parser.add_argument("--load-s", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=16,
                        help="online requests in flight in the always-cloud phase")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    options = [str(args.rows), str(args.deadline_s), str(args.rate_rps), str(args.load_s),
               str(args.concurrency)]
    if args.child:
        print(json.dumps(child(args.rows, args.deadline_s, args.rate_rps, args.load_s,
                               args.concurrency)), flush=True)
        return 0
    argv_child = [sys.executable, "-m", "benchmarks.jobs", "--child", "--rows", options[0],
                  "--deadline-s", options[1], "--rate-rps", options[2], "--load-s",
                  options[3], "--concurrency", options[4]]
    done = subprocess.run(argv_child, capture_output=True, text=True, timeout=1800)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"the benchmark failed:\n{done.stderr[-3000:]}")
    figures = json.loads(lines[-1])
    console = Console(width=160)
    console.print(_table(figures))
    online, job = figures["online_always_cloud"], figures["job"]
    console.print(f"job / online cost: {job['cost_usd'] / max(online['cost_usd'], 1e-18):.3f}x")
    alone, during = figures["load_alone"], job["load_during_job"]
    console.print(f"online SLO attainment ({figures['rate_rps']:g} rps, deadline "
                  f"{DEADLINE_MS:g} ms): {alone['slo_attainment']:.1%} alone "
                  f"({alone['requests']} requests), {during['slo_attainment']:.1%} while the "
                  f"job ran ({during['requests']} requests)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

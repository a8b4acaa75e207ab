"""``edgeroute demo``: the main job, end to end on one machine.

Builds the models if needed, starts the local stack, drives about a minute of
open-loop load in phases (warm-up, steady, a burst, and a fault: one edge
worker SIGKILLed, then restarted by the supervisor), prints a report per phase,
sends the held-out rows of the second bundled model (``wine``, another signature)
through the same endpoint, writes it all as JSON with a PNG plot, and stops
everything.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from edgeroute.config import StackConfig
from edgeroute.dataset import digits_split
from edgeroute.models.store import ensure_models
from edgeroute.tools.demo_models import drive_wine, wine_report_table, with_wine
from edgeroute.tools.figures import plot, render, rich_progress, summarize, write_json
from edgeroute.tools.loadgen import LoadResult, run_load
from edgeroute.tools.overhead import measure, overhead_table
from edgeroute.tools.router_api import admin_headers
from edgeroute.tools.schedule import Phase, RequestMix
from edgeroute.tools.serve_config import APP_NAME
from edgeroute.tools.stack import Stack, StackError
from edgeroute.tools.tables import card_table, targets_table

VICTIM = "edge-a"
MIX = RequestMix(
    deadlines_ms=((100.0, 0.3), (250.0, 0.5), (1000.0, 0.2)),
    high_quality_share=0.2,
    seed=7,
)


def phases(quick: bool) -> list[Phase]:
    """About a minute of load; ``quick`` keeps the same shape in about 15 s."""
    scale = 0.25 if quick else 1.0
    return [
        Phase("warm-up", 5 * scale, 15),
        Phase("steady", 20 * scale, 25),
        Phase("burst", 8 * scale, 50),
        Phase("edge-kill", 25 * scale, 25, events=((3 * scale, f"kill {VICTIM}"),)),
    ]


def _with_restarts(result: LoadResult, stack: Stack, started: float) -> LoadResult:
    restarts = tuple((t - started, f"restart {name}") for t, name, _ in stack.restarts
                     if t >= started)
    events = tuple(sorted((*result.events, *restarts)))
    return dataclasses.replace(result, events=events)


def _drive(stack: Stack, console: Console, quick: bool) -> LoadResult:
    async def on_event(name: str) -> None:
        if name == f"kill {VICTIM}":
            pid = stack.kill(VICTIM)
            console.print(f"[red]SIGKILL {VICTIM} (pid {pid})[/red]")

    started = time.monotonic()
    with rich_progress(console) as progress:
        result = asyncio.run(
            run_load(stack.endpoint, phases(quick), digits_split(), MIX,
                     on_event=on_event, progress=progress, seed=11)
        )
    return _with_restarts(result, stack, started)


def _overhead(stack: Stack, n: int) -> dict[str, Any]:
    from ray import serve

    config = stack.config
    edge = next(e for e in config.edges if e.name == VICTIM)
    handle = serve.get_deployment_handle(config.cloud.name, app_name=APP_NAME)
    return measure(stack.endpoint, config.router.admin_token or "", digits_split().x_test,
                   edge_name=edge.name, edge_url=edge.url, cloud_name=config.cloud.name,
                   cloud_handle=handle, n=n)


def run_demo(config: StackConfig, policy: dict[str, Any], out_dir: Path,
             quick: bool = False) -> int:
    console = Console()
    if not console.is_terminal:
        console = Console(width=150)
    models = ensure_models(progress=console.print)
    console.print(card_table(models))
    config = with_wine(config)
    try:
        stack = Stack(config, models, policy=policy, say=console.print)
    except StackError as exc:
        console.print(f"[red]edgeroute demo: {exc}[/red]")
        return 1
    try:
        stack.start()
        console.print(f"driving open-loop load at {stack.endpoint} "
                      f"(deadlines 100/250/1000 ms, 20% quality=high) ...")
        result = _drive(stack, console, quick)
        console.print(targets_table(httpx.get(
            f"{stack.endpoint}/v1/targets", timeout=10,
            headers=admin_headers({"admin_token": config.router.admin_token})).json()["targets"]))
        console.print("the second model, wine: its held-out rows through the same endpoint ...")
        wine = drive_wine(stack.endpoint)
        console.print(wine_report_table(wine))
        console.print("measuring the router hop against direct calls ...")
        stack.wait_all_targets()
        overhead = _overhead(stack, 50 if quick else 150)
    except StackError as exc:
        console.print(f"[red]edgeroute demo: {exc}[/red]")
        return 1
    finally:
        console.print("stopping the stack ...")
        stack.stop()
    summary = {**summarize(result), "overhead": overhead, "models": {"wine": wine}}
    render(summary, console)
    console.print(overhead_table(overhead))
    out_dir.mkdir(parents=True, exist_ok=True)
    report = write_json(summary, out_dir / "report.json")
    picture = plot(result, summary, out_dir / "report.png")
    console.print(f"report: {report}\nplot:   {picture}")
    return 0

"""``edgeroute bench SCENARIO``: every arm of a scenario on the real stack, one after another.

One stack is started for the run. After an unrecorded warm-up, each arm (a
named policy) replays the same seeded open-loop trace with the scenario's
faults; between arms hung workers are resumed, links restored and every target
must be healthy again. Then the router hop and throughput are measured against
direct calls, the hindsight oracle is computed from the arms' outcomes, and the
report is written (see :mod:`edgeroute.tools.bench.report`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from edgeroute.dataset import digits_split
from edgeroute.models.store import ensure_models
from edgeroute.tools import chaos
from edgeroute.tools.bench.scenario import Fault, Scenario
from edgeroute.tools.figures import rich_progress
from edgeroute.tools.loadgen import LoadResult, bundled_rows, run_load
from edgeroute.tools.overhead import measure, throughput
from edgeroute.tools.router_api import admin_headers
from edgeroute.tools.schedule import Phase
from edgeroute.tools.serve_config import APP_NAME
from edgeroute.tools.stack import Stack, StackError

RESTORE_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class ArmRun:
    name: str
    result: LoadResult
    provisioned_usd: float
    """Provisioned dollars the router's ledger accrued during the arm."""
    restarts: tuple[tuple[float, str], ...]


class Bench:
    """One benchmark run on one stack (started by :meth:`run`, always stopped)."""

    def __init__(self, scenario: Scenario, console: Console, port: int | None = None) -> None:
        self.scenario = scenario
        self.console = console
        config = scenario.stack_config(port)
        router = config.router.model_copy(update={"admin_token": secrets.token_urlsafe(24)})
        self.config = config.model_copy(update={"router": router})
        self.data = digits_split()
        self.stack: Stack | None = None
        self.links: dict[str, dict[str, Any]] = {}

    @property
    def state(self) -> dict[str, Any]:
        assert self.stack is not None
        return self.stack.state()

    def _targets(self) -> dict[str, Any]:
        assert self.stack is not None
        token = {"admin_token": self.config.router.admin_token}
        body: dict[str, Any] = httpx.get(f"{self.stack.endpoint}/v1/targets", timeout=10,
                                         headers=admin_headers(token)).json()
        return body

    def _provisioned_usd(self) -> float:
        return float(self._targets()["ledger"]["total"]["provisioned_usd"])

    async def _fault(self, name: str) -> None:
        fault: Fault = self.scenario.faults()[name]
        await asyncio.to_thread(self._apply, fault)

    def _apply(self, fault: Fault) -> None:
        assert self.stack is not None
        if fault.action == "kill":
            self.stack.kill(fault.target)
        elif fault.action == "hang":
            self.stack.kill(fault.target, signal.SIGSTOP)
        elif fault.action == "resume":
            self.stack.kill(fault.target, signal.SIGCONT)
        else:
            changes: dict[str, Any] = dict(fault.link)
            if fault.action in ("partition", "heal"):
                changes = {"partitioned": fault.action == "partition"}
            chaos.set_link(self.state, fault.target, changes)

    def _restore(self) -> None:
        """Undo every fault: resume hung workers, restore links, wait until every killed edge
        worker runs again and the router sees every target healthy, then settle."""
        assert self.stack is not None
        for edge in self.config.edges:
            with contextlib.suppress(ProcessLookupError, KeyError, StackError):
                self.stack.kill(edge.name, signal.SIGCONT)
        current = {t["name"]: t["link_emulation"] for t in self._targets()["targets"]}
        for name, link in self.links.items():
            if current.get(name) != link:
                chaos.set_link(self.state, name, link)
        self.stack.wait_edges_running(RESTORE_TIMEOUT_S)
        self.stack.wait_all_targets(RESTORE_TIMEOUT_S)
        time.sleep(self.scenario.settle_s)

    def _load(self, phases: list[Phase], policy: str, progress: Any = None,
              on_event: Any = None) -> LoadResult:
        assert self.stack is not None
        return asyncio.run(run_load(
            self.stack.endpoint, phases, self.data, self.scenario.request_mix(),
            on_event=on_event, progress=progress, seed=self.scenario.seed,
            parameters={"policy": policy}, models=bundled_rows(self.scenario.models())))

    def _arm(self, name: str, index: int) -> ArmRun:
        assert self.stack is not None
        before = self._provisioned_usd()
        started = time.monotonic()
        self.console.print(f"[bold]arm {index + 1}/{len(self.scenario.arms)}: {name}[/bold]")
        with rich_progress(self.console) as progress:
            result = self._load(self.scenario.load_phases(), name, progress, self._fault)
        restarts = tuple((t - started, f"restart {edge}") for t, edge, _ in self.stack.restarts
                         if t >= started)
        for event, error in result.event_errors:
            self.console.print(f"[red]fault {event!r} failed: {error}[/red]")
        provisioned = self._provisioned_usd() - before
        self._restore()
        return ArmRun(name, result, provisioned, restarts)

    def _overhead(self) -> dict[str, Any]:
        from ray import serve

        assert self.stack is not None
        settings = self.scenario.overhead
        token = self.config.router.admin_token or ""
        figures: dict[str, Any] = {}
        if settings.requests:
            edge = self.config.edges[0]
            handle = serve.get_deployment_handle(self.config.cloud.name, app_name=APP_NAME)
            figures["hop"] = measure(self.stack.endpoint, token, self.data.x_test,
                                     edge_name=edge.name, edge_url=edge.url,
                                     cloud_name=self.config.cloud.name, cloud_handle=handle,
                                     n=settings.requests)
        if settings.throughput_s:
            figures["throughput"] = throughput(
                self.stack.endpoint, token, self.data.x_test,
                {e.name: e.url for e in self.config.edges},
                concurrency=settings.concurrency, duration_s=settings.throughput_s)
        return figures

    def run(self) -> tuple[dict[str, ArmRun], dict[str, Any]]:
        """Start the stack, run every arm and the overhead measurement, stop the stack."""
        models = ensure_models(progress=self.console.print)
        policy = self.scenario.policy_document().model_dump(mode="json")
        self.stack = Stack(self.config, models, policy=policy, say=self.console.print)
        try:
            self.stack.start()
            self.stack.wait_all_targets(RESTORE_TIMEOUT_S)
            self.links = {t["name"]: t["link_emulation"] for t in self._targets()["targets"]}
            if self.scenario.warmup_s:
                self.console.print(f"warm-up: {self.scenario.warmup_s:.0f} s, not recorded")
                self._load([Phase("warm-up", self.scenario.warmup_s, self.scenario.warmup_rps)],
                           self.scenario.arms[0])
            arms = {name: self._arm(name, i) for i, name in enumerate(self.scenario.arms)}
            self.console.print("measuring the router hop and throughput against direct calls")
            overhead = self._overhead()
        finally:
            self.console.print("stopping the stack ...")
            self.stack.stop()
        return arms, overhead


def run_bench(scenario_path: Path, out_dir: Path | None = None, port: int | None = None, *,
              simulate: bool = False, repeat: int = 1, quick: bool = False) -> int:
    """The ``edgeroute bench`` command: run (``repeat`` times, seeds ``seed``,
    ``seed + 1`` ...; on the simulator with ``simulate``; shortened with ``quick``),
    report, and return the exit status."""
    from edgeroute.tools.bench.report import write_report

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    scenario = Scenario.load(scenario_path)
    if quick:
        scenario = scenario.quick()
    if not simulate and scenario.simulator_only():
        console.print(f"[red]edgeroute bench: the real stack cannot apply "
                      f"{scenario.simulator_only()}; run it with --sim[/red]")
        return 2
    out = out_dir or Path("out/bench") / scenario.name
    backend = "simulator" if simulate else "real stack"
    per_arm = scenario.duration_s + scenario.settle_s
    console.print(f"scenario {scenario.name} on the {backend}: {len(scenario.arms)} arms x "
                  f"{scenario.duration_s:.0f} s of load x {repeat} run(s)" + (
                      "" if simulate else f" (~{repeat * len(scenario.arms) * per_arm / 60:.0f}"
                      " min plus start-up and overhead measurement)"))
    seeds = [scenario.seed + k for k in range(repeat)]
    summaries = []
    for k, seed in enumerate(seeds):
        run_out = out if repeat == 1 else out / f"run-{k}"
        this = scenario.with_seed(seed)
        started = time.monotonic()
        try:
            cold_warm = None
            if simulate:
                from edgeroute.tools.bench.simulated import cold_vs_warm, simulate_arms
                arms, overhead = simulate_arms(this), dict[str, Any]()
                cold_warm = cold_vs_warm(this)
            else:
                arms, overhead = Bench(this, console, port).run()
        except StackError as exc:
            console.print(f"[red]edgeroute bench: {exc}[/red]")
            return 1
        paths = write_report(this, arms, overhead, run_out, console,
                             wall_s=time.monotonic() - started, backend=backend,
                             cold_warm=cold_warm)
        for path in paths:
            console.print(f"wrote {path}")
        summaries.append(json.loads((run_out / "report.json").read_text()))
    if repeat > 1:
        for path in write_spread(scenario.name, seeds, summaries, out, console, backend):
            console.print(f"wrote {path}")
    return 0


def write_spread(name: str, seeds: list[int], summaries: list[dict[str, Any]], out: Path,
                 console: Console, backend: str) -> list[Path]:
    """The figures across runs: ``spread.json``, ``spread.md`` and a console table."""
    from rich.table import Table

    from edgeroute.tools.bench.repeat import (
        SPREAD_COLUMNS,
        markdown,
        repeat_goals,
        spread,
        spread_rows,
    )

    found = spread(summaries)
    checked = repeat_goals(found)
    out.mkdir(parents=True, exist_ok=True)
    (out / "spread.json").write_text(json.dumps(
        {"scenario": name, "seeds": seeds, "backend": backend, "arms": found,
         "goals": [g.__dict__ for g in checked]}, indent=2, allow_nan=False) + "\n")
    (out / "spread.md").write_text(markdown(name, seeds, found, checked, backend))
    table = Table(title=f"{name}: {len(seeds)} runs, mean (min-max)", header_style="bold")
    for column in SPREAD_COLUMNS:
        table.add_column(column)
    for row in spread_rows(found):
        table.add_row(*row)
    console.print(table)
    for goal in checked:
        verdict = {True: "met", False: "[red]MISSED[/red]", None: "n/a"}[goal.met]
        console.print(f"{goal.name}: {goal.measured} -> {verdict}")
    return [out / "spread.json", out / "spread.md"]

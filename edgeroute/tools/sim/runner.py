"""Running a simulation on several cores: arms split over worker processes, progress, merge.

Arms are independent given the draws (each has its own replicas, world and
learning), so they split over processes without changing a figure: every
worker draws the same world and requests from the seed and simulates its
share of the arms; the oracle is the same in each. The split balances a rough
cost per arm (the risk-optimal engine costs more per decision than a
baseline; every replica rebuilds its own tables).
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
import traceback
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgeroute.tools.sim.engine import ORACLE, ArmSpec, Simulation
from edgeroute.tools.sim.synthetic import Scenario


def arm_cost(arm: ArmSpec) -> float:
    return (3.0 if arm.policy == "default" else 1.5) + 0.7 * arm.replicas


def split(arms: Sequence[ArmSpec], workers: int) -> list[list[ArmSpec]]:
    """Arms in at most ``workers`` groups of about equal cost (longest first, to the least
    loaded group)."""
    groups: list[list[ArmSpec]] = [[] for _ in range(max(min(workers, len(arms)), 1))]
    loads = [0.0] * len(groups)
    for arm in sorted(arms, key=arm_cost, reverse=True):
        least = loads.index(min(loads))
        groups[least].append(arm)
        loads[least] += arm_cost(arm)
    return [g for g in groups if g]


def _work(s: Scenario, arms: list[ArmSpec], index: int, done: Any, results: Any) -> None:
    try:
        def progress(count: int) -> None:
            done[index] = count

        results.put((index, Simulation(s, arms=arms).run(progress), None))
    except BaseException:
        results.put((index, None, traceback.format_exc()))


def _merge(parts: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    first = parts[0]
    arms: dict[str, Any] = {}
    for part in parts:
        arms.update(part["arms"])
    decisions = first["scenario"]["requests"] * len(arms)
    return {
        "scenario": first["scenario"],
        "virtual_s": first["virtual_s"],
        "sites_down_share": first["sites_down_share"],
        "wall_s": wall_s,
        "cpu_s": sum(p["cpu_s"] for p in parts),
        "decisions": decisions,
        "decisions_per_wall_s": decisions / wall_s,
        "workers": [{"arms": list(p["arms"]), "wall_s": p["wall_s"], "cpu_s": p["cpu_s"],
                     "peak_rss_mib": p["peak_rss_mib"]} for p in parts],
        "arms": arms,
        ORACLE: first[ORACLE],
    }


def run(s: Scenario, arms: Sequence[ArmSpec], *, workers: int = 2,
        console: Console | None = None) -> dict[str, Any]:
    """Simulate ``arms`` over ``s`` on up to ``workers`` processes; the merged figures."""
    groups = split(arms, workers)
    started = time.perf_counter()
    console = console or Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        tasks = [bar.add_task(", ".join(a.name for a in g), total=s.requests) for g in groups]
        if len(groups) == 1:
            part = Simulation(s, arms=groups[0]).run(
                lambda count: bar.update(tasks[0], completed=count))
            return _merge([part], time.perf_counter() - started)
        ctx = mp.get_context("fork")
        done = ctx.Array("q", len(groups))
        results = ctx.Queue()
        procs = [ctx.Process(target=_work, args=(s, g, i, done, results), daemon=True)
                 for i, g in enumerate(groups)]
        for proc in procs:
            proc.start()
        parts: dict[int, dict[str, Any]] = {}
        while len(parts) < len(groups):
            try:
                index, part, error = results.get(timeout=0.5)
            except queue.Empty:
                if not any(p.is_alive() for p in procs) and results.empty():
                    raise RuntimeError("a simulation worker died without a result") from None
            else:
                if error is not None:
                    raise RuntimeError(f"simulation worker failed:\n{error}")
                parts[index] = part
            for i, task in enumerate(tasks):
                bar.update(task, completed=done[i])
        for proc in procs:
            proc.join()
    return _merge([parts[i] for i in range(len(groups))], time.perf_counter() - started)

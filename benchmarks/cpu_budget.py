"""Where a routed request's CPU goes in its router replica, stage by stage.

Run from the repository root: ``.venv/bin/python -m benchmarks.cpu_budget``
(``--duration-s`` for the length of the saturation, ``--json PATH`` to keep the figures,
``--profile PATH`` to keep py-spy's raw samples, one ``frame;frame;... count`` per line).

It starts the local stack behind HAProxy with one router replica and links zeroed (the
stack of ``python -m benchmarks.ingress``), drives the router closed-loop at saturation
(16 callers, ``always-edge`` with a relaxed deadline, so that every request is routed to
an edge worker and queueing is not failure) and meanwhile

* reads the replica process's CPU time (``/proc/PID/stat``) before and after, and counts
  the answers: the CPU one routed request costs the replica;
* samples the stack of whichever thread of the replica holds the GIL with ``py-spy``
  (``--gil``, non-blocking), so a sample is Python running, never a thread waiting, and
  files each sample under the stage of the deepest frame that names one
  (:data:`STAGES`): the CPU split by stage, in percent and in ms per request.

Native work that runs without the GIL (Ray's core worker threads, the C++ side of Ray's
metrics, the kernel's share of socket calls) is in the process's CPU time but in no
sample: the report gives it as "not sampled", the difference between the two.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from benchmarks.ingress import POLICY, _config

STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("front door", ("router/frontdoor.py",)),
    ("placement decision", ("router/decision.py", "router/risk.py", "router/view.py",
                            "router/viewset.py", "router/candidates.py", "router/explore.py",
                            "router/plan.py", "router/cost.py")),
    ("learning from answers", ("router/estimator.py", "router/lessons.py", "router/breaker.py",
                               "router/sketches.py", "router/latency.py",
                               "router/distribution.py", "router/window.py")),
    ("metrics", ("router/metrics.py", "ray/util/metrics.py", "prometheus_client/",
                 "opentelemetry/", "ray/_private/metrics", "ray/_private/telemetry")),
    ("target call (httpx, aiohttp)", ("httpx/", "httpcore/", "router/transport.py",
                                      "router/aiohttp_pool.py", "aiohttp/", "yarl/",
                                      "multidict/", "anyio/", "sniffio/")),
    ("OIP decode and encode", ("edgeroute/oip.py", "edgeroute/http.py", "edgeroute/contract.py",
                               "router/oip_routes.py")),
    ("router handler (other)", ("router/",)),
    ("web framework (FastAPI, Starlette, pydantic)", ("fastapi/", "starlette/", "pydantic/",
                                                      "pydantic_core/")),
    ("HTTP server (uvicorn, h11)", ("uvicorn/",)),
    ("Serve replica machinery", ("ray/serve/",)),
    ("Ray core (other)", ("ray/",)),
    ("event loop", ("asyncio/", "uvloop/", "selectors.py")),
)
"""Each stage and the source paths that name it, most specific first: a frame takes the first
stage whose path it is in; a sample takes the stage of its deepest frame that has one, the
event loop only when nothing above it does (a library's own socket writes stay with it)."""
WEAK = "event loop"
OTHER = "other"
FRAME_PATH = re.compile(r"\(([^():]+):\d+\)$")
ROUTED_BODIES = 64
CALLERS = 16


def frame_stage(frame: str) -> str | None:
    """The stage of one py-spy frame, ``name (path/file.py:line)``, or ``None``."""
    found = FRAME_PATH.search(frame.strip())
    if found is None:
        return None
    path = found.group(1)
    for stage, paths in STAGES:
        if any(part in path for part in paths):
            return stage
    return None


def sample_stage(frames: list[str]) -> str:
    """The stage of one sample: its deepest frame with a stage other than the event loop;
    the event loop if only it; :data:`OTHER` if none."""
    weak = False
    for frame in reversed(frames):
        stage = frame_stage(frame)
        if stage == WEAK:
            weak = True
        elif stage is not None:
            return stage
    return WEAK if weak else OTHER


def split_samples(lines: Iterable[str]) -> Counter[str]:
    """Samples per stage from py-spy's raw output: ``frame;frame;... count`` per line."""
    counts: Counter[str] = Counter()
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        counts[sample_stage(stack.split(";"))] += int(count)
    return counts


def budget(counts: Counter[str], cpu_ms_per_request: float,
           sampled_share: float) -> list[dict[str, Any]]:
    """Per stage, most first: its share of the samples and its ms of CPU per request, the
    sampled part of the request's CPU split by the samples; then what no sample saw."""
    total = sum(counts.values())
    sampled_ms = cpu_ms_per_request * min(max(sampled_share, 0.0), 1.0)
    rows = [{"stage": stage, "samples": n, "share": n / total,
             "ms_per_request": sampled_ms * n / total}
            for stage, n in counts.most_common()] if total else []
    rows.append({"stage": "not sampled (native threads)", "samples": 0, "share": None,
                 "ms_per_request": cpu_ms_per_request - (sampled_ms if total else 0.0)})
    return rows


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _router_pid() -> int:
    from edgeroute.tools.ingress import process_argvs

    pids = [pid for pid, argv in process_argvs().items()
            if argv and b"ServeReplica:edgeroute:router" in argv[0]]
    if len(pids) != 1:
        raise SystemExit(f"expected one router replica process, found {len(pids)}")
    return pids[0]


def measure(duration_s: float, rate_hz: int, console: Console,
            keep_profile: Path | None = None) -> dict[str, Any]:
    from edgeroute import contract
    from edgeroute.dataset import digits_split
    from edgeroute.models.store import ensure_models
    from edgeroute.tools.overhead import SATURATION_DEADLINE_MS, _body, _saturate
    from edgeroute.tools.stack import Stack

    config = _config("haproxy", 1)
    rows = digits_split().x_test
    url = f"{config.endpoint}/v2/models/{contract.MODEL_NAME}/infer"
    bodies = [_body(row, deadline_ms=SATURATION_DEADLINE_MS, policy="always-edge")
              for row in rows[:ROUTED_BODIES]]
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(config, ensure_models(), policy=yaml.safe_load(POLICY.read_text()),
                      state_file=Path(tmp) / "state.json", say=lambda *_: None)
        try:
            console.print("starting the stack (HAProxy, one router replica, links zeroed) ...")
            stack.start()
            pid = _router_pid()
            console.print(f"warming up, then {duration_s:g} s at saturation "
                          f"({CALLERS} callers), py-spy on the router replica (pid {pid}) ...")
            asyncio.run(_saturate(url, bodies, CALLERS, 2.0))
            profile = Path(tmp) / "profile.txt"
            spy = subprocess.Popen(
                [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid),
                 "--rate", str(rate_hz), "--gil", "--nonblocking", "--format", "raw",
                 "--duration", str(int(duration_s) + 1), "--output", str(profile)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            time.sleep(0.5)
            cpu_before, started = _cpu_s(pid), time.monotonic()
            ok, failed = asyncio.run(_saturate(url, bodies, CALLERS, duration_s))
            cpu_s, wall_s = _cpu_s(pid) - cpu_before, time.monotonic() - started
            _, err = spy.communicate(timeout=60)
            if spy.returncode != 0 or not profile.exists():
                raise SystemExit(f"py-spy failed ({spy.returncode}): {err[-2000:]}")
            samples = profile.read_text()
            if keep_profile is not None:
                keep_profile.write_text(samples)
            counts = split_samples(samples.splitlines())
        finally:
            stack.stop()
    cpu_ms = 1000 * cpu_s / max(ok + failed, 1)
    # py-spy samples the thread holding the GIL ``rate_hz`` times a second: the samples'
    # seconds against the process's measured CPU is the share that Python holding the GIL
    # takes of it.
    sampled_share = sum(counts.values()) / rate_hz / cpu_s if cpu_s > 0 else 0.0
    return {"answered": ok, "failed": failed, "wall_s": round(wall_s, 2),
            "routed_rps": round(ok / wall_s, 1), "cpu_s": round(cpu_s, 3),
            "cpu_ms_per_request": round(cpu_ms, 3), "replica_cores_busy": round(cpu_s / wall_s, 2),
            "sampled_share": round(sampled_share, 3), "rate_hz": rate_hz,
            "stages": budget(counts, cpu_ms, sampled_share)}


def table(figures: dict[str, Any]) -> Table:
    out = Table(title=f"Router replica CPU per routed request: {figures['cpu_ms_per_request']:.2f}"
                      f" ms ({figures['routed_rps']:.0f} rps at saturation, "
                      f"{figures['replica_cores_busy']:.2f} cores busy)")
    for column in ("stage", "share of samples", "ms per request"):
        out.add_column(column, justify="left" if column == "stage" else "right")
    for row in figures["stages"]:
        share = "-" if row["share"] is None else f"{100 * row['share']:.1f}%"
        out.add_row(row["stage"], share, f"{row['ms_per_request']:.2f}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration-s", type=float, default=8.0)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--profile", type=Path, help="keep py-spy's raw samples here")
    args = parser.parse_args(argv)
    console = Console()
    figures = measure(args.duration_s, args.rate, console, keep_profile=args.profile)
    console.print(table(figures))
    if figures["failed"]:
        console.print(f"[yellow]{figures['failed']} requests did not answer 200[/yellow]")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        console.print(f"figures: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

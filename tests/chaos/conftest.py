"""The chaos stack, open-loop load with faults on a schedule, and the figures each scenario prints.

One stack (package scope, ports 19100-19103) serves every scenario but the
removal of the cloud's Ray node, which needs a multi-node cluster of its own.
Each scenario leaves the stack as it found it: workers up and resumed, links
healed, the policy it started with, every target back in service.

The stack: edge-a (4 ms away) and edge-b (12 ms) serve at full speed; the
cloud is 400 ms away, so a 300 ms deadline can only be met by an edge (300 ms,
not less: the Serve proxy alone has a p99 of ~200 ms on 2 cores shared with
other stacks); edge-c emulates a slow device (200 ms per request, one at a time: 5 rps) and
is used by the named policy ``overload`` only, so its capacity is small and
known. Figures are printed, shown in the terminal summary and written to
``out/chaos/figures.json``.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeroute.dataset import digits_split
from edgeroute.tools.herd import percentile
from edgeroute.tools.loadgen import LoadResult, Outcome, Phase, RequestMix, run_load
from router.policy import PolicyDocument
from tests.stackkit import RunningStack, running_stack

PORT = 19100
EDGE_PORTS = (19101, 19102, 19103)
ROUTER_OVERRUN_MS = 50.0
"""The router answers by a request's deadline plus this, measured inside the router (its
``Server-Timing``, from the request's arrival at the replica): the executor's cancel grace
(10 ms) and event-loop lag on a busy 2-core machine."""
OVERRUN_BOUND_MS = 300.0
"""The same, as the client sees it (from the actual send to the end of the response): the
Serve proxy's queueing both ways is added, which on 2 cores shared with other engineers'
stacks reaches a couple of hundred ms. Never a hang; the figures print both worst cases."""
FIGURES: dict[str, dict[str, Any]] = {}
FIGURES_FILE = Path("out/chaos/figures.json")


def chaos_config() -> dict[str, Any]:
    edge = {"host": "127.0.0.1", "concurrency": 1, "max_queue": 32}
    return {
        "port": PORT,
        "cloud": {"link": {"base_ms": 400.0, "jitter_ms": 3.0}},
        "edges": [
            {**edge, "name": "edge-a", "port": EDGE_PORTS[0],
             "link": {"base_ms": 4.0, "jitter_ms": 1.0}},
            {**edge, "name": "edge-b", "port": EDGE_PORTS[1], "model": "student",
             "link": {"base_ms": 12.0, "jitter_ms": 1.0}},
            {**edge, "name": "edge-c", "port": EDGE_PORTS[2], "max_queue": 8,
             "service_delay_ms": 200.0, "link": {"base_ms": 2.0, "jitter_ms": 0.5}},
        ],
    }


def chaos_policy() -> dict[str, Any]:
    """The default policy places on the cloud, edge-a and edge-b (the edge priced above the
    cloud, as in the integration stack); ``overload`` places on edge-c alone and rejects what
    it predicts would miss its deadline instead of queueing it; ``edges`` is the default
    without the cascade, so that of two edges equally priced the nearer is preferred (no
    unsure-answer rate, which each small model learns at its own pace, tips the choice)."""
    document = PolicyDocument().model_dump(mode="json")
    document["prices"]["edge"] = {"usd_per_inference": 1e-5}
    document["prices"]["cloud"] = {"usd_per_compute_hour": 2.5, "usd_per_request": 1e-7}
    main = ["cloud", "edge-a", "edge-b"]
    for policy in document["policies"].values():
        policy["allowed_targets"] = main
    document["policies"]["overload"] = {
        **document["policies"]["default"], "allowed_targets": ["edge-c"],
        "on_infeasible": "reject", "hedge": {"enabled": False},
        "cascade": {"enabled": False},
    }
    document["policies"]["edges"] = {
        **document["policies"]["default"], "cascade": {"enabled": False},
    }
    document["anonymous"]["allowed_policies"] = sorted(document["policies"])
    return document


@pytest.fixture(scope="package")
def chaos_stack(tmp_path_factory: pytest.TempPathFactory, models: Any) -> Iterator[RunningStack]:
    with running_stack(tmp_path_factory.mktemp("chaos"), chaos_config(),
                       chaos_policy()) as running:
        yield running


def record(scenario: str, **figures: Any) -> None:
    """Print a scenario's figures and keep them for the summary and the figures file."""
    FIGURES[scenario] = figures
    print(f"\n[chaos] {scenario}: " + json.dumps(figures))
    FIGURES_FILE.parent.mkdir(parents=True, exist_ok=True)
    FIGURES_FILE.write_text(json.dumps(FIGURES, indent=2) + "\n")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("chaos figures")
    for scenario, figures in FIGURES.items():
        terminalreporter.write_line(f"{scenario}: {json.dumps(figures)}")
    for key, bound in (("router_max_overrun_ms", ROUTER_OVERRUN_MS),
                       ("max_overrun_ms", OVERRUN_BOUND_MS)):
        overruns = [f[key] for f in FIGURES.values() if key in f]
        if overruns:
            terminalreporter.write_line(f"worst {key}: {max(overruns):+.1f} ms "
                                        f"(bound {bound:.0f} ms)")


def most_misses(requests: int, p_miss: float, level: float = 0.999) -> int:
    """The most misses ``requests`` each missing with probability ``p_miss`` give, but one run
    in 1/(1 - ``level``): the least k with P(X <= k) >= ``level``, X ~ Binomial(requests,
    p_miss). A count compared with its mean alone fails about half the runs it should pass."""
    total = 0.0
    for k in range(requests + 1):
        total += math.comb(requests, k) * p_miss**k * (1 - p_miss) ** (requests - k)
        if total >= level:
            return k
    return requests


def within_bounds(figures: dict[str, Any]) -> None:
    """The deadline bound, at the router and at the client."""
    assert figures.get("router_max_overrun_ms", 0.0) <= ROUTER_OVERRUN_MS, figures
    assert figures["max_overrun_ms"] <= OVERRUN_BOUND_MS, figures


@dataclass(frozen=True)
class Seen:
    """One response as the client saw it: what loadgen's outcome leaves out."""

    status: int
    client_ms: float
    router_ms: float | None
    """From the router's ``Server-Timing`` (the router alone, without the Serve proxy)."""
    retry_after: str | None


@dataclass(frozen=True)
class Run:
    outcomes: tuple[Outcome, ...]
    events: tuple[tuple[float, str], ...]
    """(seconds since the start when the event's fault had taken effect, its name): when it
    fired plus the time its command took (a chaos CLI call starts a Python process, about a
    second here)."""
    seen: tuple[Seen, ...]


def load(stack: RunningStack, phases: Sequence[Phase], *, deadline_ms: float,
         high_share: float = 0.0, at: dict[str, Callable[[], Any]] | None = None,
         seed: int = 0, **parameters: Any) -> Run:
    """Open-loop Poisson load (:mod:`edgeroute.tools.loadgen`: latency from the scheduled send,
    no coordinated omission), a ``high_share`` of it asking for ``quality=high``; ``at``
    maps the name of a phase event to the fault it injects. Extra request ``parameters``
    (a named policy) go into every request."""
    mix = RequestMix(deadlines_ms=((deadline_ms, 1.0),), high_quality_share=high_share)
    faults = at or {}
    took: dict[str, float] = {}

    async def on_event(name: str) -> None:
        started = time.monotonic()
        await asyncio.to_thread(faults[name])
        took[name] = time.monotonic() - started

    seen: list[Seen] = []

    async def run() -> LoadResult:
        async with _RecordingClient(parameters, seen) as client:
            return await run_load(stack.endpoint, phases, digits_split(), mix,
                                  on_event=on_event, seed=seed, client=client,
                                  timeout_slack_s=5.0)

    result = asyncio.run(run())
    if result.event_errors:
        raise AssertionError(f"a fault could not be injected: {result.event_errors}")
    events = tuple((at_s + took.get(name, 0.0), name) for at_s, name in result.events)
    return Run(result.outcomes, events, tuple(seen))


class _RecordingClient(httpx.AsyncClient):
    """Adds fixed request parameters (a named policy) to every JSON request it posts and
    notes every response's status, timing and ``Retry-After``."""

    def __init__(self, parameters: dict[str, Any], seen: list[Seen]) -> None:
        super().__init__(limits=httpx.Limits(max_connections=2000,
                                             max_keepalive_connections=256), trust_env=False)
        self.extra = parameters
        self.seen = seen

    async def post(self, url: Any, *, content: Any = None, **kwargs: Any) -> httpx.Response:
        if self.extra:
            body = json.loads(content)
            body.setdefault("parameters", {}).update(self.extra)
            content = json.dumps(body).encode()
        started = time.monotonic()
        response = await super().post(url, content=content, **kwargs)
        timing = re.search(r"router;dur=([\d.]+)", response.headers.get("server-timing", ""))
        self.seen.append(Seen(response.status_code, (time.monotonic() - started) * 1000,
                              float(timing.group(1)) if timing else None,
                              response.headers.get("retry-after")))
        return response


ATTEMPTS = re.compile(r"after (\d+) attempt")


def attempts(outcome: Outcome) -> int:
    """Upstream calls the router made for a request: from the answer, or from the error text
    of a failure (``... after N attempt(s)``; a rejection before any call made none)."""
    if outcome.status == 200:
        return outcome.attempts
    found = ATTEMPTS.search(outcome.error or "")
    return int(found.group(1)) if found else 0


def overrun_ms(outcome: Outcome) -> float:
    """How long after its deadline the answer came, from the moment the request left."""
    return outcome.latency_ms - outcome.send_lag_ms - outcome.deadline_ms


def summary(outcomes: Sequence[Outcome], seen: Sequence[Seen] = ()) -> dict[str, Any]:
    """The figures every scenario prints about its load (with the responses ``seen`` of a
    run at one deadline, the router's own worst overrun too)."""
    failed = [o for o in outcomes if not o.ok]
    statuses: dict[str, int] = {}
    for o in outcomes:
        statuses[str(o.status)] = statuses.get(str(o.status), 0) + 1
    return {
        "requests": len(outcomes),
        "failed": len(failed),
        "statuses": statuses,
        "attempts_per_request": round(sum(attempts(o) for o in outcomes)
                                      / max(len(outcomes), 1), 3),
        "max_attempts": max((attempts(o) for o in outcomes), default=0),
        "p50_ms": round(percentile([o.latency_ms for o in outcomes], 0.5), 1),
        "p99_ms": round(percentile([o.latency_ms for o in outcomes], 0.99), 1),
        "deadline_ms": max((o.deadline_ms for o in outcomes), default=0),
        "max_overrun_ms": round(max((overrun_ms(o) for o in outcomes), default=0.0), 1),
        **({"router_max_overrun_ms": round(max(s.router_ms or 0.0 for s in seen)
                                           - max(o.deadline_ms for o in outcomes), 1)}
           if seen and outcomes else {}),
        "errors": dict(Counter(re.sub(r"\d+", "N", o.error or "")[:90] for o in failed)
                       .most_common(3)),
    }


def chaos(stack: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    """``edgeroute chaos ...`` on the stack, as an operator runs it."""
    done = subprocess.run([sys.executable, "-m", "edgeroute", "chaos", *args, "--state-file",
                           str(stack.state_file)], capture_output=True, text=True, timeout=30)
    return done


def must(stack: RunningStack, *args: str) -> Callable[[], None]:
    """A fault for :func:`load`'s ``at``: the chaos command, which must succeed."""

    def act() -> None:
        done = chaos(stack, *args)
        assert done.returncode == 0, done.stderr

    return act


def wait_for(check: Callable[[], bool], timeout_s: float, step_s: float = 0.25) -> float | None:
    """Seconds until ``check()`` held, or None if it never did within ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if check():
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(step_s)
    return None


def routed_to(stack: RunningStack, target: str, n: int = 5, deadline_ms: float = 300) -> bool:
    """Whether any of ``n`` sequential requests at ``deadline_ms`` was served by ``target``."""
    body: dict[str, Any] = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                        "data": digits_split().x_test[0].tolist()}],
                            "parameters": {"deadline_ms": deadline_ms}}
    url = f"{stack.endpoint}/v2/models/digits/infer"
    for _ in range(n):
        response = httpx.post(url, json=body, timeout=10)
        if response.status_code == 200 and response.json()["parameters"]["target"] == target:
            return True
    return False


def restore(stack: RunningStack, timeout_s: float = 60) -> None:
    """Every edge worker up and running, links healed, every target back in service."""
    for edge in ("edge-a", "edge-b", "edge-c"):
        chaos(stack, "up", edge)
        chaos(stack, "resume", edge)
        chaos(stack, "available", edge)
    for target in ("cloud", "edge-a", "edge-b", "edge-c"):
        link(stack, target, partitioned=False, loss_probability=0.0)()
    closed = wait_for(lambda: all(t["breaker"]["state"] == "closed"
                                  for t in stack.targets().values()), timeout_s, 0.5)
    assert closed is not None, json.dumps({n: t["breaker"] for n, t in stack.targets().items()})


def link(stack: RunningStack, target: str, **changes: Any) -> Callable[[], None]:
    """A fault for :func:`load`'s ``at``: change a target's emulated link."""
    from edgeroute.tools.chaos import set_link

    return lambda: set_link(stack.state, target, changes) and None


def edge_stats(stack: RunningStack, edge: str) -> dict[str, Any]:
    url = next(p["url"] for p in stack.state["processes"] if p["name"] == edge)
    body: dict[str, Any] = httpx.get(f"{url}/v1/stats", timeout=5).json()
    return body

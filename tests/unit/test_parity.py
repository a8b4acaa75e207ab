"""The simulator runs a plan as the router does: the same scripted targets, the same requests,
through the real :class:`~router.executor.Executor` (virtual time, in-memory transports) and
through the simulator's :func:`~edgeroute.tools.sim.execute.run_plan` and
:class:`~edgeroute.tools.sim.replica.RouterReplica`, give the same calls (target, start,
timeout, end, outcome), hedges, escalations and answers, the same lessons, and leave the
same breakers and estimators; the same probe outcomes through the router's prober and the
simulator's leave the same too. A rule changed on either side alone fails here.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from edgeroute.config import CloudDeployment, RouterSettings
from edgeroute.tools.sim.execute import Limits, Request, run_plan
from edgeroute.tools.sim.replica import OUTCOMES, RouterReplica, VirtualClock
from edgeroute.tools.sim.synthetic import DOWN, HANG, Scenario, Topology, build_topology
from edgeroute.tools.sim.world import FAILED, OK, TIMEOUT, Call, World
from router.breaker import Breakers
from router.calls import Attempt
from router.estimator import TargetEstimator
from router.executor import Executor, NotServed
from router.latency import EstimatorSettings
from router.lessons import Lesson
from router.plan import Plan, PlanKind, Timing
from router.policy import PolicyDocument
from router.targets import TargetSet
from router.transport import Reply, TargetUnavailable
from tests.unit.fakes import FakeTransport, fake_target, reply_for, run_virtual

A, B, CLOUD = "site-0000", "site-0001", "cloud"
NAMES = (A, B, CLOUD)
SERVICE_MS = 1.0
CONCURRENCY = 4
X = np.zeros((1, 64), dtype=np.float32)
SCENARIO = Scenario(sites=2, neighbours=1, requests=10, outage_share=0.0, cloud_outage_s=None)


@dataclass(frozen=True)
class Step:
    """What a target does with one call: answer after ``ms``, fail (503) after ``ms``, or
    hang (``ms`` is ``None``)."""

    kind: str
    ms: float | None = None


def answers(ms: float) -> Step:
    return Step("answer", ms)


def fails(ms: float) -> Step:
    return Step("fail", ms)


HANGS = Step("hang")


@dataclass(frozen=True)
class Case:
    """One request: its plan, deadline, arrival (s) and the small model's confidence."""

    plan: Plan
    deadline_ms: float
    at_s: float
    confidence: float = 0.99


@dataclass
class Seen:
    """What one side did for one request."""

    calls: list[tuple[str, str, float, float, float, Lesson]] = field(default_factory=list)
    """``(target, outcome, start_ms, timeout_ms, elapsed_ms, lesson)`` in launch order."""
    answer: str | None = None
    answered_ms: float | None = None
    hedged: bool = False
    escalated: bool = False


def plan(kind: PlanKind, primary: str, *fallbacks: str, hedge: str | None = None,
         hedge_delay_ms: float | None = None, escalate_to: str | None = None,
         threshold: float | None = None) -> Plan:
    """A plan pricing A at 20/60 ms (median/p99), B at 15/40 ms and the cloud at 30/80 ms."""
    timing = {A: Timing(20.0, 60.0), B: Timing(15.0, 40.0), CLOUD: Timing(30.0, 80.0)}
    return Plan(kind, primary, fallbacks, hedge, hedge_delay_ms, escalate_to, threshold,
                timing=timing)


def _r(ms: float | None) -> float | None:
    return None if ms is None else round(ms, 6)


def _lesson(lesson: Lesson) -> Lesson:
    return lesson._replace(breaker_ms=round(lesson.breaker_ms, 6))


def run_real(script: dict[str, Sequence[Step]], cases: Sequence[Case]) -> tuple[list[Seen], Any]:
    """The cases through the router's executor, with transports that follow ``script``."""
    confidence = [1.0]

    def behaviour(steps: Sequence[Step]) -> Any:
        count = itertools.count()

        async def act(transport: FakeTransport, x: np.ndarray, timeout_s: float) -> Reply:
            step = steps[min(next(count), len(steps) - 1)]
            if step.ms is None:
                await asyncio.Event().wait()
            await asyncio.sleep((step.ms or 0.0) / 1000)
            if step.kind == "fail":
                raise TargetUnavailable(transport.name, "HTTP 503")
            small = transport.name != CLOUD
            return reply_for(x, server_ms=SERVICE_MS, confidence=confidence[0] if small else 1.0)

        return act

    def estimator(name: str) -> TargetEstimator:
        c = CloudDeployment().max_batch_size if name == CLOUD else CONCURRENCY
        settings = EstimatorSettings(refresh_interval_s=SCENARIO.refresh_interval_s,
                                     probe_interval_s=SCENARIO.probe_interval_s, concurrency=c)
        return TargetEstimator(name=name, tier="cloud" if name == CLOUD else "edge",
                               quality="large" if name == CLOUD else "small",
                               prior_latency_ms=RouterSettings().prior_latency_ms,
                               settings=settings, clock=_loop_time)

    async def main() -> tuple[list[Seen], dict[str, Any]]:
        loop = asyncio.get_running_loop()
        targets = [fake_target(FakeTransport(n, behaviour(script[n])),
                               tier="cloud" if n == CLOUD else "edge",
                               quality="large" if n == CLOUD else "small", estimator=estimator(n))
                   for n in NAMES]
        attempts: list[tuple[float, Attempt]] = []
        doc = PolicyDocument()
        executor = Executor(TargetSet(targets), retry=doc.retry, breaker=doc.breaker,
                            clock=loop.time, sleep=asyncio.sleep, rng=random.Random(7),
                            on_attempt=lambda a: attempts.append((loop.time(), a)))
        seen = []
        for case in cases:
            await asyncio.sleep(case.at_s - loop.time())
            confidence[0] = case.confidence
            start, one = loop.time(), Seen()
            attempts.clear()
            try:
                served = await executor.run(case.plan, X, start + case.deadline_ms / 1000)
            except NotServed:
                pass
            else:
                one.answer, one.hedged, one.escalated = (served.target.name, served.hedged,
                                                         served.escalated)
                one.answered_ms = _r((loop.time() - start) * 1000)
            await asyncio.sleep(0)
            for end, a in attempts:
                began = (end - start) * 1000 - a.elapsed_ms
                assert a.lesson is not None
                one.calls.append((a.target, a.outcome, _r(began), _r(a.timeout_ms),
                                  _r(a.elapsed_ms), _lesson(a.lesson)))
            one.calls.sort(key=lambda c: (c[2], NAMES.index(c[0])))
            seen.append(one)
        return learned(seen, {t.name: t.estimator for t in targets}, executor.breakers)

    return run_virtual(main)


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


class ScriptedWorld(World):
    """The simulator's world with targets that follow a script instead of a topology."""

    def __init__(self, topo: Topology, script: dict[int, Sequence[Step]]) -> None:
        super().__init__(topo)
        self.script = script
        self.used = dict.fromkeys(script, 0)

    def call(self, target: int, arrival_ms: float, start_ms: float, timeout_ms: float,
             network_ms: float, service_ms: float, deadline_ms: float) -> Call:
        steps = self.script[target]
        step = steps[min(self.used[target], len(steps) - 1)]
        self.used[target] += 1
        if step.ms is None or step.ms > timeout_ms:
            return Call(target, start_ms, start_ms + timeout_ms, TIMEOUT)
        if step.kind == "fail":
            return Call(target, start_ms, start_ms + step.ms, FAILED)
        return Call(target, start_ms, start_ms + step.ms, OK, 0.0, SERVICE_MS, True)


def run_sim(script: dict[str, Sequence[Step]], cases: Sequence[Case]) -> tuple[list[Seen], Any]:
    """The cases through the simulator's plan runner and router replica."""
    scenario = SCENARIO
    topo = build_topology(scenario)
    topo.concurrency[:2] = CONCURRENCY
    ids = {n: i for i, n in enumerate(topo.names())}
    assert tuple(ids) == NAMES
    clock = VirtualClock()
    doc = PolicyDocument()
    replica = RouterReplica(0, scenario, topo, doc, clock)
    world = ScriptedWorld(topo, {ids[n]: steps for n, steps in script.items()})
    limits = Limits(max_attempts=doc.retry.max_attempts)
    seen = []
    for case in cases:
        clock.now = case.at_s
        req = Request([0, 1, 2], [0.0] * 3, [SERVICE_MS] * 3, case.at_s * 1000,
                      case.deadline_ms, case.confidence)
        out = run_plan(case.plan, req, world, replica, limits, ids, [True, True, False])
        replica.launched(out.calls)
        one = Seen(hedged=out.hedged, escalated=out.escalated)
        if out.answer is not None:
            one.answer, one.answered_ms = NAMES[out.answer.target], _r(out.answered_ms)
        lessons = {}
        for call in sorted(out.calls, key=lambda c: c.end_ms):
            clock.now = case.at_s + call.end_ms / 1000
            lessons[id(call)] = _lesson(replica.feedback(call, case.confidence))
        one.calls = sorted(((NAMES[c.target], OUTCOMES[c.outcome], _r(c.start_ms),
                             _r(c.timeout_ms), _r(c.total_ms), lessons[id(c)])
                            for c in out.calls), key=lambda c: (c[2], NAMES.index(c[0])))
        seen.append(one)
    return learned(seen, {n: replica.estimators[i] for n, i in ids.items()},
                         replica.breakers)


def learned(seen: list[Seen], estimators: dict[str, TargetEstimator],
            breakers: Breakers) -> tuple[list[Seen], dict[str, Any]]:
    """What each target's estimator and breaker hold after the run."""
    held = {}
    for name, est in estimators.items():
        b = breakers[name].snapshot()
        estimates = {k: v for k, v in est.snapshot().items() if not k.startswith("last_error")}
        held[name] = {**estimates, "answering": est.answering,
                      "breaker": (b["state"], b["window_calls"], b["window_failures"],
                                  b["window_slow"], b["consecutive_failures"])}
    return seen, held


SCRIPTS: dict[str, tuple[dict[str, Sequence[Step]], Sequence[Case]]] = {
    "A answers in 20 ms, then hangs; B takes over": (
        {A: (answers(20.0), HANGS), B: (answers(12.0),), CLOUD: (answers(45.0),)},
        [Case(plan("single", A, B, CLOUD), 250.0, 1.0),
         Case(plan("single", A, B, CLOUD), 250.0, 2.0),
         Case(plan("single", A, B), 90.0, 3.0)],
    ),
    "B fails with 503, the cloud answers": (
        {A: (HANGS,), B: (fails(3.0),), CLOUD: (answers(40.0),)},
        [Case(plan("single", B, CLOUD), 250.0, 1.0),
         Case(plan("single", B, A, CLOUD), 300.0, 2.0)],
    ),
    "a hedge wins over a straggler (overdue once), and one that is not needed": (
        {A: (answers(70.0), answers(5.0), HANGS), B: (answers(10.0), answers(40.0)),
         CLOUD: (answers(40.0),)},
        [Case(plan("hedged", A, CLOUD, hedge=B, hedge_delay_ms=25.0), 250.0, 1.0),
         Case(plan("hedged", A, CLOUD, hedge=B, hedge_delay_ms=25.0), 250.0, 2.0),
         Case(plan("hedged", A, CLOUD, hedge=B, hedge_delay_ms=25.0), 250.0, 3.0)],
    ),
    "a hedge behind a failed primary becomes its fallback": (
        {A: (fails(4.0),), B: (answers(10.0),), CLOUD: (answers(40.0),)},
        [Case(plan("hedged", A, CLOUD, hedge=B, hedge_delay_ms=25.0), 250.0, 1.0)],
    ),
    "a cascade escalates an unsure answer when the deadline allows": (
        {A: (answers(10.0),), B: (answers(12.0),), CLOUD: (answers(35.0), HANGS)},
        [Case(plan("cascade", A, escalate_to=CLOUD, threshold=0.9), 250.0, 1.0, 0.5),
         Case(plan("cascade", A, escalate_to=CLOUD, threshold=0.9), 250.0, 2.0, 0.95),
         Case(plan("cascade", A, escalate_to=CLOUD, threshold=0.9), 60.0, 3.0, 0.5),
         Case(plan("cascade", A, B, escalate_to=CLOUD, threshold=0.9), 250.0, 4.0, 0.5)],
    ),
}


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_the_simulator_runs_a_plan_as_the_executor_does(name: str) -> None:
    script, cases = SCRIPTS[name]
    real, real_held = run_real(script, cases)
    sim, sim_held = run_sim(script, cases)
    for i, (r, s) in enumerate(zip(real, sim, strict=True)):
        assert r.calls == s.calls, f"request {i}: calls"
        assert (r.answer, r.answered_ms, r.hedged, r.escalated) == (
            s.answer, s.answered_ms, s.hedged, s.escalated), f"request {i}: result"
    assert real_held == sim_held


PROBES: tuple[tuple[float, Step], ...] = (
    (1.5, Step("fail", 3.0)),
    (2.0, HANGS),
    (4.0, answers(8.0)),
    (6.0, answers(9.0)),
    (8.0, Step("fail", 2.0)),
    (9.0, answers(7.0)),
)
"""A target whose breaker is open: a refused probe, a hung one, one that answers (the
half-open trial follows), one while all is well, a refused one, one that answers."""


def _open(est: TargetEstimator, breakers: Breakers) -> None:
    for _ in range(PolicyDocument().breaker.consecutive_failures):
        permit = breakers[A].acquire()
        assert permit is not None
        permit.failure("HTTP 503")
        est.observe_failure("HTTP 503", 3.0)


def probe_real() -> list[dict[str, Any]]:
    """:data:`PROBES` through the router's prober (``TargetSet.probe``)."""
    steps = iter(PROBES)

    class Probed(FakeTransport):
        async def probe(self, timeout_s: float) -> None:
            self.step = next(steps)[1]
            if self.step.ms is None:
                await asyncio.Event().wait()
            await asyncio.sleep((self.step.ms or 0.0) / 1000)
            if self.step.kind == "fail":
                raise TargetUnavailable(self.name, "connection refused")

    async def trial(transport: FakeTransport, x: np.ndarray, timeout_s: float) -> Reply:
        assert isinstance(transport, Probed) and transport.step.ms is not None
        await asyncio.sleep(transport.step.ms / 1000)
        return reply_for(x, server_ms=SERVICE_MS)

    async def main() -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        est = TargetEstimator(name=A, prior_latency_ms=RouterSettings().prior_latency_ms,
                              settings=EstimatorSettings(
                                  refresh_interval_s=SCENARIO.refresh_interval_s,
                                  probe_interval_s=SCENARIO.probe_interval_s,
                                  concurrency=CONCURRENCY), clock=loop.time)
        target = fake_target(Probed(A, trial), estimator=est)
        targets = TargetSet([target], clock=loop.time)
        targets.breakers = Breakers(PolicyDocument().breaker, clock=loop.time)
        _open(est, targets.breakers)
        found = []
        for at_s, _ in PROBES:
            await asyncio.sleep(at_s - loop.time())
            await targets.probe(target)
            found.append(learned([], {A: est}, targets.breakers)[1][A])
        return found

    return run_virtual(main)


def probe_sim() -> list[dict[str, Any]]:
    """:data:`PROBES` through the simulator's replica (``probe_result``, at each probe's end)."""
    clock = VirtualClock()
    topo = build_topology(SCENARIO)
    topo.concurrency[:2] = CONCURRENCY
    replica = RouterReplica(0, SCENARIO, topo, PolicyDocument(), clock)
    est = replica.estimators[0]
    _open(est, replica.breakers)
    found = []
    for at_s, step in PROBES:
        took_ms = 1000.0 if step.ms is None else step.ms
        clock.now = at_s + took_ms / 1000
        status = HANG if step.ms is None else DOWN if step.kind == "fail" else 0
        replica.probe_result(0, status, took_ms)
        found.append(learned([], {A: est}, replica.breakers)[1][A])
    return found


def test_the_simulator_probes_as_the_router_s_prober_does() -> None:
    real, sim = probe_real(), probe_sim()
    assert [s["breaker"][0] for s in real] == [
        "open", "open", "closed", "closed", "closed", "closed"], "the scripted story"
    assert not real[4]["answering"] and real[5]["answering"], "a trial after a failure"
    for i, (r, s) in enumerate(zip(real, sim, strict=True)):
        assert r == s, f"after probe {i}"

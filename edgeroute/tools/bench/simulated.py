"""``edgeroute bench --sim``: a benchmark scenario run by the simulator instead of the real stack.

The scenario's stack config, faults and mix become a small simulated world
(:mod:`edgeroute.tools.sim`): one site per edge worker and the cloud, the
router's own estimators, breakers and ``decide()`` in virtual time, each arm
over the same requests and draws. What each target does comes from the same
fields the real stack reads:

* **network**: each call's round trip drawn as :class:`router.link.Link` draws
  it (``base_ms`` + a half-normal ``jitter_ms``, times ``spike_multiplier``
  with ``spike_probability``), from the link in force when the request is sent
  (``link`` faults change it from their time on);
* **service**: an edge's ``service_delay_ms`` plus the model's own time, with
  a lognormal spread, times the ``slow`` fault's multiplier in force (thermal
  throttling); the cloud's from ``simulation.cloud_service_ms``;
* **queues**: an edge's ``concurrency`` slots and ``max_queue``; the cloud's
  replicas (``cloud.autoscaling``: minimum 0 scales to zero) of
  ``simulation.cloud_slots_per_replica`` slots each, started after
  ``simulation.cloud_cold_start_ms``;
* **outages**: ``kill`` (down until the supervisor's restart plus
  ``simulation.edge_start_s``), ``hang`` until ``resume``, ``partition`` until
  ``heal`` (no answer);
* **answers**: the request's digit through the real models (the edge's student
  and the cloud's teacher, run once with onnxruntime): whether each would be
  right, and the student's top probability for the confidence cascade.

Not modelled: the router's own CPU, event loop and ingress (the real stack's
hop of a few ms), link loss, probes seeing link faults (probes draw from the
base link). Each arm's outcomes are :class:`~edgeroute.tools.loadgen.Outcome`
rows, so the report, the oracle and the goals are the real benchmark's.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeroute.config import LinkProfile, StackConfig
from edgeroute.contract import MODEL_NAME
from edgeroute.dataset import Split, digits_split
from edgeroute.tools.bench.run import ArmRun
from edgeroute.tools.bench.scenario import Fault, Scenario
from edgeroute.tools.figures import figures
from edgeroute.tools.loadgen import LoadResult, Outcome, bundled_rows
from edgeroute.tools.schedule import Planned, Schedule, plan
from edgeroute.tools.sim.engine import ArmSpec, Simulation
from edgeroute.tools.sim.execute import Outcome as PlanOutcome
from edgeroute.tools.sim.synthetic import DOWN, HANG, CloudScaling, Topology
from edgeroute.tools.sim.synthetic import Scenario as SimScenario
from edgeroute.tools.sim.trace import Chunk
from edgeroute.tools.sim.world import TIMEOUT
from router.plan import Decision

HALF_NORMAL_MEDIAN = 0.6745
"""The median of |N(0, 1)|."""


@dataclass(frozen=True)
class Answers:
    """Per test digit: whether each model is right, and the student's top probability."""

    correct: dict[str, np.ndarray]
    """Model name (``student``, ``student-int8``, ``teacher``) to a bool per digit."""
    confidence: dict[str, np.ndarray]


@functools.lru_cache(maxsize=1)
def model_answers() -> Answers:
    """Every held-out digit through the real models, once per process."""
    from edgeroute.models.runtime import OnnxModel
    from edgeroute.models.store import ensure_models

    models, data = ensure_models(), digits_split()
    correct, confidence = {}, {}
    for name, path in (("student", models.student), ("student-int8", models.student_int8),
                       ("teacher", models.teacher)):
        probabilities, labels = OnnxModel(path).predict(data.x_test)
        correct[name] = np.asarray(labels) == data.y_test
        confidence[name] = np.asarray(probabilities).max(axis=1)
    return Answers(correct, confidence)


@dataclass
class _Target:
    """One target's conditions over the run, as the scenario's faults change them."""

    link: LinkProfile
    service_median_ms: float
    link_changes: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    slow: list[tuple[float, float]] = field(default_factory=list)
    outages: list[tuple[float, float, int]] = field(default_factory=list)

    def link_at(self, t_s: float) -> LinkProfile:
        changes: dict[str, Any] = {}
        for at, change in self.link_changes:
            if at <= t_s:
                changes.update(change)
        return self.link.model_copy(update=changes) if changes else self.link

    def slow_at(self, t_s: float) -> float:
        factor = 1.0
        for at, multiplier in self.slow:
            if at <= t_s:
                factor = multiplier
        return factor


def _fault_times(scenario: Scenario) -> list[tuple[float, Fault]]:
    found, start = [], 0.0
    for phase in scenario.phases:
        found += [(start + f.at_s, f) for f in phase.faults]
        start += phase.duration_s
    return sorted(found, key=lambda tf: tf[0])


def _targets(scenario: Scenario, config: StackConfig) -> dict[str, _Target]:
    sim = scenario.simulation
    targets = {e.name: _Target(e.link, e.service_delay_ms + sim.edge_model_ms)
               for e in config.edges}
    targets[config.cloud.name] = _Target(config.cloud.link, sim.cloud_service_ms)
    end = scenario.duration_s + 1.0
    opened: dict[tuple[str, str], float] = {}
    restart = config.edge_restart_delay_s
    for at, fault in _fault_times(scenario):
        target = targets[fault.target]
        if fault.action == "link":
            target.link_changes.append((at, dict(fault.link)))
        elif fault.action == "slow":
            assert fault.service_multiplier is not None
            target.slow.append((at, fault.service_multiplier))
        elif fault.action == "kill":
            back = end if restart is None else at + restart + sim.edge_start_s
            target.outages.append((at, back, DOWN))
        elif fault.action in ("hang", "partition"):
            opened.setdefault((fault.target, fault.action), at)
        else:
            began = opened.pop((fault.target, "hang" if fault.action == "resume" else
                                "partition"), None)
            if began is not None:
                target.outages.append((began, at, HANG))
    for (name, _), began in opened.items():
        targets[name].outages.append((began, end, HANG))
    return targets


def _draw_network(link: LinkProfile, rng: np.random.Generator) -> float:
    """One round trip as :meth:`router.link.Link.sample_rtt_s` draws it (ms)."""
    rtt = link.base_ms + (abs(rng.normal(0.0, link.jitter_ms)) if link.jitter_ms else 0.0)
    if link.spike_probability and rng.random() < link.spike_probability:
        rtt *= link.spike_multiplier
    return float(rtt)


def _topology(scenario: Scenario, config: StackConfig, targets: dict[str, _Target]
              ) -> Topology:
    sim, edges = scenario.simulation, config.edges
    n = len(edges)
    names = [*(e.name for e in edges), config.cloud.name]
    medians = [targets[x].link.base_ms + HALF_NORMAL_MEDIAN * targets[x].link.jitter_ms
               for x in names]
    service = np.array([targets[name].service_median_ms for name in names])
    concurrency = np.array([*(e.concurrency for e in edges), math.inf], dtype=np.float64)
    max_wait = np.array([*(e.max_queue * targets[e.name].service_median_ms / e.concurrency
                           for e in edges), math.inf])
    auto = config.cloud.autoscaling
    return Topology(
        sites=n,
        popularity_cdf=np.cumsum(np.full(n, 1.0 / n)),
        neighbours=np.array([[j for j in range(n) if j != i] for i in range(n)]),
        rtt_median_ms=np.maximum(np.array(medians), 0.01),
        rtt_sigma=np.full(n + 1, sim.rtt_sigma),
        service_median_ms=service,
        service_sigma=np.array([*(sim.edge_service_sigma for _ in edges),
                                sim.cloud_service_sigma]),
        concurrency=concurrency,
        max_wait_ms=max_wait,
        outages={names.index(name): tuple(sorted(t.outages))
                 for name, t in targets.items() if t.outages},
        target_names=tuple(names),
        cloud_scaling=CloudScaling(
            slots_per_replica=sim.cloud_slots_per_replica, min_replicas=auto.min_replicas,
            max_replicas=auto.max_replicas, cold_start_ms=sim.cloud_cold_start_ms,
            upscale_delay_ms=auto.upscale_delay_s * 1000,
            idle_ms=auto.downscale_delay_s * 1000),
    )


def _trace(scenario: Scenario, config: StackConfig, targets: dict[str, _Target],
           requests: Sequence[Planned], answers: Answers, stream: list[int]) -> Chunk:
    """Every request's draws on every target, from ``stream`` (the scenario's seed)."""
    rng = np.random.default_rng(stream)
    sim = scenario.simulation
    names = [*(e.name for e in config.edges), config.cloud.name]
    sigmas = [sim.edge_service_sigma] * len(config.edges) + [sim.cloud_service_sigma]
    student = config.edges[0].model
    network, service = [], []
    for request in requests:
        t = request.at_s
        network.append([_draw_network(targets[x].link_at(t), rng) for x in names])
        service.append([targets[x].service_median_ms * targets[x].slow_at(t)
                        * float(rng.lognormal(0.0, s)) for x, s in zip(names, sigmas,
                                                                      strict=True)])
    return Chunk(
        first=0,
        arrival_s=[r.at_s for r in requests],
        deadline_ms=[r.deadline_ms for r in requests],
        high=[r.quality == "high" for r in requests],
        confidence=[float(answers.confidence[student][r.row]) for r in requests],
        candidates=[list(range(len(names)))] * len(requests),
        network_ms=network,
        service_ms=service,
    )


class _Recorder:
    """Turns each settled request into the :class:`Outcome` the client would have seen."""

    def __init__(self, requests: Sequence[Planned], names: list[str], models: list[str],
                 answers: Answers, cloud: int, passes: int = 1) -> None:
        self.requests, self.names, self.models = requests, names, models
        self.answers, self.cloud = answers, cloud
        self.outcomes: list[dict[str, list[Outcome]]] = [{} for _ in range(passes)]
        """Per pass of the trace: each arm's outcomes."""

    def __call__(self, arm: str, i: int, decision: Decision, out: PlanOutcome | None,
                 cost_usd: float) -> None:
        trip, index = divmod(i, len(self.requests))
        r = self.requests[index]
        base = {"phase": r.phase, "scheduled_s": r.at_s, "deadline_ms": r.deadline_ms,
                "quality": r.quality, "label": r.label, "seq": r.seq, "cost_usd": cost_usd,
                "model": r.model,
                "predicted_p_miss": decision.plan.p_miss if decision.plan is not None else None}
        self.outcomes[trip].setdefault(arm, []).append(self._outcome(decision, out, r, base))

    def _outcome(self, decision: Decision, out: PlanOutcome | None, r: Planned,
                 base: dict[str, Any]) -> Outcome:
        calls = out.calls if out is not None else []
        answer = out.answer if out is not None else None
        if answer is None or out is None or out.answered_ms is None:
            timed_out = any(c.outcome == TIMEOUT for c in calls)
            ended = max((c.end_ms for c in calls), default=0.0)
            return Outcome(**base, latency_ms=r.deadline_ms if timed_out else ended,
                           status=504 if timed_out else 503, predicted=None, target=None,
                           tier=None, attempts=len(calls), fallback=False, hedged=False,
                           upstream_ms=None, error="timeout" if timed_out else "unavailable")
        if out.answered_ms > r.deadline_ms:
            return Outcome(**base, latency_ms=r.deadline_ms, status=504, predicted=None,
                           target=None, tier=None, attempts=len(calls), fallback=False,
                           hedged=out.hedged, upstream_ms=None, error="deadline passed")
        target = answer.target
        right = bool(self.answers.correct[self.models[target]][r.row])
        plan = decision.plan
        planned = {plan.primary, plan.hedge, plan.escalate_to} if plan is not None else set()
        return Outcome(**base, latency_ms=out.answered_ms, status=200,
                       predicted=r.label if right else (r.label + 1) % 10,
                       target=self.names[target],
                       tier="cloud" if target == self.cloud else "edge",
                       attempts=len(calls), fallback=self.names[target] not in planned,
                       hedged=out.hedged, upstream_ms=answer.total_ms, error=None,
                       escalated=out.escalated)


@functools.lru_cache(maxsize=1)
def wine_answers() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every held-out wine through the bundled wine pair, once per process: whether the
    student is right, its top probability, whether the teacher is right."""
    from edgeroute.models import wine
    from edgeroute.models.runtime import OnnxModel

    models, data = wine.ensure_wine(), wine.wine_split()
    probabilities, student = OnnxModel(models.student).predict(data.x_test)
    _, teacher = OnnxModel(models.teacher).predict(data.x_test)
    return (np.asarray(student) == data.y_test, np.asarray(probabilities).max(axis=1),
            np.asarray(teacher) == data.y_test)


def _answers_of(model: str, config: StackConfig) -> Answers:
    """The answers of ``model``'s pair under the names the edges' models go by."""
    if model == MODEL_NAME:
        return model_answers()
    if model != "wine":
        raise ValueError(f"the simulator has held-out rows for digits and wine only, "
                         f"not {model!r}")
    student, confidence, teacher = wine_answers()
    edges = {e.model for e in config.edges}
    return Answers({**dict.fromkeys(edges, student), "teacher": teacher},
                   dict.fromkeys(edges, confidence))


def simulate_arms(scenario: Scenario, data: Split | None = None) -> dict[str, ArmRun]:
    """Every arm of ``scenario`` over one simulated run of its trace (its seed). With a
    model mix, each model's requests run in a world of their own (the router keeps
    estimators, breakers and costs per model and target; the edges' capacity is not shared
    between the models here, so contention across models is not modelled)."""
    (outcomes,), schedule = _passes(scenario, data, passes=1)
    events = tuple((at, f.name) for at, f in _fault_times(scenario))
    return {arm: ArmRun(arm, LoadResult(tuple(outcomes[arm]), events, schedule.phases,
                                        duration_s=scenario.duration_s), 0.0, ())
            for arm in scenario.arms}


COLD_REQUESTS = 300
"""A cold router is judged on its first this many requests after it starts."""


def cold_vs_warm(scenario: Scenario, data: Split | None = None,
                 first: int = COLD_REQUESTS) -> dict[str, Any]:
    """The router arm (the scenario's first) on a router that has just started against the
    same router running the same trace again right after it: the useful-answer rate and
    SLO attainment of the first ``first`` requests of each pass. The two passes meet the
    same requests, draws and faults (the second pass's faults shifted with it); the second
    starts with what the first taught the router, and with the world (queues, cloud
    replicas) as the first left it."""
    arm = scenario.arms[0]
    (cold, warm), _ = _passes(scenario.model_copy(update={"arms": (arm,)}), data, passes=2)
    passes = {"cold": cold[arm][:first], "warm": warm[arm][:first]}
    found: dict[str, Any] = {"arm": arm, "requests": min(len(p) for p in passes.values())}
    for name, outcomes in passes.items():
        f = figures(outcomes, scenario.duration_s)
        found[name] = {"useful_rate": f["useful_rate"], "slo_attainment": f["slo_attainment"]}
    found["gap_points"] = 100 * (found["warm"]["useful_rate"] - found["cold"]["useful_rate"])
    return found


def _passes(scenario: Scenario, data: Split | None, passes: int
            ) -> tuple[list[dict[str, list[Outcome]]], Schedule]:
    """Each arm's outcomes in each pass of the scenario's trace, in request order."""
    config = scenario.stack_config()
    if len(config.edges) < 2:
        raise ValueError("the simulator path needs at least two edge workers")
    data = data or digits_split()
    schedule = plan(scenario.load_phases(), data, scenario.request_mix(), seed=scenario.seed,
                    labels={m: r.y for m, r in bundled_rows(scenario.models()).items()})
    if not schedule.requests:
        raise ValueError(f"scenario {scenario.name} sends no request")
    found: list[dict[str, list[Outcome]]] = [{arm: [] for arm in scenario.arms}
                                             for _ in range(passes)]
    for k, model in enumerate(scenario.models()):
        requests = tuple(r for r in schedule.requests if r.model == model)
        if requests:
            simulated = _simulate(scenario, config, requests, _answers_of(model, config),
                                  [scenario.seed, 7] + ([k] if k else []), passes)
            for into, rows_of in zip(found, simulated, strict=True):
                for arm, rows in rows_of.items():
                    into[arm] += rows
    for into in found:
        for arm in into:
            into[arm].sort(key=lambda o: o.seq)
    return found, schedule


def _simulate(scenario: Scenario, config: StackConfig, requests: tuple[Planned, ...],
              answers: Answers, stream: list[int], passes: int = 1
              ) -> list[dict[str, list[Outcome]]]:
    """Every arm over ``requests`` (of one model) in one simulated world, ``passes`` times in
    a row (each pass the same requests, draws and faults, ``duration_s + settle_s`` after the
    one before); the outcomes of each pass."""
    targets = _targets(scenario, config)
    topology = _topology(scenario, config, targets)
    chunk = _trace(scenario, config, targets, requests, answers, stream)
    offset_s = scenario.duration_s + scenario.settle_s
    trace = [dataclasses.replace(chunk, first=p * len(requests),
                                 arrival_s=[a + p * offset_s for a in chunk.arrival_s])
             for p in range(passes)]
    topology = dataclasses.replace(topology, outages={
        target: tuple((start + p * offset_s, end + p * offset_s, kind)
                      for p in range(passes) for start, end, kind in spans)
        for target, spans in topology.outages.items()})
    mix = scenario.mix.deadlines_ms
    sim = SimScenario(
        sites=len(config.edges), neighbours=len(config.edges) - 1,
        requests=passes * len(requests), rate_rps=len(requests) / scenario.duration_s,
        seed=scenario.seed, deadlines_ms=tuple(sorted({d for d, _ in mix})),
        deadline_weights=tuple(1.0 for _ in sorted({d for d, _ in mix})),
        high_quality_share=scenario.mix.high_quality_share, cloud_outage_s=None,
        probe_interval_s=config.router.probe_interval_ms / 1000,
        chunk_requests=max(len(requests), 1))
    names = list(topology.names())
    models = [*(e.model for e in config.edges), "teacher"]
    recorder = _Recorder(requests, names, models, answers, topology.cloud, passes)
    Simulation(sim, arms=[ArmSpec(a, a) for a in scenario.arms],
               doc=scenario.policy_document(), topology=topology, trace=trace,
               record=recorder).run()
    return recorder.outcomes

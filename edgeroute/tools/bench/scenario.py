"""Benchmark scenarios: one YAML file says what ``edgeroute bench`` replays.

A scenario fixes everything a run depends on, so that two runs of one file on
one machine are comparable and every arm of a run sees the same requests:

* ``stack``: changes to the embedded default stack (``StackConfig``): links,
  edge capacity, cloud autoscaling. Mappings merge key by key; a list of
  named items (``edges``) merges item by item on ``name``.
* ``policy``: changes to the default policy document, e.g. a price book or an
  extra named policy to compare (a new named policy starts from the defaults).
* ``arms``: the named policies to compare, run one after another on the same
  seeded trace (``default`` is edgeroute's engine, the rest baselines).
* ``mix`` and ``phases``: the request mix (deadline classes, share of
  ``quality: high``) and the arrival process per phase (Poisson at a rate, or
  a linear ramp from ``rate_rps`` to ``end_rate_rps``), each with faults at
  offsets into the phase.

Faults act on the stack's own processes and links: ``kill`` (SIGKILL; the
supervisor restarts the worker), ``hang`` / ``resume`` (SIGSTOP / SIGCONT),
``link`` (change fields of a target's emulated link), ``partition`` /
``heal``, and ``slow`` (the target's service time multiplied by
``service_multiplier`` from then on: thermal throttling; 1 restores it).
Between arms every hung worker is resumed, every link restored and the router
must see every target healthy again. ``slow`` and the ``simulation`` settings
are honoured by the simulator path only (``edgeroute bench --sim``, see
:mod:`edgeroute.tools.bench.simulated`); the real stack refuses a ``slow``
fault.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgeroute.config import LinkProfile, StackConfig
from edgeroute.contract import MODEL_NAME
from edgeroute.tools.schedule import Phase, RequestMix
from router.policy import PolicyDocument

FaultAction = Literal["kill", "hang", "resume", "link", "partition", "heal", "slow"]
DEFAULT_ARMS = ("default", "always-edge", "always-cloud", "random", "round-robin",
                "least-latency", "least-cost")
PROCESS_ACTIONS = ("kill", "hang", "resume", "slow")


class ScenarioError(ValueError):
    """The scenario file is missing, not YAML, or not a valid scenario (reasons given)."""


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class Fault(Frozen):
    at_s: float = Field(ge=0)
    """Offset into the phase."""
    action: FaultAction
    target: str
    link: dict[str, float | bool] = {}
    """For ``link``: the link fields to change (see the stack config's ``LinkProfile``)."""
    service_multiplier: float | None = Field(None, ge=1, le=100)
    """For ``slow``: the target's service time is this many times its normal one."""

    @model_validator(mode="after")
    def _link_fields(self) -> Fault:
        if (self.action == "slow") != (self.service_multiplier is not None):
            raise ValueError("'service_multiplier' goes with action 'slow', and only with it")
        unknown = sorted(set(self.link) - set(LinkProfile.model_fields))
        if unknown:
            raise ValueError(f"unknown link fields {unknown}; known: "
                             f"{sorted(LinkProfile.model_fields)}")
        if (self.action == "link") != bool(self.link):
            raise ValueError("'link' changes go with action 'link', and only with it")
        return self

    @property
    def name(self) -> str:
        detail = ",".join(f"{k}={v}" for k, v in self.link.items())
        if self.service_multiplier is not None:
            detail = f"x{self.service_multiplier:g}"
        return f"{self.action} {self.target}" + (f" ({detail})" if detail else "")


class ScenarioPhase(Frozen):
    name: str = Field(min_length=1)
    duration_s: float = Field(gt=0, le=3600)
    rate_rps: float = Field(ge=0, le=10_000)
    end_rate_rps: float | None = Field(None, ge=0, le=10_000)
    """If set, the rate moves linearly from ``rate_rps`` to this over the phase."""
    faults: tuple[Fault, ...] = ()

    @model_validator(mode="after")
    def _faults_within(self) -> ScenarioPhase:
        late = [f.name for f in self.faults if f.at_s > self.duration_s]
        if late:
            raise ValueError(f"faults after the end of the phase: {late}")
        return self


class Mix(Frozen):
    deadlines_ms: tuple[tuple[float, float], ...] = ((250.0, 1.0),)
    """(deadline_ms, weight) pairs."""
    high_quality_share: float = Field(0.0, ge=0, le=1)
    models: dict[str, float] = {}
    """The share of requests for each model, e.g. ``{digits: 0.7, wine: 0.3}``: each a model
    of the stack's ``models``, the shares positive and adding up to 1. Each request sends a
    held-out row of its model's data. Empty: every request is for ``digits``."""

    @model_validator(mode="after")
    def _shares(self) -> Mix:
        if self.models:
            RequestMix(self.deadlines_ms, self.high_quality_share, 0,
                       tuple(self.models.items()))
        return self


class Overhead(Frozen):
    requests: int = Field(150, ge=0, le=10_000)
    """Sequential direct/routed pairs per target; 0 skips the hop measurement."""
    throughput_s: float = Field(5.0, ge=0, le=120)
    """Seconds of closed-loop saturation, routed and direct each; 0 skips it."""
    concurrency: int = Field(16, ge=1, le=512)


class Simulation(Frozen):
    """What the simulator path needs beyond the stack config: times the real stack produces
    by itself (model inference, replica start) and spreads it does not configure."""

    edge_model_ms: float = Field(0.05, ge=0)
    """The student model's own time per request, added to an edge's ``service_delay_ms``."""
    edge_service_sigma: float = Field(0.1, ge=0, le=3)
    """Lognormal spread of an edge's service time around its median."""
    cloud_service_ms: float = Field(5.0, gt=0)
    """The cloud's median service time (the teacher, batching wait included)."""
    cloud_service_sigma: float = Field(0.2, ge=0, le=3)
    cloud_slots_per_replica: int = Field(8, ge=1, le=10_000)
    """Requests one cloud replica serves at once; more wait for a slot."""
    cloud_cold_start_ms: float = Field(0.0, ge=0, le=600_000)
    """A new cloud replica's start (process, model load) before its first answer."""
    edge_start_s: float = Field(1.0, ge=0, le=600)
    """A killed edge worker answers again this long after the supervisor restarts it."""
    rtt_sigma: float = Field(0.2, ge=0, le=3)
    """Spread of the probes' round trips (lognormal) around the link's median."""


class Scenario(Frozen):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    description: str = ""
    sources: dict[str, str] = {}
    """Where each number of the scenario comes from (shown in the report)."""
    seed: int = 0
    stack: dict[str, Any] = {}
    policy: dict[str, Any] = {}
    arms: tuple[str, ...] = DEFAULT_ARMS
    mix: Mix = Mix()
    phases: tuple[ScenarioPhase, ...] = Field(min_length=1)
    warmup_s: float = Field(10.0, ge=0, le=600)
    """Unrecorded load with the first arm's policy before the first arm."""
    warmup_rps: float = Field(10.0, gt=0, le=10_000)
    settle_s: float = Field(2.0, ge=0, le=600)
    """Pause between arms, after every target is healthy again."""
    hedging: tuple[str, str, str] | None = None
    """(arm, arm without hedging, phase): compare p99 there for the hedging goal."""
    overhead: Overhead = Overhead()
    simulation: Simulation = Simulation()

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phase names must be unique: {names}")
        if len(set(self.arms)) != len(self.arms) or not self.arms:
            raise ValueError(f"arms must be given, each once: {list(self.arms)}")
        named = merge(PolicyDocument().model_dump(mode="json"), self.policy).get("policies", {})
        unknown = [a for a in self.arms if a not in named]
        if unknown:
            raise ValueError(f"arms {unknown} are not named policies (known: {sorted(named)})")
        config = self.stack_config()
        self.policy_document()
        served = [m.name for m in config.models]
        if unserved := sorted(set(self.mix.models) - set(served)):
            raise ValueError(f"mix.models names {unserved}, not models of the stack "
                             f"(stack.models: {served})")
        targets = {e.name for e in config.edges} | {config.cloud.name}
        edges = {e.name for e in config.edges}
        for phase in self.phases:
            for fault in phase.faults:
                pool = edges if fault.action in PROCESS_ACTIONS else targets
                if fault.target not in pool:
                    raise ValueError(f"phase {phase.name!r}: {fault.action} needs one of "
                                     f"{sorted(pool)}, not {fault.target!r}")
        if self.hedging is not None:
            arm, without, phase_name = self.hedging
            if arm not in self.arms or without not in self.arms or phase_name not in names:
                raise ValueError("hedging must name two arms of the run and one of its phases")
        return self

    def stack_config(self, port: int | None = None) -> StackConfig:
        document = merge(StackConfig().model_dump(mode="json"), self.stack)
        if port is not None:
            document["port"] = port
        return StackConfig.model_validate(document)

    def policy_document(self) -> PolicyDocument:
        """The default policy with the scenario's changes; every arm, and ``always-edge``
        for the throughput measurement, is open to anonymous callers (the benchmark's load
        has no API key)."""
        document = merge(PolicyDocument().model_dump(mode="json"), self.policy)
        anonymous = document.setdefault("anonymous", {})
        anonymous["allowed_policies"] = sorted({*anonymous.get("allowed_policies", []),
                                                *self.arms, "always-edge"})
        return PolicyDocument.model_validate(document)

    def load_phases(self) -> list[Phase]:
        return [Phase(p.name, p.duration_s, p.rate_rps,
                      tuple((f.at_s, f.name) for f in p.faults), p.end_rate_rps)
                for p in self.phases]

    def request_mix(self) -> RequestMix:
        return RequestMix(self.mix.deadlines_ms, self.mix.high_quality_share, self.seed,
                          tuple(self.mix.models.items()))

    def models(self) -> list[str]:
        """The models the load is for, in the mix's order (``digits`` alone by default)."""
        return list(self.mix.models) or [MODEL_NAME]

    def faults(self) -> dict[str, Fault]:
        """Every fault by the event name the load generator fires."""
        return {f.name: f for p in self.phases for f in p.faults}

    @property
    def duration_s(self) -> float:
        return sum(p.duration_s for p in self.phases)

    def quick(self, phase_s: float = 3.0) -> Scenario:
        """The same scenario, short: each phase at most ``phase_s`` (faults moved in
        proportion), no warm-up or overhead measurement; it checks structure, not figures."""
        phases = []
        for p in self.phases:
            scale = min(phase_s / p.duration_s, 1.0)
            faults = tuple(f.model_copy(update={"at_s": f.at_s * scale}) for f in p.faults)
            phases.append(p.model_copy(update={"duration_s": p.duration_s * scale,
                                               "faults": faults}))
        return self.model_copy(update={
            "name": f"{self.name}-quick"[:63], "phases": tuple(phases), "warmup_s": 0.0,
            "settle_s": 0.0, "overhead": Overhead(requests=0, throughput_s=0)})

    def with_seed(self, seed: int) -> Scenario:
        return self.model_copy(update={"seed": seed})

    def simulator_only(self) -> list[str]:
        """The faults the real stack cannot apply."""
        return [f.name for f in self.faults().values() if f.action == "slow"]

    @classmethod
    def load(cls, path: Path | str) -> Scenario:
        path = Path(path)
        try:
            document = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ScenarioError(f"cannot read scenario {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ScenarioError(f"{path} is not YAML: {exc}") from None
        try:
            return cls.model_validate(document)
        except ValidationError as exc:
            reasons = "\n".join(f"  {'.'.join(map(str, e['loc'])) or '(file)'}: {e['msg']}"
                                for e in exc.errors())
            raise ScenarioError(f"{path} is not a valid scenario:\n{reasons}") from None


def merge(base: Any, changes: Any) -> Any:
    """``changes`` laid over ``base``: mappings key by key, lists of named mappings item by
    item on ``name`` (new names appended), anything else replaced."""
    if isinstance(base, dict) and isinstance(changes, dict):
        merged = dict(base)
        for key, value in changes.items():
            merged[key] = merge(base[key], value) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(changes, list) and _named(base) and _named(changes):
        by_name = {item["name"]: item for item in base}
        for item in changes:
            by_name[item["name"]] = merge(by_name.get(item["name"], {}), item)
        return list(by_name.values())
    return changes


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)

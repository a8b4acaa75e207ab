"""The router's metrics: one place that names them, exported through ``ray.serve.metrics``.

Ray exports custom metrics to Prometheus with a ``ray_`` prefix, so the
counter ``edgeroute_requests_total`` is scraped as ``ray_edgeroute_requests_total``
(``infra/grafana/edgeroute.json`` charts them). The instruments are created
by an injected factory: Ray Serve's in a replica, an in-memory recorder in tests.

Every series carries a ``model`` label: a router serving several models keeps one
:class:`RouterMetrics` per model (:meth:`RouterMetrics.for_model`), all recording into the
same instruments, so a target's latency, placements and cost are told apart by the model
its calls ran. A request for a model the router does not serve is labelled
:data:`NO_MODEL` (a client cannot grow the label's values).
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections import defaultdict
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

from edgeroute.contract import MODEL_NAME

LATENCY_BOUNDARIES_MS: list[float] = [
    1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000, 2000, 5000,
]
DECISION_BOUNDARIES_US: list[float] = [5, 10, 20, 50, 100, 200, 500, 1000, 5000]
NO_TIER = "none"
"""The ``tier`` label of a request no target answered (refused, shed, failed, malformed)."""
CLIENT_GONE = 499
"""The ``status`` label of a request whose client went away first (nginx's code)."""
NO_POLICY = "-"
"""The ``policy`` label of a request refused before its policy was known."""
NO_MODEL = "-"
"""The ``model`` label of a request for a model the router does not serve."""
MODEL_LABEL = "model"


class Instrument(Protocol):
    def record(self, value: float, tags: dict[str, str]) -> None: ...


class Factory(Protocol):
    def counter(self, name: str, description: str, tags: tuple[str, ...]) -> Instrument: ...

    def gauge(self, name: str, description: str, tags: tuple[str, ...]) -> Instrument: ...

    def histogram(self, name: str, description: str, boundaries: list[float],
                  tags: tuple[str, ...]) -> Instrument: ...


class _RayInstrument:
    def __init__(self, metric: Any, method: str) -> None:
        self._record = getattr(metric, method)
        self._grows = method == "inc"

    def record(self, value: float, tags: dict[str, str]) -> None:
        if self._grows and value <= 0:
            return  # adding nothing to a counter (a free answer's cost); Ray refuses it
        self._record(value, tags=tags)


def _keys(tags: tuple[str, ...]) -> Any:
    """Ray annotates ``tag_keys`` as ``Tuple[str]`` though it takes any number of keys."""
    return tags


class ServeFactory:
    """Instruments from ``ray.serve.metrics`` (only usable inside a Ray worker)."""

    def counter(self, name: str, description: str, tags: tuple[str, ...]) -> Instrument:
        from ray.serve.metrics import Counter

        return _RayInstrument(Counter(name, description, tag_keys=_keys(tags)), "inc")

    def gauge(self, name: str, description: str, tags: tuple[str, ...]) -> Instrument:
        from ray.serve.metrics import Gauge

        return _RayInstrument(Gauge(name, description, tag_keys=_keys(tags)), "set")

    def histogram(self, name: str, description: str, boundaries: list[float],
                  tags: tuple[str, ...]) -> Instrument:
        from ray.serve.metrics import Histogram

        histogram = Histogram(name, description, boundaries, tag_keys=_keys(tags))
        return _RayInstrument(histogram, "observe")


class Recorded:
    """What a :class:`MemoryFactory` instrument saw: sums for counters, last values for
    gauges, every observation for histograms, keyed by sorted tag items."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.values: dict[tuple[tuple[str, str], ...], Any] = defaultdict(
            list if kind == "histogram" else float
        )

    def record(self, value: float, tags: dict[str, str]) -> None:
        key = tuple(sorted(tags.items()))
        if self.kind == "counter":
            self.values[key] += value
        elif self.kind == "gauge":
            self.values[key] = value
        else:
            self.values[key].append(value)

    def total(self, **tags: str) -> float:
        """Sum (or count, for histograms) over series whose tags include ``tags``."""
        wanted = set(tags.items())
        picked = [v for k, v in self.values.items() if wanted <= set(k)]
        return float(sum(len(v) if self.kind == "histogram" else v for v in picked))


class MemoryFactory:
    def __init__(self) -> None:
        self.instruments: dict[str, Recorded] = {}

    def _make(self, name: str, kind: str) -> Recorded:
        return self.instruments.setdefault(name, Recorded(kind))

    def counter(self, name: str, description: str, tags: tuple[str, ...]) -> Instrument:
        return self._make(name, "counter")

    def gauge(self, name: str, description: str, tags: tuple[str, ...]) -> Instrument:
        return self._make(name, "gauge")

    def histogram(self, name: str, description: str, boundaries: list[float],
                  tags: tuple[str, ...]) -> Instrument:
        return self._make(name, "histogram")


class _WithModel:
    """A factory whose every series also has the :data:`MODEL_LABEL` key."""

    def __init__(self, factory: Factory) -> None:
        self._factory = factory

    def counter(self, name: str, description: str, tags: tuple[str, ...]) -> Instrument:
        return self._factory.counter(name, description, (*tags, MODEL_LABEL))

    def gauge(self, name: str, description: str, tags: tuple[str, ...]) -> Instrument:
        return self._factory.gauge(name, description, (*tags, MODEL_LABEL))

    def histogram(self, name: str, description: str, boundaries: list[float],
                  tags: tuple[str, ...]) -> Instrument:
        return self._factory.histogram(name, description, boundaries, (*tags, MODEL_LABEL))


class _Labelled:
    """An instrument that adds one model's label to every record."""

    def __init__(self, instrument: Instrument, model: str) -> None:
        self.instrument = instrument
        self._label = {MODEL_LABEL: model}

    def record(self, value: float, tags: dict[str, str]) -> None:
        self.instrument.record(value, {**tags, **self._label})


class RouterMetrics:
    """The router's series as one model records them (``model``: its label)."""

    def __init__(self, factory: Factory, model: str = MODEL_NAME) -> None:
        f = _WithModel(factory)
        self.requests = f.counter("edgeroute_requests_total", "Client requests by outcome",
                                  ("policy", "status", "tier"))
        self.latency = f.histogram("edgeroute_request_latency_ms", "Router latency per request",
                                   LATENCY_BOUNDARIES_MS, ("policy", "tier"))
        self.placements = f.counter("edgeroute_placements_total", "Requests served per target",
                                    ("target", "tier"))
        self.upstream = f.histogram("edgeroute_upstream_latency_ms",
                                    "Time of the call that produced each answer, per target",
                                    LATENCY_BOUNDARIES_MS, ("target", "tier"))
        self.attempts = f.counter("edgeroute_attempts_total", "Upstream attempts by outcome",
                                  ("target", "outcome"))
        self.retries = f.counter("edgeroute_retries_total", "Retried attempts", ("target",))
        self.hedges = f.counter("edgeroute_hedges_total", "Hedged requests", ("outcome",))
        self.fallbacks = f.counter("edgeroute_fallbacks_total", "Requests served by a fallback",
                                   ())
        self.shed = f.counter("edgeroute_shed_total", "Requests shed by admission control",
                              ("reason",))
        self.breaker = f.counter("edgeroute_breaker_transitions_total",
                                 "Circuit breaker transitions", ("target", "to_state"))
        self.cost = f.counter("edgeroute_cost_usd_total", "Marginal dollars spent",
                              ("target", "tier"))
        self.decision = f.histogram("edgeroute_decision_us", "Decision time",
                                    DECISION_BOUNDARIES_US, ())
        self.predicted = f.gauge("edgeroute_target_predicted_latency_ms",
                                 "Predicted median latency per target", ("target",))
        self.breaker_open = f.gauge("edgeroute_target_breaker_open",
                                    "1 while a target's breaker is open", ("target",))
        self.cache_lookups = f.counter("edgeroute_cache_lookups_total",
                                       "Requests by what the response cache did for them",
                                       ("outcome",))
        self.cache_saved = f.counter("edgeroute_cache_saved_usd_total",
                                     "Dollars not spent: answers reused instead of called", ())
        self.cache_bytes = f.gauge("edgeroute_cache_bytes", "Bytes the response cache holds", ())
        self.cloud_replicas = f.gauge("edgeroute_cloud_replicas",
                                      "Running cloud replicas seen by the router", ())
        self._bind(model)

    def _bind(self, model: str) -> None:
        self.model = model
        for name, value in list(vars(self).items()):
            if isinstance(value, _Labelled):
                setattr(self, name, _Labelled(value.instrument, model))
            elif name != "model":
                setattr(self, name, _Labelled(value, model))

    def for_model(self, model: str) -> RouterMetrics:
        """The same instruments, recording with ``model`` as their ``model`` label."""
        other = copy.copy(self)
        other._bind(model)
        return other

    def request(self, policy: str, status: int, tier: str, latency_ms: float) -> None:
        self.requests.record(1, {"policy": policy, "status": str(status), "tier": tier})
        self.latency.record(latency_ms, {"policy": policy, "tier": tier})

    def tally(self, received: float,
              clock: Callable[[], float] = time.monotonic) -> RequestTally:
        """A client request received at ``received`` (on ``clock``), recorded when it ends."""
        return RequestTally(self, received, clock)

    def served(self, target: str, tier: str, cost_usd: float) -> None:
        self.placements.record(1, {"target": target, "tier": tier})
        self.cost.record(cost_usd, {"target": target, "tier": tier})


class RequestTally:
    """One client request's labels while it is handled, recorded once as it ends (``with``):
    the policy once known, the tier of the target that answered (:data:`NO_TIER` until one
    did) and the status. The latency runs from ``received`` to the end of the block."""

    def __init__(self, metrics: RouterMetrics, received: float,
                 clock: Callable[[], float]) -> None:
        self._metrics, self._received, self._clock = metrics, received, clock
        self.policy = NO_POLICY
        self.tier = NO_TIER
        self.status = 200

    def __enter__(self) -> RequestTally:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if kind is not None and self.status == 200:
            self.status = CLIENT_GONE if issubclass(kind, asyncio.CancelledError) else 500
        self._metrics.request(self.policy, self.status, self.tier,
                              (self._clock() - self._received) * 1000)

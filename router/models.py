"""The models one router replica serves: a routing service per model, and what spans them.

Each served model has its own :class:`~router.service.RoutingService`, so targets,
estimators, breakers, the cost ledger and in-flight bounds are kept per (model, target): a
target's latency and price depend on the model it runs. A decision only ever looks at the
targets of the request's model, so its time does not grow with the number of models. The
replica's lateness (:class:`~router.lag.LoopLag`) and the policy are shared.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from edgeroute.models.catalog import ServedModel, digits
from edgeroute.oipstats import InferenceStats
from edgeroute.signature import SIGNATURE_VERSION, check_model
from router.metrics import NO_MODEL, RouterMetrics
from router.policy import PolicyDocument
from router.service import RoutingService


@dataclass
class ModelService:
    model: ServedModel
    service: RoutingService
    stats: InferenceStats


class ModelServices:
    """The served models by name, in config order (the first is the default for the
    routes that name no model: the status page, the edge fleet)."""

    def __init__(self, entries: list[tuple[ServedModel, RoutingService]]) -> None:
        self.by_name = {m.name: ModelService(m, s, InferenceStats(m.name, SIGNATURE_VERSION))
                        for m, s in entries}
        self.first = next(iter(self.by_name.values()))
        self._stray: RouterMetrics | None = None

    def metrics_of(self, name: str) -> RouterMetrics:
        """The series a request for ``name`` counts in; those for a model not served share
        the ``model`` label :data:`~router.metrics.NO_MODEL`."""
        entry = self.by_name.get(name)
        if entry is not None:
            return entry.service.metrics
        if self._stray is None:
            self._stray = self.first.service.metrics.for_model(NO_MODEL)
        return self._stray

    def door_shed(self, name: str, arrived: float) -> None:
        """A request for ``name`` that arrived at ``arrived`` was refused at the replica's
        front door (:mod:`router.frontdoor`): counted as a shed request, ``reason="door"``."""
        metrics = self.metrics_of(name)
        metrics.shed.record(1, {"reason": "door"})
        with metrics.tally(arrived) as tally:
            tally.status = 503

    @classmethod
    def digits_only(cls, service: RoutingService) -> ModelServices:
        """One service serving the bundled ``digits`` (an embedded router, tests)."""
        return cls([(digits(), service)])

    def __iter__(self) -> Iterator[ModelService]:
        return iter(self.by_name.values())

    def names(self) -> list[str]:
        return list(self.by_name)

    def get(self, name: str) -> ModelService:
        """The model a route names, or a 404 in OIP form listing those served."""
        check_model(name, self.by_name)
        return self.by_name[name]

    def apply_policy(self, policy: PolicyDocument) -> None:
        for entry in self:
            entry.service.apply_policy(policy)

    def with_target(self, name: str) -> list[RoutingService]:
        """The services of every model that has a target named ``name``."""
        return [m.service for m in self if m.service.targets.get(name) is not None]

    def snapshot(self) -> dict[str, Any]:
        """``/v1/targets``: every (model, target) with its model named; the first model's
        executor, exploration and ledger at the top (as with one model), each model's under
        ``models``."""
        targets = []
        models = {}
        for entry in self:
            snap = entry.service.snapshot()
            targets += [{"model": entry.model.name, **t} for t in snap["targets"]]
            models[entry.model.name] = {k: v for k, v in snap.items() if k != "targets"}
        return {**models[self.first.model.name], "targets": targets, "models": models}

    def all_stats(self) -> dict[str, Any]:
        return {"model_stats": [e for m in self for e in m.stats.model_stats()["model_stats"]]}

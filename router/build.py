"""The router's targets built from configuration, one set per served model: the stack
config's cloud (that model's deployment), edges and external servers, and a worker that
joined the fleet, each with a fresh estimator and a transport that speaks that model."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ray.serve.handle import DeploymentHandle

from edgeroute import contract
from edgeroute.config import RouterSettings, StackConfig
from edgeroute.models.catalog import ServedModel
from edgeroute.signature import blank_batch, bytes_per_row
from router.estimator import EstimatorSettings, TargetEstimator
from router.fleet import Member, hosting
from router.fleet_actor import FleetSync
from router.models import ModelService, ModelServices
from router.targets import Target, TargetSet, make_target
from router.transport import HandleTransport, HttpTransport


def target_estimator(settings: RouterSettings, name: str, tier: str, quality: str,
                     concurrency: int) -> TargetEstimator:
    """A fresh estimator: the prior latency until probes and answers come in. Its tables are
    rebuilt by the replica's maintenance loop, never on a request's path."""
    return TargetEstimator(
        name=name, tier=tier, quality=quality,  # type: ignore[arg-type]
        prior_latency_ms=settings.prior_latency_ms,
        settings=EstimatorSettings(probe_interval_s=settings.probe_interval_ms / 1000,
                                   concurrency=concurrency, rebuild_on_read=False),
    )


def fleet_target(member: Member, settings: RouterSettings,
                 served: ServedModel | None = None) -> Target:
    """The target for a worker that joined the fleet (reached over HTTP at its URL), for
    one model it hosts (default: the bundled ``digits``)."""
    signature = served.signature if served else contract.SIGNATURE
    confidence = served.confidence_output if served else contract.OUTPUT_PROBABILITIES
    estimator = target_estimator(settings, member.name, member.tier, member.quality,
                                 member.concurrency)
    estimator.bytes_per_row = bytes_per_row(signature)
    return make_target(member.name, member.tier, member.quality, member.link,
                       HttpTransport(member.name, member.url, signature=signature,
                                     confidence_output=confidence), member.url,
                       estimator, trial=blank_batch(signature))


def fleet_syncs(models: ModelServices, read: Callable[[], Awaitable[list[dict[str, Any]]]],
                settings: RouterSettings) -> list[FleetSync]:
    """One fleet sync per model: ``read()`` gives the live members; each becomes a target
    of the models it hosts (:func:`router.fleet.hosting`)."""
    first = models.first.model.name

    def sync(served: ModelService) -> FleetSync:
        async def members() -> list[dict[str, Any]]:
            return hosting(await read(), served.model.name, first)

        return FleetSync(members, served.service,
                         lambda member: fleet_target(member, settings, served.model),
                         interval_s=settings.fleet_sync_interval_ms / 1000)

    return [sync(m) for m in models]


def build_targets(config: StackConfig, cloud: DeploymentHandle,
                  served: ServedModel | None = None) -> TargetSet:
    """The targets of one model (default: the bundled ``digits``); ``cloud`` is that model's
    deployment. An external server is a target of the model it names (default: the
    config's first model)."""
    settings = config.router
    signature = served.signature if served else contract.SIGNATURE
    confidence = served.confidence_output if served else contract.OUTPUT_PROBABILITIES
    trial = blank_batch(signature)

    def estimator(name: str, tier: str, quality: str, concurrency: int) -> TargetEstimator:
        fresh = target_estimator(settings, name, tier, quality, concurrency)
        fresh.bytes_per_row = bytes_per_row(signature)
        return fresh

    c = config.cloud
    targets: list[Target] = [make_target(
        c.name, "cloud", "large", c.link, HandleTransport(
            c.name, cloud, signature=signature, confidence_output=confidence),
        f"serve:{config.cloud_deployment(signature.name)}",
        estimator(c.name, "cloud", "large", c.max_batch_size),
        scales_to_zero=c.autoscaling.min_replicas == 0, trial=trial,
    )]
    for e in config.edges:
        targets.append(make_target(e.name, "edge", "small", e.link,
                                   HttpTransport(e.name, e.url, signature=signature,
                                                 confidence_output=confidence), e.url,
                                   estimator(e.name, "edge", "small", e.concurrency),
                                   trial=trial))
    for x in (x for x in config.external
              if (x.model or config.models[0].name) == signature.name):
        targets.append(make_target(x.name, x.tier, x.quality, x.link,
                                   HttpTransport(x.name, x.url, signature=signature,
                                                 confidence_output=confidence,
                                                 binary=x.binary,
                                                 output_names=x.output_names), x.url,
                                   estimator(x.name, x.tier, x.quality, 8), trial=trial))
    return TargetSet(targets, probe_interval_s=settings.probe_interval_ms / 1000)

"""The router's targets built from configuration: the stack config's cloud, edges and
external servers, and a worker that joined the fleet, each with a fresh estimator."""

from __future__ import annotations

from ray.serve.handle import DeploymentHandle

from edgeroute.config import RouterSettings, StackConfig
from router.estimator import EstimatorSettings, TargetEstimator
from router.fleet import Member
from router.targets import Target, TargetSet, make_target
from router.transport import HandleTransport, HttpTransport


def target_estimator(settings: RouterSettings, name: str, tier: str, quality: str,
                     concurrency: int) -> TargetEstimator:
    """A fresh estimator: the prior latency until probes and answers come in."""
    return TargetEstimator(
        name=name, tier=tier, quality=quality,  # type: ignore[arg-type]
        prior_latency_ms=settings.prior_latency_ms,
        settings=EstimatorSettings(probe_interval_s=settings.probe_interval_ms / 1000,
                                   concurrency=concurrency),
    )


def fleet_target(member: Member, settings: RouterSettings) -> Target:
    """The target for a worker that joined the fleet (reached over HTTP at its URL)."""
    return make_target(member.name, member.tier, member.quality, member.link,
                       HttpTransport(member.name, member.url), member.url,
                       target_estimator(settings, member.name, member.tier, member.quality,
                                        member.concurrency))


def build_targets(config: StackConfig, cloud: DeploymentHandle) -> TargetSet:
    settings = config.router

    def estimator(name: str, tier: str, quality: str, concurrency: int) -> TargetEstimator:
        return target_estimator(settings, name, tier, quality, concurrency)

    c = config.cloud
    targets: list[Target] = [make_target(
        c.name, "cloud", "large", c.link, HandleTransport(c.name, cloud), f"serve:{c.name}",
        estimator(c.name, "cloud", "large", c.max_batch_size),
        scales_to_zero=c.autoscaling.min_replicas == 0,
    )]
    for e in config.edges:
        targets.append(make_target(e.name, "edge", "small", e.link, HttpTransport(e.name, e.url),
                                   e.url, estimator(e.name, "edge", "small", e.concurrency)))
    for x in config.external:
        targets.append(make_target(x.name, x.tier, x.quality, x.link,
                                   HttpTransport(x.name, x.url), x.url,
                                   estimator(x.name, x.tier, x.quality, 8)))
    return TargetSet(targets, probe_interval_s=settings.probe_interval_ms / 1000)

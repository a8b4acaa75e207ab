"""Stack configuration: targets, link emulation, router and cloud settings.

Every model is frozen and validated; units are in the field names. The defaults
of :class:`StackConfig` are the embedded default stack (two edge workers with
different links, one cloud deployment); ``infra/stack.yaml`` spells the same
values out for ops to copy and edit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

Tier = Literal["edge", "cloud"]
Quality = Literal["small", "large"]
"""What a target's model is: the distilled student ("small") or the teacher ("large")."""


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class LinkProfile(Frozen):
    """Emulated network between the router and a target, applied in the transport layer.

    One exchange costs ``base_ms`` plus half-normal jitter of scale ``jitter_ms``;
    with ``spike_probability`` the whole round trip is multiplied by
    ``spike_multiplier``; with ``loss_probability`` the exchange is lost (the
    caller sees a connection failure after one round trip); ``partitioned``
    blackholes the link (attempts hang until their timeout).
    """

    base_ms: float = Field(0.0, ge=0, le=60_000)
    jitter_ms: float = Field(0.0, ge=0, le=60_000)
    spike_probability: float = Field(0.0, ge=0, le=1)
    spike_multiplier: float = Field(1.0, ge=1, le=1_000)
    loss_probability: float = Field(0.0, ge=0, le=1)
    partitioned: bool = False


class EdgeWorker(Frozen):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    model: Literal["student", "student-int8"] = "student-int8"
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    concurrency: int = Field(1, ge=1, le=64)
    max_queue: int = Field(32, ge=0, le=10_000)
    service_delay_ms: float = Field(0.0, ge=0, le=60_000)
    """Emulated extra compute per request (a slower device than this machine); 0: none."""
    link: LinkProfile = LinkProfile()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class ExternalTarget(Frozen):
    """Any OIP v2 server (Triton, KServe, MLServer) used as a target over HTTP."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    url: str
    tier: Tier = "cloud"
    quality: Quality = "large"
    link: LinkProfile = LinkProfile()


class Autoscaling(Frozen):
    min_replicas: int = Field(1, ge=0, le=100)
    max_replicas: int = Field(1, ge=1, le=100)
    initial_replicas: int | None = Field(None, ge=0, le=100)
    target_ongoing_requests: float = Field(8.0, gt=0)
    upscale_delay_s: float = Field(2.0, ge=0)
    downscale_delay_s: float = Field(30.0, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


class CloudDeployment(Frozen):
    name: str = "cloud"
    model: Literal["teacher"] = "teacher"
    num_gpus: float = Field(0.0, ge=0, le=8)
    """GPUs per replica; with 0 the replica runs onnxruntime on the CPU."""
    num_cpus: float = Field(0.0, ge=0, le=64)
    threads: int = Field(1, ge=1, le=64)
    max_batch_size: int = Field(32, ge=1, le=1024)
    batch_wait_timeout_ms: float = Field(4.0, ge=0, le=1000)
    autoscaling: Autoscaling = Autoscaling()
    link: LinkProfile = LinkProfile(base_ms=30.0, jitter_ms=6.0, spike_probability=0.01,
                                    spike_multiplier=4.0)


class RouterSettings(Frozen):
    max_deadline_ms: float = Field(60_000.0, gt=0, le=600_000)
    max_batch: int = Field(256, ge=1, le=4096)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    num_replicas: int = Field(1, ge=1, le=64)
    probe_interval_ms: float = Field(1000.0, ge=50)
    failure_cooldown_ms: float = Field(1000.0, ge=0)
    prior_latency_ms: float = Field(50.0, ge=0)
    """Latency assumed for a target before anything has been observed of it."""
    min_attempt_ms: float = Field(2.0, ge=0)
    """An attempt is not started with less of the deadline left than this."""
    admin_token: str | None = None
    """Bearer token for the admin endpoints; ``edgeroute up`` generates one when unset."""


def _default_edges() -> list[EdgeWorker]:
    return [
        EdgeWorker(
            name="edge-a",
            port=8101,
            link=LinkProfile(base_ms=6.0, jitter_ms=2.0, spike_probability=0.01,
                             spike_multiplier=5.0),
        ),
        EdgeWorker(
            name="edge-b",
            port=8102,
            model="student",
            link=LinkProfile(base_ms=18.0, jitter_ms=5.0, spike_probability=0.03,
                             spike_multiplier=4.0, loss_probability=0.002),
        ),
    ]


class StackConfig(Frozen):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    router: RouterSettings = RouterSettings()
    cloud: CloudDeployment = CloudDeployment()
    edges: list[EdgeWorker] = Field(default_factory=_default_edges)
    external: list[ExternalTarget] = []
    edge_restart_delay_s: float | None = Field(5.0, ge=0, le=3600)
    """The supervisor restarts a dead edge worker after this long; ``null`` never does."""

    @model_validator(mode="after")
    def _unique(self) -> StackConfig:
        names = [self.cloud.name, *(e.name for e in self.edges), *(x.name for x in self.external)]
        if len(set(names)) != len(names):
            raise ValueError(f"target names must be unique, got {names}")
        ports = [self.port, *(e.port for e in self.edges)]
        if len(set(ports)) != len(ports):
            raise ValueError(f"router and edge ports must differ, got {ports}")
        return self

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def target_names(self) -> list[str]:
        return [self.cloud.name, *(e.name for e in self.edges), *(x.name for x in self.external)]

    @classmethod
    def load(cls, path: Path | None) -> StackConfig:
        """Read a YAML file; ``None`` gives the embedded default."""
        if path is None:
            return cls()
        document = yaml.safe_load(Path(path).read_text()) or {}
        return cls.model_validate(document)


DEFAULT_CONFIG_PATH = Path("infra/stack.yaml")

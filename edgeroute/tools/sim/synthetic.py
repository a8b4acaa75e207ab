"""The synthetic world a simulation runs in: sites, the cloud, who calls whom, what fails when.

Everything here is drawn once from the scenario's seed, before the first
request, and never reads the router's state: the router learns the world only
from the outcomes of its calls and probes, as it does on the real stack.

* **Sites** sit at random points of a unit square; each request originates at
  one site (a permuted Zipf popularity) and may be placed on that site, its
  ``neighbours`` nearest sites, or the cloud (a user reaches its own site, a
  couple of nearby ones and the cloud region, not every site).
* A site's latency is network (lognormal, with stragglers at
  ``straggler_factor`` times) + queue + service (lognormal). The queue comes
  from ``concurrency`` slots, sized so that a site's own demand keeps it
  ``utilisation`` busy (drawn per site, some above 1: such a site cannot serve
  all of its own traffic) with at most ``queue_slots`` requests' worth of
  waiting; beyond that it refuses with a 503.
* The cloud is one autoscaled target: a longer network leg, fast GPU service,
  no queue; it may be down in ``cloud_outage_s``.
* **Failures**: each site goes down (connection refused, learned after one
  network leg) or hangs (no answer until the caller gives up) for lognormal
  stretches, so that about ``outage_share`` of site-time is out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

DOWN = 1
HANG = 2


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Lognormal(_Frozen):
    median_ms: float = Field(gt=0)
    sigma: float = Field(ge=0)


class Scenario(_Frozen):
    """What is simulated. Times are virtual; units are in the names."""

    sites: int = Field(1000, ge=2)
    requests: int = Field(1_000_000, ge=1)
    rate_rps: float = Field(20_000.0, gt=0)
    """All sites together; the run lasts ``requests / rate_rps`` virtual seconds."""
    seed: int = 0
    """Draws the world, the requests and every replica's randomness: a seed is a run."""
    neighbours: int = Field(2, ge=0)
    """Sites near a request's origin it may also be placed on."""
    zipf_exponent: float = 0.9
    """Site popularity falls as rank to this power (a few busy sites, a long tail)."""
    deadlines_ms: tuple[float, ...] = (40.0, 80.0, 250.0, 1000.0)
    deadline_weights: tuple[float, ...] = (0.2, 0.3, 0.35, 0.15)
    high_quality_share: float = Field(0.2, ge=0, le=1)
    """Requests that need the large model (``quality=high``): only the cloud serves them."""
    confidence_beta: float = 20.0
    """The small model's top probability is Beta(``confidence_beta``, 1): 12% of its answers
    fall below the default cascade threshold of 0.9."""
    site_rtt_median_ms: tuple[float, float] = (3.0, 30.0)
    """Range (log-uniform) of the sites' median network time from the router."""
    site_rtt_sigma: float = 0.3
    site_service_median_ms: tuple[float, float] = (4.0, 15.0)
    site_service_sigma: float = 0.25
    utilisation: tuple[float, float] = (0.3, 1.2)
    """Range of the load a site's own demand alone would put on its slots."""
    queue_slots: int = 8
    cloud_rtt: Lognormal = Lognormal(median_ms=45.0, sigma=0.25)
    cloud_service: Lognormal = Lognormal(median_ms=3.0, sigma=0.2)
    straggler_probability: float = 0.01
    straggler_factor: float = 8.0
    outage_share: float = Field(0.03, ge=0, lt=1)
    outage_median_s: float = 8.0
    hang_share: float = 0.3
    """Outages that hang instead of refusing connections."""
    cloud_outage_s: tuple[float, float] | None = (0.7, 0.74)
    """Start and end of a cloud outage as shares of the run (``None``: none)."""
    refresh_interval_s: float = 1.0
    """The estimators' table rebuild interval (``EstimatorSettings.refresh_interval_s``)."""
    probe_interval_s: float = 1.0
    chunk_requests: int = 65_536
    """Requests drawn at once (memory stays bounded by a chunk, not by the run)."""

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        if self.sites <= self.neighbours:
            raise ValueError("sites must exceed neighbours")
        if len(self.deadlines_ms) != len(self.deadline_weights) or not self.deadlines_ms:
            raise ValueError("one weight per deadline")
        return self

    @property
    def duration_s(self) -> float:
        return self.requests / self.rate_rps


@dataclass(frozen=True)
class CloudScaling:
    """An autoscaled cloud with a start-up time: ``slots_per_replica`` calls at once per
    replica, replicas between ``min_replicas`` (0: scale to zero) and ``max_replicas``; a
    call that finds every slot busy (or no replica) starts one more, which answers after
    ``upscale_delay_ms`` + ``cold_start_ms``; replicas idle ``idle_ms`` go back to the
    minimum (Ray Serve's autoscaler and serverless platforms behave so)."""

    slots_per_replica: int
    min_replicas: int
    max_replicas: int
    cold_start_ms: float
    upscale_delay_ms: float
    idle_ms: float


@dataclass(frozen=True)
class Topology:
    """Per-target arrays; target ``i < sites`` is site ``i``, target ``sites`` is the cloud."""

    sites: int
    popularity_cdf: np.ndarray
    neighbours: np.ndarray
    """``(sites, k)``: each site's nearest other sites."""
    rtt_median_ms: np.ndarray
    rtt_sigma: np.ndarray
    service_median_ms: np.ndarray
    service_sigma: np.ndarray
    concurrency: np.ndarray
    max_wait_ms: np.ndarray
    """A site refuses a call that would wait longer than this (its queue is full)."""
    outages: dict[int, tuple[tuple[float, float, int], ...]] = field(default_factory=dict)
    """Per target: ``(start_s, end_s, DOWN or HANG)``, sorted."""
    target_names: tuple[str, ...] = ()
    """Names of the sites and the cloud, in target order (default ``site-NNNN``, ``cloud``)."""
    cloud_scaling: CloudScaling | None = None
    """``None``: the cloud serves every call at once (no queue, no start-up)."""

    @property
    def cloud(self) -> int:
        return self.sites

    def names(self) -> list[str]:
        if self.target_names:
            return list(self.target_names)
        return [f"site-{i:04d}" for i in range(self.sites)] + ["cloud"]

    def status(self, target: int, at_s: float) -> int:
        """0 while up, else ``DOWN`` or ``HANG``."""
        for start, end, kind in self.outages.get(target, ()):
            if start <= at_s < end:
                return kind
            if start > at_s:
                break
        return 0

    def down_share(self) -> float:
        """Share of site-time out, as drawn."""
        out = sum(end - start for t, spans in self.outages.items() if t < self.sites
                  for start, end, _ in spans)
        horizon = max((end for spans in self.outages.values() for _, end, _ in spans),
                      default=0.0)
        return out / (self.sites * horizon) if horizon else 0.0


def _popularity(s: Scenario, rng: np.random.Generator) -> np.ndarray:
    weights = 1.0 / np.arange(1, s.sites + 1) ** s.zipf_exponent
    weights = weights[rng.permutation(s.sites)]
    return weights / weights.sum()


def _neighbours(s: Scenario, rng: np.random.Generator) -> np.ndarray:
    points = rng.random((s.sites, 2))
    distance = ((points[:, None, :] - points[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(distance, np.inf)
    return np.argsort(distance, axis=1)[:, : s.neighbours]


def _outages(s: Scenario, rng: np.random.Generator) -> dict[int, tuple[tuple[float, float, int],
                                                                         ...]]:
    horizon = s.duration_s
    sigma = 0.6
    mean_s = s.outage_median_s * math.exp(sigma * sigma / 2)
    expected = s.outage_share * horizon / mean_s
    found: dict[int, tuple[tuple[float, float, int], ...]] = {}
    for site, count in enumerate(rng.poisson(expected, s.sites).tolist()):
        if count:
            starts = np.sort(rng.uniform(0.0, horizon, count))
            lengths = rng.lognormal(math.log(s.outage_median_s), sigma, count)
            kinds = np.where(rng.random(count) < s.hang_share, HANG, DOWN)
            found[site] = tuple(zip(starts.tolist(), (starts + lengths).tolist(),
                                    kinds.tolist(), strict=True))
    if s.cloud_outage_s is not None:
        start, end = s.cloud_outage_s
        found[s.sites] = ((start * horizon, end * horizon, DOWN),)
    return found


def build_topology(s: Scenario) -> Topology:
    """Draw the world of ``s`` from its seed."""
    rng = np.random.default_rng([s.seed, 1])
    popularity = _popularity(s, rng)
    lo, hi = s.site_rtt_median_ms
    rtt = np.exp(rng.uniform(math.log(lo), math.log(hi), s.sites))
    lo, hi = s.site_service_median_ms
    service = rng.uniform(lo, hi, s.sites)
    mean_service_s = service * math.exp(s.site_service_sigma**2 / 2) / 1000
    load = s.rate_rps * popularity * mean_service_s
    concurrency = np.maximum(np.ceil(load / rng.uniform(*s.utilisation, s.sites)), 1.0)
    max_wait = s.queue_slots * service / concurrency
    return Topology(
        sites=s.sites,
        popularity_cdf=np.cumsum(popularity),
        neighbours=_neighbours(s, rng),
        rtt_median_ms=np.append(rtt, s.cloud_rtt.median_ms),
        rtt_sigma=np.append(np.full(s.sites, s.site_rtt_sigma), s.cloud_rtt.sigma),
        service_median_ms=np.append(service, s.cloud_service.median_ms),
        service_sigma=np.append(np.full(s.sites, s.site_service_sigma), s.cloud_service.sigma),
        concurrency=np.append(concurrency, np.inf).astype(np.float64),
        max_wait_ms=np.append(max_wait, np.inf),
        outages=_outages(s, rng),
    )

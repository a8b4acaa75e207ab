"""The requests of a run, and every candidate's latency for each, drawn up front (seeded).

Each request's network and service time on each of its candidates are drawn
before any arm sees the request, from a generator seeded by the scenario seed
and the chunk's index: every arm (and the oracle) meets the same draws
(common random numbers), so their differences come from where they placed
requests, not from luck. Queueing is not drawn: it comes from the slots each
arm's own traffic fills (:mod:`edgeroute.tools.sim.world`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from edgeroute.tools.sim.synthetic import Scenario, Topology


@dataclass(frozen=True)
class Chunk:
    """Consecutive requests as plain lists (a scalar loop reads lists faster than arrays)."""

    first: int
    """Index of the first request in the run."""
    arrival_s: list[float]
    deadline_ms: list[float]
    high: list[bool]
    confidence: list[float]
    """The small model's top probability on this request (the cascade's input)."""
    candidates: list[list[int]]
    """Target ids: the origin site, its neighbours, the cloud."""
    network_ms: list[list[float]]
    service_ms: list[list[float]]

    def __len__(self) -> int:
        return len(self.arrival_s)


def _draw(s: Scenario, topo: Topology, index: int, start_s: float,
          count: int) -> tuple[Chunk, float]:
    rng = np.random.default_rng([s.seed, 2, index])
    arrival = start_s + np.cumsum(rng.exponential(1.0 / s.rate_rps, count))
    origin = np.minimum(np.searchsorted(topo.popularity_cdf, rng.random(count)), s.sites - 1)
    cloud = np.full((count, 1), topo.cloud)
    candidates = np.hstack([origin[:, None], topo.neighbours[origin], cloud])
    weights = np.asarray(s.deadline_weights) / sum(s.deadline_weights)
    deadline = np.asarray(s.deadlines_ms)[rng.choice(len(weights), count, p=weights)]
    network = rng.lognormal(np.log(topo.rtt_median_ms[candidates]), topo.rtt_sigma[candidates])
    network *= np.where(rng.random(candidates.shape) < s.straggler_probability,
                        s.straggler_factor, 1.0)
    service = rng.lognormal(np.log(topo.service_median_ms[candidates]),
                            topo.service_sigma[candidates])
    chunk = Chunk(
        first=index * s.chunk_requests,
        arrival_s=arrival.tolist(),
        deadline_ms=deadline.tolist(),
        high=(rng.random(count) < s.high_quality_share).tolist(),
        confidence=rng.beta(s.confidence_beta, 1.0, count).tolist(),
        candidates=candidates.tolist(),
        network_ms=network.tolist(),
        service_ms=service.tolist(),
    )
    return chunk, float(arrival[-1])


def chunks(s: Scenario, topo: Topology) -> Iterator[Chunk]:
    """The run's requests in arrival order, ``chunk_requests`` at a time."""
    start_s, index = 0.0, 0
    while index * s.chunk_requests < s.requests:
        count = min(s.chunk_requests, s.requests - index * s.chunk_requests)
        chunk, start_s = _draw(s, topo, index, start_s, count)
        yield chunk
        index += 1

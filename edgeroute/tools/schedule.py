"""What a load run will send, drawn up front from seeds: phases of arrivals, the request
mix, and the resulting schedule of requests and events.

Drawing everything before the run is what lets the load stay open-loop (nothing about the
schedule depends on answers) and lets several runs replay the very same requests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from edgeroute.contract import MODEL_NAME
from edgeroute.dataset import Split


@dataclass(frozen=True)
class Phase:
    """``duration_s`` of Poisson arrivals at ``rate_rps``, or, with ``end_rate_rps``, at a
    rate that moves linearly from one to the other (a ramp, as the slopes of a diurnal
    cycle); ``events`` are (offset_s, name)."""

    name: str
    duration_s: float
    rate_rps: float
    events: tuple[tuple[float, str], ...] = ()
    end_rate_rps: float | None = None

    def arrival_times(self, rng: np.random.Generator) -> np.ndarray:
        """Sorted send offsets: a Poisson count, placed by the inverse of the rate's
        cumulative integral (uniform for a constant rate)."""
        r0 = self.rate_rps
        r1 = r0 if self.end_rate_rps is None else self.end_rate_rps
        d = self.duration_s
        count = int(rng.poisson((r0 + r1) / 2 * d))
        u = np.sort(rng.uniform(0.0, 1.0, count))
        if abs(r1 - r0) < 1e-12:
            return u * d
        # Solve r0*t + (r1-r0)*t^2/(2d) = u*(r0+r1)*d/2 for t in [0, d].
        slope = (r1 - r0) / d
        return (np.sqrt(r0 * r0 + slope * u * (r0 + r1) * d) - r0) / slope

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a phase needs a name")
        if not self.duration_s > 0:
            raise ValueError(f"phase {self.name!r}: duration_s must be positive")
        if not self.rate_rps >= 0:
            raise ValueError(f"phase {self.name!r}: rate_rps must be non-negative")
        if self.end_rate_rps is not None and not self.end_rate_rps >= 0:
            raise ValueError(f"phase {self.name!r}: end_rate_rps must be non-negative")
        for offset, _ in self.events:
            if not 0 <= offset <= self.duration_s:
                raise ValueError(f"phase {self.name!r}: event offset {offset} outside the phase")


@dataclass(frozen=True)
class RequestMix:
    """Deadlines drawn by weight from ``deadlines_ms`` ((deadline_ms, weight), ...);
    a ``high_quality_share`` of requests ask for ``quality: high``, the rest ``any``;
    ``models`` ((model, share), ...), if given, the share of requests for each model
    (none: every request is for the bundled ``digits``)."""

    deadlines_ms: tuple[tuple[float, float], ...] = ((250.0, 1.0),)
    high_quality_share: float = 0.0
    seed: int = 0
    models: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if not self.deadlines_ms:
            raise ValueError("deadlines_ms must not be empty")
        if any(d <= 0 or w < 0 for d, w in self.deadlines_ms):
            raise ValueError("deadlines must be positive and weights non-negative")
        if sum(w for _, w in self.deadlines_ms) <= 0:
            raise ValueError("deadline weights must not all be zero")
        if not 0 <= self.high_quality_share <= 1:
            raise ValueError("high_quality_share must lie in [0, 1]")
        shares = [share for _, share in self.models]
        if self.models and (any(not share > 0 for share in shares)
                            or not math.isclose(sum(shares), 1.0, abs_tol=1e-6)):
            raise ValueError("model shares must be positive and add up to 1")
        if len({name for name, _ in self.models}) != len(self.models):
            raise ValueError("each model may have one share only")


@dataclass(frozen=True)
class Planned:
    phase: str
    at_s: float
    row: int
    label: int
    deadline_ms: float
    quality: str
    seq: int = 0
    """Position in the schedule: the same request in every replay of one plan."""
    model: str = MODEL_NAME
    """The model the request is for; ``row`` indexes that model's held-out rows."""


@dataclass(frozen=True)
class Schedule:
    """Requests and events in time order; offsets are seconds since the run's start."""

    requests: tuple[Planned, ...]
    events: tuple[tuple[float, str], ...]
    phases: tuple[tuple[str, float, float], ...]


def plan(phases: Sequence[Phase], data: Split, mix: RequestMix, seed: int = 0,
         labels: Mapping[str, np.ndarray] | None = None) -> Schedule:
    """Draw the whole run: each phase gets its own seeded stream, so editing one
    phase leaves the others' arrivals unchanged. With ``mix.models``, each request's model
    is drawn by share from a stream of its own (the arrivals, deadlines and qualities stay
    those of a one-model run), and a request for a model other than ``digits`` (whose rows
    are ``data``'s) gets a row of that model's held-out ``labels``."""
    labels = labels or {}
    missing = [m for m, _ in mix.models if m != MODEL_NAME and m not in labels]
    if missing:
        raise ValueError(f"no held-out rows for the models {missing}")
    names = [p.name for p in phases]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"phases must be given, with unique names; got {names}")
    deadlines = np.array([d for d, _ in mix.deadlines_ms], dtype=float)
    weights = np.array([w for _, w in mix.deadlines_ms], dtype=float)
    requests: list[Planned] = []
    events: list[tuple[float, str]] = []
    bounds: list[tuple[str, float, float]] = []
    start = 0.0
    for index, phase in enumerate(phases):
        arrivals = np.random.default_rng([seed, index])
        choices = np.random.default_rng([mix.seed, index])
        times = phase.arrival_times(arrivals)
        count = len(times)
        rows = arrivals.integers(0, len(data.y_test), count)
        picked = choices.choice(deadlines, size=count, p=weights / weights.sum())
        high = choices.random(count) < mix.high_quality_share
        first = len(requests)
        drawn = [
            Planned(phase.name, start + float(t), int(row), int(data.y_test[row]), float(d),
                    "high" if is_high else "any", first + i)
            for i, (t, row, d, is_high) in enumerate(zip(times, rows, picked, high, strict=True))
        ]
        requests.extend(_with_models(drawn, mix, labels, [mix.seed, index, 1])
                        if mix.models else drawn)
        events.extend((start + offset, name) for offset, name in phase.events)
        bounds.append((phase.name, start, start + phase.duration_s))
        start += phase.duration_s
    return Schedule(tuple(requests), tuple(sorted(events, key=lambda e: e[0])), tuple(bounds))


def _with_models(drawn: list[Planned], mix: RequestMix, labels: Mapping[str, np.ndarray],
                 stream: list[int]) -> list[Planned]:
    """Each request's model drawn by share; a row of that model's own for all but digits."""
    rng = np.random.default_rng(stream)
    names = [name for name, _ in mix.models]
    shares = np.array([share for _, share in mix.models])
    picks = rng.choice(len(names), size=len(drawn), p=shares / shares.sum())
    own = {m: rng.integers(0, len(labels[m]), len(drawn)) for m in names if m != MODEL_NAME}
    placed = []
    for i, (p, pick) in enumerate(zip(drawn, picks, strict=True)):
        model = names[pick]
        if model == MODEL_NAME:
            placed.append(replace(p, model=model))
        else:
            row = int(own[model][i])
            placed.append(replace(p, model=model, row=row, label=int(labels[model][row])))
    return placed

"""Where a batch job's next chunks go: the cheapest lanes that still finish by the deadline.

A :class:`Lane` is one target as a job sees it at one instant: what a row costs there
(the price book, at the lane's chunk size), how many rows a second one call at a time
gets through (observed on this job's calls, else the target's estimate), how many calls
it may carry for jobs at all (``capacity``) and how many it may take now (``free``: an
edge busy with online traffic has none, so online requests always go first).

:func:`plan` ranks lanes by cost per row and takes them in that order until their
throughput finishes the pending rows within the time left (with a margin), so that a
job with hours to spare runs on the cheapest lane alone, and one with little time adds
the dearer lanes it needs (the cloud in large batches); lanes as cheap as one taken are
taken too. When even every lane together
cannot finish in time the job says so at once (``will_miss_deadline``) and runs on all.
Pure: no clock, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeroute.config import Tier

COST_TIE_RATIO = 0.02
"""Lanes whose cost per row is within this share of the dearest lane taken are taken too:
as cheap, they finish the job sooner for nothing (two idle edges at one price)."""
MARGIN = 0.8
"""Lanes are planned to finish the pending rows in this share of the time left: estimates
err and online traffic takes its turn first."""


@dataclass(frozen=True)
class Lane:
    name: str
    tier: Tier
    chunks_per_call: int
    """Job chunks one call carries (the cloud takes large batches)."""
    cost_per_row_usd: float
    rows_per_s: float
    """Throughput of one call at a time (0: unknown yet)."""
    capacity: int
    """Calls for jobs it may carry at once when free (0: unavailable)."""
    free: int
    """Calls it may take now."""

    @property
    def throughput(self) -> float:
        return self.rows_per_s * self.capacity


@dataclass(frozen=True)
class Placement:
    lanes: tuple[Lane, ...]
    """The lanes to use now, cheapest first."""
    finish_s: float | None
    """Predicted seconds until the pending rows are done on those lanes (``None``: no lane
    has a known throughput yet)."""
    will_miss_deadline: bool


def plan(lanes: list[Lane], pending_rows: int, time_left_s: float) -> Placement:
    """The lanes to place the next chunks on (see the module doc)."""
    usable = sorted((lane for lane in lanes if lane.capacity > 0),
                    key=lambda lane: (lane.cost_per_row_usd, -lane.rows_per_s, lane.name))
    if not usable or pending_rows <= 0:
        return Placement((), 0.0 if pending_rows <= 0 else None, False)
    chosen: list[Lane] = []
    throughput = 0.0
    for lane in usable:
        chosen.append(lane)
        if lane.rows_per_s <= 0:
            continue  # unmeasured: try it, it may be the answer
        throughput += lane.throughput
        if pending_rows <= throughput * max(time_left_s, 0.0) * MARGIN:
            break
    dearest = max(lane.cost_per_row_usd for lane in chosen)
    chosen += [lane for lane in usable[len(chosen):]
               if lane.cost_per_row_usd <= dearest * (1 + COST_TIE_RATIO)]
    throughput = sum(lane.throughput for lane in chosen)
    known = sum(lane.throughput for lane in usable)
    finish_s = pending_rows / throughput if throughput > 0 else None
    best_s = pending_rows / known if known > 0 else None
    will_miss = time_left_s <= 0 or (best_s is not None and best_s > time_left_s
                                     and all(lane.rows_per_s > 0 for lane in usable))
    return Placement(tuple(chosen), finish_s, will_miss)

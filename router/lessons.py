"""What one upstream call teaches a target's breaker and estimator: the outcome classifier.

The router's calls (:mod:`router.calls`) and the simulator's
(:mod:`edgeroute.tools.sim.replica`) both describe a call that ended as an
:class:`Ended` and learn from it through :func:`learn`, so the same call
teaches both the same thing. The rules (:func:`classify`):

* an answer: a success for the breaker, timed by the call's time less the
  router's own lateness (never less than the target's own service and queue
  time), over its ``slow_call_ms`` a slow one; a latency sample for the
  estimator, unless the router's loop ran late during the call
  (:func:`router.lag.late`), when only its service and queue times are learned;
* a refusal or error a retry may cure (``failure``): the estimator hears of
  it; the breaker counts it as a failure, unless it said the target is full
  (``busy``: a 503 with ``Retry-After``) and the call was sent behind at least
  the target's concurrency of this router's own calls (``behind_own``): it
  queued behind this router's own load, and a herd the router let through
  must not eject a healthy target;
* a refusal a retry will not cure (``rejected``, a 4xx): the estimator hears of
  it, the breaker does not (Envoy's outlier detection counts 5xx and
  local-origin errors only, so a client cannot eject a target by sending
  requests it refuses);
* a timeout: the target's failure only if the call was overdue by the times
  its plan priced (:meth:`~router.plan.Plan.overdue`: the target's p99) and the
  router's loop did not run late during it; a tighter deadline says nothing
  about its health. An overdue timeout of a call sent behind the router's own
  calls is heard by the estimator (load moves elsewhere at once), not the
  breaker;
* a cancellation (the loser of a hedge, a client that went away): a slow call
  for the breaker if it had already run overdue, else nothing.

Pure logic: no clock, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

from router.breaker import Permit
from router.estimator import TargetEstimator
from router.lag import late
from router.plan import Plan

Outcome = Literal["success", "failure", "rejected", "timeout", "cancelled"]
BreakerLesson = Literal["success", "failure", "slow", "release"]
"""What the call's breaker permit settles as (``release``: it says nothing)."""
EstimatorLesson = Literal["sample", "untimed", "failure", "none"]
"""What the estimator learns: a latency sample, a success whose time is the router's own
delay as much as the target's (service and queue times only), a failure, or nothing."""


@dataclass(frozen=True, slots=True)
class Ended:
    """How one call ended, as the caller saw it (times in ms)."""

    target: str
    outcome: Outcome
    elapsed_ms: float
    """From when the call was sent until it ended."""
    timeout_ms: float = math.inf
    """The call's own timeout (a timeout is judged by it, not by how long the cut took)."""
    own_ms: float = 0.0
    """The router's own lateness during the call (its event loop's worst lag)."""
    behind_own: bool = False
    """Sent behind at least the target's concurrency of this router's own calls there."""
    busy: bool = False
    """A refusal that said the target is full (``Retry-After``)."""
    server_ms: float = 0.0
    queue_ms: float = 0.0
    reason: str = ""


class Lesson(NamedTuple):
    """What a call teaches: the breaker's verdict (and the time it judges a success by) and
    the estimator's."""

    breaker: BreakerLesson
    estimator: EstimatorLesson
    breaker_ms: float = 0.0


def overdue(plan: Plan | None, target: str, elapsed_ms: float) -> bool:
    """Whether a call without an answer after ``elapsed_ms`` is the target's failure."""
    return plan is None or plan.overdue(target, elapsed_ms)


def classify(ended: Ended, plan: Plan | None) -> Lesson:
    """The lesson of ``ended``, a call of ``plan`` (``None``: no priced times, so every
    timeout is overdue)."""
    outcome, elapsed = ended.outcome, ended.elapsed_ms
    own_late = late(ended.own_ms, elapsed)
    if outcome == "success":
        timed = max(elapsed - ended.own_ms, ended.server_ms + ended.queue_ms)
        return Lesson("success", "untimed" if own_late else "sample", timed)
    if outcome == "failure":
        spared = ended.busy and ended.behind_own
        return Lesson("release" if spared else "failure", "failure")
    if outcome == "rejected":
        return Lesson("release", "failure")
    if outcome == "timeout":
        if own_late or not overdue(plan, ended.target, ended.timeout_ms):
            return Lesson("release", "none")
        return Lesson("release" if ended.behind_own else "failure", "failure")
    if not own_late and overdue(plan, ended.target, elapsed):
        return Lesson("slow", "none")
    return Lesson("release", "none")


def learn(ended: Ended, plan: Plan | None, permit: Permit, estimator: TargetEstimator, *,
          rows: int = 1, ahead: int = 0) -> Lesson:
    """Classify ``ended`` and settle ``permit`` and teach ``estimator`` by it (``rows``:
    the batch the answer served; ``ahead``: calls in flight there when it was sent)."""
    lesson = classify(ended, plan)
    reason = ended.reason or _REASONS[ended.outcome]
    if lesson.breaker == "success":
        permit.success(lesson.breaker_ms)
    elif lesson.breaker == "failure":
        permit.failure(reason)
    elif lesson.breaker == "slow":
        permit.slow(reason)
    else:
        permit.release()
    if lesson.estimator == "sample":
        estimator.observe_success(ended.elapsed_ms, ended.server_ms, ended.queue_ms, rows, ahead)
    elif lesson.estimator == "untimed":
        estimator.observe_untimed_success(ended.server_ms, ended.queue_ms, rows, ahead)
    elif lesson.estimator == "failure":
        estimator.observe_failure(reason, ended.elapsed_ms)
    return lesson


_REASONS: dict[Outcome, str] = {
    "success": "answered", "failure": "refused", "rejected": "rejected",
    "timeout": "no answer in time", "cancelled": "abandoned",
}

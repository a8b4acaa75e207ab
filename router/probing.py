"""The prober's rules: which targets are probed, what a probe teaches, when a trial call is made.

The router's probe loop (:class:`router.targets.TargetSet`) and the simulator's
(:mod:`edgeroute.tools.sim.replica`) both follow these, so a probe teaches both
the same thing:

* **Which.** A target is probed when it is idle (no call in flight) for a probe
  interval (:meth:`~router.estimator.TargetEstimator.needs_probe`), never while
  it scales to zero and no replica is known to run (a probe would wake it, and
  a GPU node with it). The loop probes every due target, awaits the round, then
  pauses ``PROBE_LOOP_S`` (less a quarter interval) before the next.
* **What it teaches** (:func:`learn_probe`). A probe that answered teaches its
  time as network (unless the router's own loop ran late during it) and tells
  the breaker, so that a restarted target is tried at once instead of after its
  whole ejection. A probe that failed counts as the target's failure, unless it
  timed out while the router's loop ran late (:func:`router.lag.late`).
* **The trial** (:func:`wants_trial`, :func:`learn_trial`). After a probe that
  answered, an idle target is sent one inference when its breaker is half-open
  (a target that is only ever a fallback might otherwise never close it) or
  closed while its last inference failed (health checks passing say nothing of
  inferences answered 503). Its outcome settles the breaker's permit.

Pure logic: no clock, no I/O.
"""

from __future__ import annotations

from router.breaker import CircuitBreaker, Permit
from router.estimator import TargetEstimator

PROBE_TIMEOUT_S = 1.0
"""Each probe's and trial's timeout."""
PROBE_LOOP_S = 0.1
"""The probe loop's longest pause between rounds (estimates are rebuilt in it too)."""


def due(estimator: TargetEstimator, now: float, *, scales_to_zero: bool = False) -> bool:
    """Whether the target of ``estimator`` is due a probe at ``now``."""
    return estimator.needs_probe(now) and not (scales_to_zero and not estimator.replicas)


def learn_probe(estimator: TargetEstimator, breaker: CircuitBreaker | None, *, answered: bool,
                elapsed_ms: float, router_late: bool = False, timed_out: bool = False,
                reason: str = "") -> bool:
    """Teach what a probe found; whether it counts as an answer (a trial may follow)."""
    if not answered:
        if timed_out and router_late:
            return False
        estimator.observe_failure(f"probe: {reason}", elapsed_ms)
        if breaker is not None:
            breaker.probe_failed()
        return False
    if not router_late:
        estimator.observe_probe(elapsed_ms)
    if breaker is not None:
        breaker.probe_succeeded()
    return True


def wants_trial(estimator: TargetEstimator, breaker: CircuitBreaker) -> bool:
    """Whether the prober should make a trial inference of the target now."""
    state = breaker.state
    return not estimator.in_flight and (
        state == "half_open" or (state == "closed" and not estimator.answering))


def learn_trial(permit: Permit, estimator: TargetEstimator, *, answered: bool,
                elapsed_ms: float, reason: str = "") -> None:
    """Settle a trial call's permit and teach its outcome."""
    if answered:
        permit.success(elapsed_ms)
        estimator.answered()
        return
    permit.failure(f"trial: {reason}")
    estimator.observe_failure(f"trial: {reason}", elapsed_ms)

"""Tenacity strategies for the executor's single retry layer, in tenacity's own style.

Each strategy is a small callable over tenacity's ``RetryCallState`` and
composes with ``|`` and ``&`` like tenacity's built-ins:

* :class:`stop_before_deadline`: stop when the next attempt, after its wait,
  would start with less than a useful slice of the request's deadline left.
  The wait counts: a ``Retry-After`` is honoured only when the deadline allows.
* :class:`stop_after_calls`: stop after so many upstream calls, hedges and
  escalations included (tenacity's ``attempt_number`` counts tries only).
* :class:`retry_if_retryable`: retry only a :class:`~router.transport.TargetError`
  that says it is retryable: never a ``TargetRejected`` (a 4xx), never a
  cancellation, never a bug.
* :class:`retry_if_routed`: retry only if a route for the next try exists
  (the executor's router picks the target and reserves it).
* :class:`wait_full_jitter`: exponential backoff with full jitter (AWS
  Architecture Blog, "Exponential Backoff and Jitter"), randomness injected.
* :class:`wait_planned`: the wait the route chose (0 for a fallback to a fresh target).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from tenacity import RetryCallState
from tenacity.retry import retry_base
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from router.transport import TargetError


class stop_before_deadline(stop_base):
    """Stop if ``clock() + upcoming sleep + min_attempt_s`` passes ``deadline_at``."""

    def __init__(
        self, deadline_at: float, *, clock: Callable[[], float], min_attempt_s: float = 0.0
    ) -> None:
        self.deadline_at = deadline_at
        self.clock = clock
        self.min_attempt_s = min_attempt_s

    def __call__(self, retry_state: RetryCallState) -> bool:
        starts_at = self.clock() + retry_state.upcoming_sleep
        return starts_at + self.min_attempt_s > self.deadline_at


class stop_after_calls(stop_base):
    """Stop once ``calls()`` upstream calls have been made."""

    def __init__(self, max_calls: int, calls: Callable[[], int]) -> None:
        self.max_calls = max_calls
        self.calls = calls

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.calls() >= self.max_calls


class retry_if_retryable(retry_base):
    """Retry a failed try only if it raised a retryable :class:`TargetError`."""

    def __call__(self, retry_state: RetryCallState) -> bool:
        outcome = retry_state.outcome
        if outcome is None or not outcome.failed:
            return False
        error = outcome.exception()
        return isinstance(error, TargetError) and error.retryable


class retry_if_routed(retry_base):
    """Retry only if ``route(retry_state)`` finds (and reserves) a target for the next try."""

    def __init__(self, route: Callable[[RetryCallState], bool]) -> None:
        self.route = route

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.route(retry_state)


class wait_full_jitter(wait_base):
    """Uniform in ``[0, min(max_s, base_s * 2**(attempt - 1))]``."""

    def __init__(self, base_s: float, max_s: float, rng: random.Random) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self.rng = rng

    def __call__(self, retry_state: RetryCallState) -> float:
        exponent = min(retry_state.attempt_number - 1, 30)
        return self.rng.uniform(0.0, min(self.max_s, self.base_s * 2.0**exponent))


class wait_planned(wait_base):
    """Wait what ``planned()`` says: the route decided it with the deadline in view."""

    def __init__(self, planned: Callable[[], float]) -> None:
        self.planned = planned

    def __call__(self, retry_state: RetryCallState) -> float:
        return self.planned()

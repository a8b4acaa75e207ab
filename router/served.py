"""What running a plan ends in: a :class:`Served` result, or a :class:`NotServed` failure.

:class:`Shed` (a ``NotServed``) is excess load refused before any upstream call: the
replica at its bound (``router``), every target of the plan at its bound (``target``), or a
request the router could not start in time (``late``). None of them carries an HTTP status:
the ingress answers each (:mod:`router.errors`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from router.targets import Target
from router.transport import Reply


@dataclass(frozen=True)
class Served:
    reply: Reply
    target: Target
    attempts: int
    """Upstream calls made for the request, hedge and escalation included."""
    retries: int
    """Tries after a failed one (fallbacks and retries of a target already tried)."""
    fallback: bool
    """Served by a target other than the primary, not as the winning hedge."""
    hedged: bool
    hedge_won: bool
    escalated: bool
    upstream_ms: float
    """Duration of the call that produced the reply."""
    elapsed_ms: float
    """The whole run, waits and losing calls included."""
    errors: tuple[str, ...] = ()


class NotServed(Exception):
    """No target answered, by the deadline (``deadline_passed``) or not; ``retry_after_s``:
    when trying again is worth it."""

    def __init__(self, message: str, *, attempts: int, deadline_passed: bool,
                 retry_after_s: float = 1.0, predicted_p_miss: float | None = None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.deadline_passed = deadline_passed
        self.retry_after_s = retry_after_s
        self.predicted_p_miss = predicted_p_miss
        """The P(miss) of the plan that ran, if one did: the answer carries it, so that a
        client can set what it observed against what was predicted."""


class Shed(NotServed):
    """Refused for load before any upstream call, at once."""

    def __init__(self, message: str, *, retry_after_s: float,
                 scope: Literal["router", "target", "late"],
                 predicted_p_miss: float | None = None) -> None:
        super().__init__(message, attempts=0, deadline_passed=False, retry_after_s=retry_after_s,
                         predicted_p_miss=predicted_p_miss)
        self.scope = scope

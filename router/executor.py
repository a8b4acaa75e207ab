"""Running a plan: the primary, then one fallback, each attempt bounded by the deadline left.

Guards against the failure a Ray handle shows when a node dies (the call
hangs) and against a dead edge worker (connection refused): every attempt is
wrapped in a timeout equal to the remaining deadline, and a failed attempt
hands over to the next target in the plan while time remains.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from router.placement import Plan
from router.targets import Target, TargetSet
from router.transport import Reply, TargetError, TargetTimeout, TargetUnavailable


@dataclass(frozen=True)
class Served:
    reply: Reply
    target: Target
    attempts: int
    upstream_ms: float
    errors: tuple[str, ...] = ()

    @property
    def fallback(self) -> bool:
        return self.attempts > 1


class NotServed(Exception):
    """Every attempt failed or no time was left; ``deadline_passed`` picks 504 over 503."""

    def __init__(self, message: str, *, attempts: int, deadline_passed: bool,
                 retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.deadline_passed = deadline_passed
        self.retry_after_s = retry_after_s


@dataclass
class Executor:
    targets: TargetSet
    max_attempts: int = 2
    min_attempt_ms: float = 2.0
    clock: Callable[[], float] = field(default=time.monotonic)

    async def run(self, plan: Plan, x: np.ndarray, deadline_at: float) -> Served:
        errors: list[str] = []
        attempts = 0
        retry_after = 1.0
        for candidate in plan.order[: self.max_attempts]:
            remaining_s = deadline_at - self.clock()
            if remaining_s * 1000 < self.min_attempt_ms:
                break
            target = self.targets.targets[candidate.name]
            attempts += 1
            try:
                reply, upstream_ms = await self._attempt(target, x, remaining_s)
            except TargetError as exc:
                errors.append(str(exc))
                if isinstance(exc, TargetUnavailable) and exc.retry_after_s:
                    retry_after = max(retry_after, exc.retry_after_s)
                continue
            return Served(reply, target, attempts, upstream_ms, tuple(errors))
        passed = self.clock() >= deadline_at - self.min_attempt_ms / 1000
        detail = "; ".join(errors) if errors else plan.reason
        what = "deadline exceeded" if passed else "no target could serve the request"
        raise NotServed(f"{what} after {attempts} attempt(s): {detail}", attempts=attempts,
                        deadline_passed=passed, retry_after_s=retry_after)

    async def _attempt(
        self, target: Target, x: np.ndarray, timeout_s: float
    ) -> tuple[Reply, float]:
        estimator = target.estimator
        estimator.in_flight += 1
        started = self.clock()
        try:
            reply = await asyncio.wait_for(target.transport.infer(x, timeout_s), timeout_s)
        except (asyncio.TimeoutError, TargetTimeout):
            reason = f"no answer within {timeout_s * 1000:.0f} ms"
            if self._ample(target, timeout_s):
                estimator.observe_failure(reason)
            raise TargetTimeout(target.name, reason) from None
        except TargetError as exc:
            estimator.observe_failure(exc.reason)
            raise
        finally:
            estimator.in_flight -= 1
        total_ms = (self.clock() - started) * 1000
        estimator.observe_success(total_ms, reply.server_ms, reply.queue_ms, reply.batch_rows)
        return reply, total_ms

    @staticmethod
    def _ample(target: Target, timeout_s: float) -> bool:
        """A timeout counts against a target only if it had twice its predicted upper latency:
        a deadline tighter than that says nothing about the target's health."""
        return timeout_s * 1000 >= 2 * target.estimator.predict().upper_ms()

"""One upstream call, and a race of calls (a hedge): bounded in time, cancelled cleanly.

A call reports its outcome to the target's breaker and estimator exactly once:

* an answer: a success (a slow one if over the breaker's ``slow_call_ms``);
* a retryable :class:`~router.transport.TargetError`: a failure;
* a ``TargetRejected`` (4xx): the estimator hears of it, the breaker does not
  (Envoy's outlier detection counts 5xx and local-origin errors only, so a
  client cannot eject a target by sending requests it refuses);
* a timeout: a failure only if the call was overdue, by the times its plan
  priced (:meth:`~router.plan.Plan.overdue`: the target's p99); a
  tighter deadline says nothing about its health;
* a timeout, or a refusal with ``Retry-After`` (the target is full), of a call
  sent behind at least the target's concurrency of this router's own calls
  there: the estimator hears of it (load moves elsewhere at once), the breaker
  does not. The call queued behind this router's own load; a herd the router
  let through must not eject a healthy target;
* a cancellation (the loser of a hedge, a client that went away): a slow call
  if it had already run that long, else nothing.

A call's time counts from the moment it is sent (its task runs), never from when
the request arrived or the call was planned, and its timeout runs from then too
(cut to the request's deadline). Time the router itself made the call wait is not
the target's: when the replica's event loop ran late during a call
(:class:`~router.lag.LoopLag`, :func:`~router.lag.late`: by at least 5 ms and a
tenth of the call's time), a timeout or a slow answer is not held against
the target and its latency is not learned; the breaker's slow-call check sees the
call's time less that lag. Otherwise a herd that stalls the router would eject
healthy targets and teach the estimators that they are slow, and the router would
stay overloaded after the herd has gone (a metastable failure).

A call counts as in flight at its target (the estimator's ``in_flight``, which
the next decision reads as queueing) from the moment it is launched, not from
when its task first runs: decisions made in between would otherwise all see the
same short queue and pile onto one target. It stops counting when the task
ends, however it ends (a task cancelled before it ran never runs its own
cleanup, so a done-callback settles it).

Every call runs as its own task under ``asyncio.wait_for`` with a timeout from
the deadline left (a Ray handle call to a dead node hangs otherwise, see
DESIGN.md "Facts measured"); the race waits on the tasks with a guard of the
deadline plus a grace, so a transport that ignores cancellation cannot hold
a request past its deadline either.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from edgeroute.signature import Batch
from router.admission import InFlightLimits
from router.breaker import Permit
from router.lag import LoopLag, late
from router.plan import Plan
from router.targets import Target
from router.transport import Reply, TargetError, TargetTimeout, TargetUnavailable


@dataclass
class Claim:
    """A target reserved for one call: a breaker permit and a slot under its in-flight bound."""

    target: Target
    permit: Permit
    limits: InFlightLimits

    def release(self) -> None:
        """Give the reservation back unused."""
        self.permit.release()
        self.limits.release(self.target.name)


@dataclass(frozen=True)
class Answer:
    reply: Reply
    target: Target
    elapsed_ms: float


Outcome = Literal["success", "failure", "rejected", "timeout", "cancelled"]


@dataclass(frozen=True)
class Attempt:
    """One upstream call as handed to ``on_attempt`` (for metrics)."""

    target: str
    tier: str
    outcome: Outcome
    elapsed_ms: float


OnAttempt = Callable[[Attempt], None]


class _Flight:
    """A launched call's hold on its target: counted in flight (``ahead``: the calls it found
    there) until settled, exactly once; a call that never started gives its permit back.
    ``plan`` says when the call is overdue."""

    __slots__ = ("ahead", "claim", "plan", "settled", "started")

    def __init__(self, claim: Claim, plan: Plan) -> None:
        estimator = claim.target.estimator
        self.claim, self.plan, self.ahead = claim, plan, estimator.in_flight
        estimator.in_flight += 1
        self.started = self.settled = False

    def settle(self, _task: object = None) -> None:
        if self.settled:
            return
        self.settled = True
        claim = self.claim
        claim.target.estimator.in_flight -= 1
        claim.limits.release(claim.target.name)
        if not self.started:
            claim.permit.release()


class Caller:
    """Makes calls and reports each outcome to the target's breaker and estimator, and to
    ``on_attempt`` (which must not raise)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 on_attempt: OnAttempt | None = None, lag: LoopLag | None = None) -> None:
        self._clock = clock
        self._on_attempt = on_attempt
        self._lag = lag

    def own_ms(self, since: float) -> float:
        """The router's own delay (worst loop lag) since ``since``, in ms."""
        return self._lag.max_since(since) * 1000 if self._lag is not None else 0.0

    def launch(self, claim: Claim, x: Batch, timeout_s: float, plan: Plan, *,
               not_after: float | None = None,
               on_sent: Callable[[], None] | None = None) -> asyncio.Task[Answer]:
        """Start a call of ``plan`` as its own task; the target counts it in flight from now
        on. Its timeout runs from when it is sent, but never past ``not_after`` (the clock's
        time, the request's deadline); ``on_sent`` hears when it is sent."""
        flight = _Flight(claim, plan)
        task = asyncio.create_task(self._call(flight, x, timeout_s, not_after, on_sent),
                                   name=claim.target.name)
        task.add_done_callback(flight.settle)
        return task

    async def _call(self, flight: _Flight, x: Batch, timeout_s: float,
                    not_after: float | None, on_sent: Callable[[], None] | None) -> Answer:
        flight.started = True
        claim = flight.claim
        target = claim.target
        estimator = target.estimator
        started = self._clock()
        if not_after is not None:
            timeout_s = max(min(timeout_s, not_after - started), 1e-3)
        if on_sent is not None:
            on_sent()
        try:
            reply = await asyncio.wait_for(target.transport.infer(x, timeout_s), timeout_s)
        except (asyncio.TimeoutError, TargetTimeout):
            raise self._timed_out(flight, timeout_s, started) from None
        except TargetError as error:
            self._failed(claim, error, self._ms_since(started), self.behind_own(flight))
            raise
        except asyncio.CancelledError:
            self._abandoned(flight, started)
            raise
        except Exception as exc:
            unexpected = TargetUnavailable(target.name, f"{type(exc).__name__}: {exc}"[:300])
            self._failed(claim, unexpected, self._ms_since(started), False)
            raise unexpected from exc
        finally:
            flight.settle()
        elapsed_ms = self._ms_since(started)
        own_ms = self.own_ms(started)
        claim.permit.success(max(elapsed_ms - own_ms, reply.server_ms + reply.queue_ms))
        if late(own_ms, elapsed_ms):
            estimator.observe_untimed_success(reply.server_ms, reply.queue_ms,
                                              reply.batch_rows, flight.ahead)
        else:
            estimator.observe_success(elapsed_ms, reply.server_ms, reply.queue_ms,
                                      reply.batch_rows, flight.ahead)
        if target.quality == "small":
            for top in np.asarray(reply.probabilities).max(axis=1, initial=0.0).tolist():
                estimator.observe_confidence(top)
        self._report(target, "success", elapsed_ms)
        return Answer(reply, target, elapsed_ms)

    def _ms_since(self, started: float) -> float:
        return (self._clock() - started) * 1000

    def _report(self, target: Target, outcome: Outcome, elapsed_ms: float) -> None:
        if self._on_attempt is not None:
            self._on_attempt(Attempt(target.name, target.tier, outcome, elapsed_ms))

    @staticmethod
    def behind_own(flight: _Flight) -> bool:
        """Whether the call was sent behind at least the target's concurrency of this router's
        own calls there: it queued behind them, so its wait is this router's load."""
        return flight.ahead >= flight.claim.target.estimator.settings.concurrency

    def _timed_out(self, flight: _Flight, timeout_s: float, started: float) -> TargetTimeout:
        claim = flight.claim
        elapsed_ms = self._ms_since(started)
        reason = f"no answer within {timeout_s * 1000:.0f} ms"
        blamed = (flight.plan.overdue(claim.target.name, timeout_s * 1000)
                  and not late(self.own_ms(started), elapsed_ms))
        if blamed and not self.behind_own(flight):
            claim.permit.failure(reason)
        else:
            claim.permit.release()
        if blamed:
            claim.target.estimator.observe_failure(reason, elapsed_ms)
        self._report(claim.target, "timeout", elapsed_ms)
        return TargetTimeout(claim.target.name, reason)

    def _failed(self, claim: Claim, error: TargetError, elapsed_ms: float,
                behind_own: bool) -> None:
        claim.target.estimator.observe_failure(error.reason, elapsed_ms)
        busy = isinstance(error, TargetUnavailable) and error.retry_after_s is not None
        if error.retryable and not (busy and behind_own):
            claim.permit.failure(error.reason)
        else:
            claim.permit.release()
        self._report(claim.target, "failure" if error.retryable else "rejected", elapsed_ms)

    def _abandoned(self, flight: _Flight, started: float) -> None:
        claim = flight.claim
        elapsed_ms = self._ms_since(started)
        if (flight.plan.overdue(claim.target.name, elapsed_ms)
                and not late(self.own_ms(started), elapsed_ms)):
            claim.permit.slow(f"abandoned after {elapsed_ms:.0f} ms")
        else:
            claim.permit.release()
        self._report(claim.target, "cancelled", elapsed_ms)


@dataclass
class Race:
    """Waits for the first success among a first call and, after a delay, a hedge.

    The Tail at Scale (Dean and Barroso, 2013): send a second request only once
    the first has been outstanding longer than it usually takes, and cancel
    the other as soon as one answers. Failures are handed to ``on_failure``;
    when every call has failed, the most useful error (a retryable one) is raised.
    """

    time_left_s: Callable[[], float]
    on_failure: Callable[[TargetError], None]
    grace_s: float
    orphans: set[asyncio.Task[Any]]
    """Tasks that ignored cancellation, held so they are not garbage-collected mid-flight."""

    async def run(
        self,
        first: asyncio.Task[Answer],
        hedge_after_s: float | None = None,
        launch_hedge: Callable[[], asyncio.Task[Answer] | None] | None = None,
    ) -> tuple[Answer, bool]:
        """The winning answer and whether the hedge won."""
        pending: set[asyncio.Task[Answer]] = {first}
        hedge: asyncio.Task[Answer] | None = None
        awaiting_hedge = hedge_after_s is not None and launch_hedge is not None
        failures: list[TargetError] = []
        try:
            while pending:
                timeout = max(self.time_left_s(), 0.0) + self.grace_s
                if awaiting_hedge and hedge_after_s is not None:
                    timeout = min(timeout, max(hedge_after_s, 0.0))
                done, pending = await asyncio.wait(
                    pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    error = _failure(task)
                    if error is None:
                        return task.result(), task is hedge
                    failures.append(error)
                    self.on_failure(error)
                if not done and awaiting_hedge and launch_hedge is not None:
                    awaiting_hedge = False
                    hedge = launch_hedge()
                    if hedge is not None:
                        pending.add(hedge)
                elif not done:
                    overran = TargetTimeout(first.get_name(), "no answer by the deadline")
                    failures.append(overran)
                    self.on_failure(overran)
                    break
            raise next((f for f in failures if f.retryable), failures[0])
        finally:
            await self._cancel(pending)

    async def _cancel(self, tasks: set[asyncio.Task[Answer]]) -> None:
        if not tasks:
            return
        for task in tasks:
            task.cancel()
        done, stuck = await asyncio.wait(tasks, timeout=self.grace_s)
        for task in done:
            if not task.cancelled():
                task.exception()
        for task in stuck:
            self.orphans.add(task)
            task.add_done_callback(self.orphans.discard)


def _failure(task: asyncio.Task[Answer]) -> TargetError | None:
    if task.cancelled():
        return TargetUnavailable(task.get_name(), "call cancelled")
    error = task.exception()
    if error is None or isinstance(error, TargetError):
        return error
    raise error

"""One upstream call, and a race of calls (a hedge): bounded in time, cancelled cleanly.

A call reports how it ended to the target's breaker and estimator exactly once,
through the outcome classifier shared with the simulator
(:func:`router.lessons.learn`, whose docstring states the rules), and to
``on_attempt`` with the lesson it taught.

A call's time counts from the moment it is sent (its task runs), never from when
the request arrived or the call was planned, and its timeout runs from then too
(cut to the request's deadline). Time the router itself made the call wait is not
the target's: when the replica's event loop ran late during a call
(:class:`~router.lag.LoopLag`, :func:`~router.lag.late`), the call's
:class:`~router.lessons.Ended` carries that lag and the classifier holds neither
a timeout nor a slow answer against the target. Otherwise a herd that stalls
the router would eject healthy targets and teach the estimators that they are
slow, and the router would stay overloaded after the herd has gone (a
metastable failure).

A call counts as in flight at its target from the moment the target is claimed
for it (:class:`Claim`), not from when its task first runs: decisions made in
between would otherwise all see the same short queue and pile onto one target.
The count is the estimator's ``in_flight``, the one count of the target's calls
in flight: the next decision reads it as queueing, and
:class:`~router.admission.InFlightLimits` bounds it. It stops counting when the
claim is released unused or the call's task ends, however it ends (a task
cancelled before it ran never runs its own cleanup, so a done-callback settles it).

Every call runs as its own task under ``asyncio.wait_for`` with a timeout from
the deadline left (a Ray handle call to a replica on a removed node hangs
otherwise: ``tests/chaos`` removes the cloud's node); the race waits on the
tasks with a guard of the deadline plus a grace, so a transport that ignores
cancellation cannot hold a request past its deadline either.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeroute.signature import Batch
from router.breaker import Permit
from router.lag import LoopLag
from router.lessons import Ended, Lesson, Outcome, learn
from router.plan import Plan
from router.targets import Target
from router.transport import Reply, TargetError, TargetTimeout, TargetUnavailable

__all__ = ["Answer", "Attempt", "Caller", "Claim", "OnAttempt", "Outcome", "Race"]


class Claim:
    """A target reserved for one call: a breaker permit and a place among the target's calls
    in flight, held until the call settles or the claim is released unused."""

    __slots__ = ("permit", "target")

    def __init__(self, target: Target, permit: Permit) -> None:
        self.target, self.permit = target, permit

    @classmethod
    def take(cls, target: Target, permit: Permit) -> Claim:
        """Claim ``target`` with ``permit``: it counts one more call in flight from now on."""
        target.estimator.in_flight += 1
        return cls(target, permit)

    def release(self) -> None:
        """Give the reservation back unused."""
        self.permit.release()
        self.target.estimator.in_flight -= 1


@dataclass(frozen=True)
class Answer:
    reply: Reply
    target: Target
    elapsed_ms: float


@dataclass(frozen=True)
class Attempt:
    """One upstream call as handed to ``on_attempt`` (for metrics)."""

    target: str
    tier: str
    outcome: Outcome
    elapsed_ms: float
    timeout_ms: float = float("inf")
    """The timeout the call was sent with."""
    lesson: Lesson | None = None
    """What it taught the target's breaker and estimator."""


OnAttempt = Callable[[Attempt], None]


class _Flight:
    """A launched call's hold on its claim until settled, exactly once (``ahead``: the
    target's other calls in flight when it was launched); a call that never started gives
    its permit back. ``plan`` says when the call is overdue."""

    __slots__ = ("ahead", "claim", "plan", "settled", "started")

    def __init__(self, claim: Claim, plan: Plan) -> None:
        self.claim, self.plan = claim, plan
        self.ahead = claim.target.estimator.in_flight - 1
        self.started = self.settled = False

    def settle(self, _task: object = None) -> None:
        if self.settled:
            return
        self.settled = True
        claim = self.claim
        claim.target.estimator.in_flight -= 1
        if not self.started:
            claim.permit.release()

    def behind_own(self) -> bool:
        """Whether the call was sent behind at least the target's concurrency of this
        router's own calls there: it queued behind them, so its wait is this router's load."""
        return self.ahead >= self.claim.target.estimator.settings.concurrency


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
        """Start a call of ``plan`` as its own task, holding ``claim`` until it ends. Its
        timeout runs from when it is sent, but never past ``not_after`` (the clock's time,
        the request's deadline); ``on_sent`` hears when it is sent."""
        flight = _Flight(claim, plan)
        task = asyncio.create_task(self._call(flight, x, timeout_s, not_after, on_sent),
                                   name=claim.target.name)
        task.add_done_callback(flight.settle)
        return task

    async def _call(self, flight: _Flight, x: Batch, timeout_s: float,
                    not_after: float | None, on_sent: Callable[[], None] | None) -> Answer:
        flight.started = True
        target = flight.claim.target
        started = self._clock()
        if not_after is not None:
            timeout_s = max(min(timeout_s, not_after - started), 1e-3)
        if on_sent is not None:
            on_sent()
        timeout_ms = timeout_s * 1000
        try:
            reply = await asyncio.wait_for(target.transport.infer(x, timeout_s), timeout_s)
        except (asyncio.TimeoutError, TargetTimeout):
            reason = f"no answer within {timeout_ms:.0f} ms"
            self._ended(flight, started, timeout_ms, "timeout", reason=reason,
                        behind_own=flight.behind_own())
            raise TargetTimeout(target.name, reason) from None
        except TargetError as error:
            busy = isinstance(error, TargetUnavailable) and error.retry_after_s is not None
            self._ended(flight, started, timeout_ms,
                        "failure" if error.retryable else "rejected", reason=error.reason,
                        behind_own=flight.behind_own(), busy=busy)
            raise
        except asyncio.CancelledError:
            elapsed_ms = self._ms_since(started)
            self._ended(flight, started, timeout_ms, "cancelled",
                        reason=f"abandoned after {elapsed_ms:.0f} ms")
            raise
        except Exception as exc:
            unexpected = TargetUnavailable(target.name, f"{type(exc).__name__}: {exc}"[:300])
            self._ended(flight, started, timeout_ms, "failure", reason=unexpected.reason)
            raise unexpected from exc
        finally:
            flight.settle()
        elapsed_ms = self._ended(flight, started, timeout_ms, "success",
                                 server_ms=reply.server_ms, queue_ms=reply.queue_ms,
                                 rows=reply.batch_rows)
        if target.quality == "small":
            for top in np.asarray(reply.probabilities).max(axis=1, initial=0.0).tolist():
                target.estimator.observe_confidence(top)
        return Answer(reply, target, elapsed_ms)

    def _ms_since(self, started: float) -> float:
        return (self._clock() - started) * 1000

    def _ended(self, flight: _Flight, started: float, timeout_ms: float, outcome: Outcome, *,
               reason: str = "", behind_own: bool = False, busy: bool = False,
               server_ms: float = 0.0, queue_ms: float = 0.0, rows: int = 1) -> float:
        """Teach the target what the call taught; its time (ms)."""
        target = flight.claim.target
        elapsed_ms = self._ms_since(started)
        ended = Ended(target.name, outcome, elapsed_ms, timeout_ms, self.own_ms(started),
                      behind_own, busy, server_ms, queue_ms, reason)
        lesson = learn(ended, flight.plan, flight.claim.permit, target.estimator, rows=rows,
                       ahead=flight.ahead)
        if self._on_attempt is not None:
            self._on_attempt(Attempt(target.name, target.tier, outcome, elapsed_ms, timeout_ms,
                                     lesson))
        return elapsed_ms


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

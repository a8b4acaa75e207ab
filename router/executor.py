"""Running a plan for one request: one retry layer, fallbacks, a hedge, a cascade, shedding.

What :meth:`Executor.run` guarantees:

* **The deadline holds.** Every call's timeout is the deadline left (less a
  reserve for the next fallback when the call can afford it, by the times the
  decision priced: :meth:`~router.plan.Plan.timeout_ms`); a wait happens
  only if the next try still fits; the executor returns by the deadline plus
  a small grace even if a transport ignores cancellation.
* **One retry layer.** A single tenacity ``AsyncRetrying`` drives the tries;
  at most ``max_attempts`` upstream calls per request over all targets,
  hedge and escalation included. A non-retryable error (``TargetRejected``, a
  4xx) ends the request at once.
* **Fallbacks before retries.** After a retryable failure the next try goes to
  the plan's next target not yet tried (primary, hedge, then fallbacks in plan
  order), at once. It is counted against the retry budget but never refused
  by it: the decision priced it in. Once every target has been tried, one may
  be tried again after its ``Retry-After`` (only if that fits the deadline and
  ``max_retry_after_ms``) or a jittered backoff, and only while the retry
  budget allows; otherwise the request fails fast. This bounds amplification
  when everything fails (SRE book, "Addressing Cascading Failures").
* **Hedging.** If the primary has not answered after ``hedge_delay_ms``, the
  plan's hedge is called too (budget allowing); the first answer wins, the other is cancelled.
* **Cascade.** If the plan escalates and the answer's top probability is below
  ``confidence_threshold`` while the deadline leaves the escalation target its
  upper time (:meth:`~router.plan.Plan.escalation_fits`), that target's answer
  is returned instead (``escalated``).
* **Breakers and admission.** Targets whose breaker is open, or that are at
  their in-flight bound, are skipped; half-open probe slots are claimed per
  call. A replica at its in-flight bound sheds the request before any call.
* **Cancellation.** If the caller is cancelled (the client went away), every
  call in flight is cancelled and awaited; nothing is left running.

Results and failures (:class:`Served`, :class:`NotServed`, :class:`Shed`): :mod:`router.served`.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tenacity import AsyncRetrying, RetryCallState

from edgeroute.signature import Batch
from router.admission import InFlightLimits
from router.breaker import Breakers
from router.budget import RetryBudget
from router.calls import Answer, Caller, Claim, OnAttempt, Race
from router.lag import LoopLag
from router.plan import Plan
from router.policy import AdmissionSettings, BreakerSettings, RetrySettings
from router.retrying import (
    retry_if_retryable,
    retry_if_routed,
    stop_after_calls,
    stop_before_deadline,
    wait_full_jitter,
    wait_planned,
)
from router.served import NotServed, Served, Shed
from router.targets import Target, TargetSet
from router.transport import Reply, TargetError, TargetUnavailable

__all__ = ["Executor", "NotServed", "Served", "Shed"]

Sleep = Callable[[float], Awaitable[None]]
BREAKER_OPEN = "breaker open"
SATURATED = "at its in-flight bound"


@dataclass
class _Request:
    plan: Plan
    x: Batch
    deadline_at: float
    started: float
    chain: tuple[str, ...]
    """Targets in the order fallbacks go to them: primary, hedge, then the plan's fallbacks."""
    calls: int = 0
    tries: int = 0
    hedged: bool = False
    tried: dict[str, TargetError | None] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    wait_until: dict[str, float] = field(default_factory=dict)
    """When each target that sent a ``Retry-After`` may be called again."""
    skipped: dict[str, str] = field(default_factory=dict)
    next_claim: Claim | None = None
    next_wait_s: float = 0.0
    on_sent: Callable[[], None] | None = None


def _chain(plan: Plan) -> tuple[str, ...]:
    return tuple(dict.fromkeys(n for n in (plan.primary, plan.hedge, *plan.fallbacks) if n))


def _confidence(reply: Reply) -> float:
    """The lowest, over the batch's rows, of the top class probability."""
    probabilities = np.asarray(reply.probabilities)
    return float(probabilities.max(axis=1).min()) if probabilities.size else 1.0


class Executor:
    """Runs plans against one router replica's targets; holds its breakers, budget and bounds.

    ``clock`` (for deadlines, breakers, budget), ``sleep`` (retry waits) and ``rng``
    (backoff jitter) are injected; the times that reserve a fallback its share, say
    whether a timeout is the target's fault and whether an escalation fits are the
    plan's; ``on_attempt`` hears of every
    upstream call (metrics); ``min_attempt_ms`` is the least time worth an attempt;
    ``cancel_grace_ms`` bounds the wait for a cancelled call to finish; ``lag`` is the
    replica's own lateness, never charged to a target (:mod:`router.calls`).
    """

    def __init__(
        self,
        targets: TargetSet,
        *,
        retry: RetrySettings | None = None,
        breaker: BreakerSettings | None = None,
        admission: AdmissionSettings | None = None,
        breakers: Breakers | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        on_attempt: OnAttempt | None = None,
        min_attempt_ms: float = 2.0,
        cancel_grace_ms: float = 10.0,
        lag: LoopLag | None = None,
    ) -> None:
        self.targets = targets
        self.retry = retry or RetrySettings()
        self.breakers = breakers or Breakers(breaker, clock=clock)
        self.budget = RetryBudget(self.retry, clock=clock)
        self.limits = InFlightLimits(admission, targets)
        self.min_attempt_s = min_attempt_ms / 1000
        self.grace_s = cancel_grace_ms / 1000
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._caller = Caller(clock, on_attempt, lag)
        self._backoff = self._new_backoff()
        self._orphans: set[asyncio.Task[Any]] = set()

    def _new_backoff(self) -> wait_full_jitter:
        r = self.retry
        return wait_full_jitter(r.backoff_base_ms / 1000, r.backoff_max_ms / 1000, self._rng)

    def configure(self, *, retry: RetrySettings | None = None,
                  breaker: BreakerSettings | None = None,
                  admission: AdmissionSettings | None = None) -> None:
        """Apply a new policy's settings live; state (breakers, budget window) is kept."""
        if retry is not None:
            self.retry = retry
            self.budget.configure(retry)
            self._backoff = self._new_backoff()
        if breaker is not None:
            self.breakers.configure(breaker)
        if admission is not None:
            self.limits.configure(admission)

    def allows(self, target: str) -> bool:
        """Whether the decision may place on ``target`` now (breaker not open, bound not hit)."""
        return self.breakers.allows(target) and self.limits.has_room(target)

    def snapshot(self) -> dict[str, Any]:
        return {"retry_budget": self.budget.snapshot(), "admission": self.limits.snapshot()}

    async def run(self, plan: Plan, x: Batch, deadline_at: float,
                  on_sent: Callable[[], None] | None = None) -> Served:
        """Serve ``x`` by ``deadline_at`` (this clock) by ``plan``; ``on_sent``: a call went."""
        if not self.limits.try_enter():
            raise Shed(f"router at its bound of {self.limits.settings.max_in_flight} requests",
                       retry_after_s=self.limits.settings.shed_retry_after_s, scope="router",
                       predicted_p_miss=plan.p_miss)
        req = _Request(plan, x, deadline_at, self._clock(), _chain(plan), on_sent=on_sent)
        try:
            self.budget.record_request()
            answer, hedge_won = await self._serve(req)
            return await self._cascade(req, answer, hedge_won)
        finally:
            if req.next_claim is not None:
                req.next_claim.release()
            self.limits.leave()

    async def _serve(self, req: _Request) -> tuple[Answer, bool]:
        if self._time_left(req) < self.min_attempt_s:
            raise self._not_served(req)
        req.next_claim = next(filter(None, (self._claim(req, n) for n in req.chain)), None)
        if req.next_claim is None:
            raise self._not_served(req)
        retrying = AsyncRetrying(
            sleep=self._sleep,
            stop=stop_after_calls(self.retry.max_attempts, lambda: req.calls)
            | stop_before_deadline(req.deadline_at, clock=self._clock,
                                   min_attempt_s=self.min_attempt_s),
            wait=wait_planned(lambda: req.next_wait_s),
            retry=retry_if_retryable() & retry_if_routed(functools.partial(self._route, req)),
            reraise=True,
        )
        try:
            result: tuple[Answer, bool] = await retrying(self._try, req)
        except TargetError as error:
            raise self._not_served(req) from error
        return result

    async def _try(self, req: _Request) -> tuple[Answer, bool]:
        claim, req.next_claim = req.next_claim, None
        if claim is None:
            raise TargetUnavailable(req.plan.primary, "no target reserved for this try")
        req.tries += 1
        first = self._launch(req, claim)
        plan = req.plan
        if (req.tries == 1 and plan.hedge and plan.hedge_delay_ms is not None
                and claim.target.name == plan.primary):
            launch_hedge = functools.partial(self._launch_hedge, req, plan.hedge)
            return await self._race(req).run(first, plan.hedge_delay_ms / 1000, launch_hedge)
        return await self._race(req).run(first)

    def _race(self, req: _Request) -> Race:
        return Race(functools.partial(self._time_left, req),
                    functools.partial(self._note_failure, req), self.grace_s, self._orphans)

    def _launch(self, req: _Request, claim: Claim) -> asyncio.Task[Answer]:
        timeout_s = self._call_timeout(req, claim.target)
        req.calls += 1
        req.tried[claim.target.name] = None
        return self._caller.launch(claim, req.x, timeout_s, req.plan, not_after=req.deadline_at,
                                   on_sent=req.on_sent)

    def _launch_hedge(self, req: _Request, name: str) -> asyncio.Task[Answer] | None:
        if (name in req.tried or req.calls >= self.retry.max_attempts
                or self._time_left(req) < self.min_attempt_s or not self._claimable(name)
                or not self.budget.try_spend()):
            return None
        if (claim := self._claim(req, name)) is None:
            return None
        req.hedged = True
        return self._launch(req, claim)

    def _call_timeout(self, req: _Request, target: Target) -> float:
        """The plan's timeout of a call to ``target`` now (seconds), with the next target
        not yet tried that could take over."""
        left = self._time_left(req)
        if req.calls + 1 >= self.retry.max_attempts:
            return left
        following = next((n for n in req.chain if n != target.name and n not in req.tried
                          and self._claimable(n)), None)
        return req.plan.timeout_ms(target.name, following, left * 1000,
                                   self.min_attempt_s * 1000, self.grace_s * 1000) / 1000

    def _route(self, req: _Request, retry_state: RetryCallState) -> bool:
        """Pick and reserve the next try's target: a fresh fallback, else a retry."""
        if req.calls >= self.retry.max_attempts or self._time_left(req) < self.min_attempt_s:
            return False
        for name in req.chain:
            if name not in req.tried:
                claim = self._claim(req, name)
                if claim is not None:
                    self.budget.record_retry()
                    req.next_claim, req.next_wait_s = claim, 0.0
                    return True
        return self._route_retry(req, retry_state)

    def _route_retry(self, req: _Request, retry_state: RetryCallState) -> bool:
        """Retry a target after its ``Retry-After`` or a backoff if deadline and budget allow."""
        for name, error in req.tried.items():
            if error is None or not error.retryable or not self._claimable(name):
                continue
            asked_s = req.wait_until.get(name, 0.0) - self._clock()
            wait_s = max(asked_s, self._backoff(retry_state), 0.0)
            if (asked_s * 1000 > self.retry.max_retry_after_ms
                    or self._time_left(req) - wait_s < self.min_attempt_s):
                continue
            if not self.budget.try_spend():
                req.errors.append("retry budget spent")
                return False
            claim = self._claim(req, name)
            if claim is not None:
                req.next_claim, req.next_wait_s = claim, wait_s
                return True
        return False

    def _claimable(self, name: str) -> bool:
        return name in self.targets.targets and self.allows(name)

    def _claim(self, req: _Request, name: str) -> Claim | None:
        target = self.targets.get(name)
        if target is None:
            req.skipped[name] = "unknown target"
            return None
        if not self.limits.try_claim(name):
            req.skipped[name] = SATURATED
            return None
        permit = self.breakers[name].acquire()
        if permit is None:
            req.skipped[name] = BREAKER_OPEN
            return None
        req.skipped.pop(name, None)
        return Claim.take(target, permit)

    def _note_failure(self, req: _Request, error: TargetError) -> None:
        req.tried[error.target] = error
        req.errors.append(str(error))
        if isinstance(error, TargetUnavailable) and error.retry_after_s:
            req.wait_until[error.target] = self._clock() + error.retry_after_s

    def _time_left(self, req: _Request) -> float:
        return req.deadline_at - self._clock()

    async def _cascade(self, req: _Request, answer: Answer, hedge_won: bool) -> Served:
        """Escalate a low-confidence answer if the plan says so and time allows."""
        fallback = answer.target.name != req.plan.primary and not hedge_won
        to, threshold = req.plan.escalate_to, req.plan.confidence_threshold
        target = self.targets.get(to) if to else None
        if (target is None or threshold is None or answer.target is target
                or _confidence(answer.reply) >= threshold
                or req.calls >= self.retry.max_attempts
                or not req.plan.escalation_fits(self._time_left(req) * 1000)):
            return self._served(req, answer, fallback, hedge_won, escalated=False)
        claim = self._claim(req, target.name)
        if claim is not None:
            try:
                upper, _ = await self._race(req).run(self._launch(req, claim))
            except TargetError:
                pass
            else:
                return self._served(req, upper, fallback, hedge_won, escalated=True)
        return self._served(req, answer, fallback, hedge_won, escalated=False)

    def _served(self, req: _Request, answer: Answer, fallback: bool, hedge_won: bool,
                escalated: bool) -> Served:
        return Served(
            reply=answer.reply, target=answer.target, attempts=req.calls, retries=req.tries - 1,
            fallback=fallback, hedged=req.hedged, hedge_won=hedge_won, escalated=escalated,
            upstream_ms=answer.elapsed_ms, elapsed_ms=(self._clock() - req.started) * 1000,
            errors=tuple(req.errors),
        )

    def _not_served(self, req: _Request) -> NotServed:
        now = self._clock()
        passed = now >= req.deadline_at - self.min_attempt_s
        skipped = set(req.skipped.values())
        if req.calls == 0 and skipped == {SATURATED} and not passed:
            return Shed("every target of the plan is at its in-flight bound",
                        retry_after_s=self.limits.settings.shed_retry_after_s, scope="target",
                        predicted_p_miss=req.plan.p_miss)
        detail = "; ".join(req.errors) or ", ".join(
            f"{name}: {why}" for name, why in req.skipped.items()
        )
        what = "deadline exceeded" if passed else "no target could serve the request"
        return NotServed(f"{what} after {req.calls} attempt(s): "
                         f"{detail + '; ' if detail else ''}plan {req.plan.describe()}",
                         attempts=req.calls, deadline_passed=passed,
                         retry_after_s=self._retry_after(req, now),
                         predicted_p_miss=req.plan.p_miss)

    def _retry_after(self, req: _Request, now: float) -> float:
        """The longest ``Retry-After`` a target asked for; else, when every target was
        ejected, until the first one half-opens; else the shedding default."""
        asked = [until - now for until in req.wait_until.values() if until > now]
        if asked:
            return max(asked)
        ejected = [self.breakers[n].retry_after_s() for n, why in req.skipped.items()
                   if why == BREAKER_OPEN]
        if req.calls == 0 and ejected and min(ejected) > 0:
            return min(ejected)
        return self.limits.settings.shed_retry_after_s


"""Running a decided plan in virtual time, as :class:`router.executor.Executor` runs it.

The executor's rules, over the drawn latencies of one request:

* the next try goes to the plan's next target not yet tried (primary, hedge,
  then fallbacks), at once, while fewer than ``max_attempts`` calls were made
  and at least ``min_attempt_ms`` of the deadline is left; a target whose
  breaker refuses a permit is skipped;
* every call's timeout (the hedge's included) is the plan's
  (:meth:`router.plan.Plan.timeout_ms`, shared): the deadline left, less the
  next fallback's upper time, the least attempt and the cancel grace when the
  call can still have its own typical time;
* the hedge starts at its delay if the primary has not answered, the retry
  budget allowing; the first answer wins and the other call is cancelled;
* an answer from a small model below the cascade threshold is escalated when
  the deadline leaves the escalation target its upper time
  (:meth:`router.plan.Plan.escalation_fits`), with the plan's timeout like
  any other call; if the escalation fails, the small answer is returned;
* each call carries its plan and its timeout, from which the outcome
  classifier shared with the router (:mod:`router.lessons`) decides what it
  teaches (:meth:`RouterReplica.feedback`).

Differences, on purpose: a target already tried is not retried after a
backoff (the retry budget makes that rare, and it never turns a miss into a
hit with the deadlines simulated here); in-flight bounds are not modelled;
every call of a plan is resolved when the request arrives (all their times
are known then), and what the router learns from each is delivered at the
virtual time the call ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from edgeroute.tools.sim.world import CANCELLED, OK, Call, World
from router.plan import Plan


class Hooks(Protocol):
    """What running a plan asks of the router state it runs for."""

    def claim(self, target: int) -> object | None:
        """A breaker permit for a call to ``target``; ``None`` when its breaker refuses."""

    def allows(self, target: int) -> bool: ...
    def try_hedge(self) -> bool: ...
    def record_retry(self) -> None: ...


@dataclass(frozen=True)
class Limits:
    max_attempts: int = 3
    min_attempt_ms: float = 2.0
    grace_ms: float = 10.0


@dataclass(frozen=True)
class Request:
    """One request as a plan sees it; draws are per candidate, in ``candidates`` order."""

    candidates: Sequence[int]
    network_ms: Sequence[float]
    service_ms: Sequence[float]
    arrival_ms: float
    deadline_ms: float
    confidence: float


@dataclass
class Outcome:
    calls: list[Call]
    answer: Call | None = None
    answered_ms: float | None = None
    hedged: bool = False
    escalated: bool = False


class _Run:
    __slots__ = ("calls", "chain", "hooks", "limits", "names", "plan", "req", "tried", "world")

    def __init__(self, req: Request, plan: Plan, ids: dict[str, int], world: World,
                 hooks: Hooks, limits: Limits) -> None:
        self.req, self.plan, self.world, self.hooks, self.limits = req, plan, world, hooks, limits
        names = (plan.primary, plan.hedge, *plan.fallbacks)
        self.names = {ids[n]: n for n in (*names, plan.escalate_to) if n}
        self.chain = list(dict.fromkeys(ids[n] for n in names if n))
        self.calls: list[Call] = []
        self.tried: set[int] = set()

    def call(self, target: int, start_ms: float, permit: object, timeout_ms: float) -> Call:
        req = self.req
        i = req.candidates.index(target)
        made = self.world.call(target, req.arrival_ms, start_ms, timeout_ms, req.network_ms[i],
                               req.service_ms[i], req.deadline_ms)
        made.permit, made.plan, made.timeout_ms = permit, self.plan, timeout_ms
        self.calls.append(made)
        self.tried.add(target)
        return made

    def next_target(self) -> tuple[int, object] | None:
        for target in self.chain:
            if target not in self.tried:
                permit = self.hooks.claim(target)
                if permit is not None:
                    return target, permit
        return None

    def timeout_ms(self, target: int, at_ms: float) -> float:
        left = self.req.deadline_ms - at_ms
        limits, hooks = self.limits, self.hooks
        if len(self.calls) + 1 >= limits.max_attempts:
            return left
        following = next((t for t in self.chain if t != target and t not in self.tried
                          and hooks.allows(t)), None)
        then = self.names[following] if following is not None else None
        return self.plan.timeout_ms(self.names[target], then, left, limits.min_attempt_ms,
                                    limits.grace_ms)

    def room(self, at_ms: float) -> bool:
        return (len(self.calls) < self.limits.max_attempts
                and self.req.deadline_ms - at_ms >= self.limits.min_attempt_ms)


def run_plan(plan: Plan, req: Request, world: World, hooks: Hooks, limits: Limits,
             ids: dict[str, int], small: Sequence[bool]) -> Outcome:
    """Every call ``plan`` makes for ``req`` in ``world``, and the answer it returns."""
    run = _Run(req, plan, ids, world, hooks, limits)
    out = Outcome(run.calls)
    at = 0.0
    while out.answer is None and run.room(at):
        picked = run.next_target()
        if picked is None:
            break
        target, permit = picked
        if run.calls:
            hooks.record_retry()
        first = run.call(target, at, permit, run.timeout_ms(target, at))
        racing = [first]
        delay = plan.hedge_delay_ms
        if (len(run.calls) == 1 and plan.hedge and delay is not None and first.end_ms > delay
                and target == ids[plan.primary] and run.room(delay)):
            racing += _hedge(run, ids[plan.hedge], delay, out)
        answers = [c for c in racing if c.outcome == OK]
        if answers:
            out.answer = min(answers, key=lambda c: c.end_ms)
            for loser in racing:
                if loser is not out.answer and loser.end_ms > out.answer.end_ms:
                    loser.outcome, loser.end_ms = CANCELLED, out.answer.end_ms
                    loser.total_ms = loser.end_ms - loser.start_ms
        else:
            at = max(c.end_ms for c in racing)
    if out.answer is not None:
        out.answered_ms = out.answer.end_ms
        if plan.escalate_to and small[out.answer.target]:
            _escalate(run, plan, ids[plan.escalate_to], out)
    return out


def _hedge(run: _Run, target: int, delay_ms: float, out: Outcome) -> list[Call]:
    if target in run.tried or not run.hooks.allows(target) or not run.hooks.try_hedge():
        return []
    permit = run.hooks.claim(target)
    if permit is None:
        return []
    out.hedged = True
    return [run.call(target, delay_ms, permit, run.timeout_ms(target, delay_ms))]


def _escalate(run: _Run, plan: Plan, target: int, out: Outcome) -> None:
    answer = out.answer
    assert answer is not None and plan.confidence_threshold is not None
    left = run.req.deadline_ms - answer.end_ms
    if (answer.target == target or run.req.confidence >= plan.confidence_threshold
            or len(run.calls) >= run.limits.max_attempts or not plan.escalation_fits(left)):
        return
    permit = run.hooks.claim(target)
    if permit is None:
        return
    upper = run.call(target, answer.end_ms, permit, run.timeout_ms(target, answer.end_ms))
    if upper.outcome == OK:
        out.answer, out.escalated = upper, True
    out.answered_ms = upper.end_ms

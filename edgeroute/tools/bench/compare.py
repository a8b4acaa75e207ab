"""Comparing the arms of one benchmark run: the hindsight oracle and the goals.

Every arm replays the same schedule, so request ``seq`` is the same request
(same send time, digit, deadline and quality) in each. The **hindsight oracle**
knows how each arm's placement of that request turned out and takes, per
request, the cheapest measured outcome that was a useful answer (within the
deadline, by the large model when ``quality: high`` was asked, and the right
label); failing that, the cheapest that attained its SLO; failing that, the
answered outcome that came back first (or a failure, if none answered). Its
useful-answer rate and its attainment are therefore at least every arm's, and
its cost is a lower bound for placements drawn from what was measured
(RouterBench and RouteLLM compare routers against this kind of oracle).

The goals are the benchmark's published targets, each checked against the same
run's figures, never against constants from another run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeroute.tools.figures import attained_slo, useful
from edgeroute.tools.loadgen import Outcome

ORACLE = "oracle"
BASELINES = ("always-edge", "always-cloud", "random", "round-robin", "least-latency",
             "least-cost")
"""The named baseline policies; other arms (e.g. the router without hedging) are variants
of the router, not baselines."""
STATIC_BASELINES = ("always-edge", "always-cloud")


def oracle(arms: Mapping[str, Sequence[Outcome]]) -> tuple[list[Outcome], dict[str, int]]:
    """The oracle's outcome per request (in ``seq`` order) and how often each arm's outcome
    was the one taken."""
    by_seq: dict[int, list[tuple[str, Outcome]]] = {}
    for arm, outcomes in arms.items():
        for outcome in outcomes:
            by_seq.setdefault(outcome.seq, []).append((arm, outcome))
    chosen: list[Outcome] = []
    picked: dict[str, int] = dict.fromkeys(arms, 0)
    for seq in sorted(by_seq):
        candidates = by_seq[seq]
        right = [c for c in candidates if useful(c[1])]
        met = right or [c for c in candidates if attained_slo(c[1])]
        answered = [c for c in candidates if c[1].ok]
        if met:
            arm, best = min(met, key=lambda c: (c[1].cost_usd, c[1].latency_ms))
        elif answered:
            arm, best = min(answered, key=lambda c: c[1].latency_ms)
        else:
            arm, best = candidates[0]
        chosen.append(best)
        picked[arm] += 1
    return chosen, picked


@dataclass(frozen=True)
class Goal:
    name: str
    target: str
    measured: str
    met: bool | None
    """None when the run has no figure for it (an arm or phase missing)."""


def _attainment(arm: Mapping[str, Any] | None) -> float | None:
    return None if arm is None else arm.get("slo_attainment")


def _cost(arm: Mapping[str, Any] | None) -> float | None:
    return None if arm is None else arm.get("cost_per_1k_usd")


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def gap_closed(router: float, baseline: float, best: float) -> float | None:
    """Share of the cost gap between a baseline and the oracle that the router closes."""
    gap = baseline - best
    return None if gap <= 0 else (baseline - router) / gap


def goals(overall: Mapping[str, Mapping[str, Any]], *, router: str = "default",
          hedging: Mapping[str, Any] | None = None,
          overhead: Mapping[str, Any] | None = None,
          cold_warm: Mapping[str, Any] | None = None) -> list[Goal]:
    """Check the published goals against one run: ``overall`` maps each arm (and
    ``oracle``) to its figures (see :func:`edgeroute.tools.figures.figures`)."""
    mine, cloud, best = overall.get(router), overall.get("always-cloud"), overall.get(ORACLE)
    baselines = {k: v for k, v in overall.items() if k in BASELINES and k != router}
    result: list[Goal] = []

    cost, cloud_cost = _cost(mine), _cost(cloud)
    result.append(Goal(
        "cost vs always-cloud", "router $/1k <= 0.5 x always-cloud",
        f"{_fmt(cost, '.3g')} vs {_fmt(cloud_cost, '.3g')}",
        None if cost is None or not cloud_cost else cost <= 0.5 * cloud_cost))

    att = _attainment(mine)
    top = max(((k, a) for k, v in baselines.items() if (a := _attainment(v)) is not None),
              key=lambda kv: kv[1], default=None)
    result.append(Goal(
        "attainment vs best baseline", "router SLO >= best baseline + 5 points",
        f"{_fmt(att, '.1%')} vs {top[0]} {top[1]:.1%}" if top else _fmt(att, ".1%"),
        None if att is None or top is None else att >= top[1] + 0.05))

    oracle_att = _attainment(best)
    result.append(Goal(
        "attainment vs oracle", "router SLO >= 0.95 x oracle",
        f"{_fmt(att, '.1%')} vs {_fmt(oracle_att, '.1%')}",
        None if att is None or not oracle_att else att >= 0.95 * oracle_att))

    result.append(_gap_goal(overall, mine, best))
    result.append(_calibration_goal(mine))
    if hedging is not None:
        result.append(_hedging_goal(hedging))
    if cold_warm is not None:
        result.append(_cold_goal(cold_warm))
    if overhead is not None:
        result.extend(_overhead_goals(overhead))
    return result


def _gap_goal(overall: Mapping[str, Mapping[str, Any]], mine: Mapping[str, Any] | None,
              best: Mapping[str, Any] | None) -> Goal:
    statics = {k: overall[k] for k in STATIC_BASELINES if k in overall}
    static = max(statics.items(), key=lambda kv: _attainment(kv[1]) or 0.0, default=None)
    closed = None
    if static and mine and best:
        cs, cr, co = _cost(static[1]), _cost(mine), _cost(best)
        if cs is not None and cr is not None and co is not None:
            closed = gap_closed(cr, cs, co)
    measured = "-" if static is None else (
        f"{_fmt(closed, '.0%')} of {static[0]}'s gap "
        f"(SLO {_fmt(_attainment(static[1]), '.1%')} vs router {_fmt(_attainment(mine), '.1%')}"
        f" vs oracle {_fmt(_attainment(best), '.1%')})")
    return Goal("cost gap to the oracle", ">= 70% of the best static baseline's gap closed",
                measured, None if closed is None else closed >= 0.70)


CALIBRATION_POINTS = 2.0


def _calibration_goal(mine: Mapping[str, Any] | None) -> Goal:
    """Predicted P(miss) against what the client saw, every deadline class the router
    planned for (:func:`edgeroute.tools.figures.calibration`)."""
    classes = {d: c for d, c in ((mine or {}).get("calibration") or {}).items()
               if c.get("gap_points") is not None}
    worst = max(classes.items(), key=lambda kv: abs(kv[1]["gap_points"]), default=None)
    measured = "-" if worst is None else (
        f"worst class {worst[0]} ms: predicted {worst[1]['predicted_p_miss']:.1%}, "
        f"observed {worst[1]['observed_miss']:.1%} ({worst[1]['gap_points']:+.1f} points)")
    return Goal("calibration at the client", f"observed miss within {CALIBRATION_POINTS:g} "
                "points of predicted P(miss), every deadline class", measured,
                None if worst is None else abs(worst[1]["gap_points"]) <= CALIBRATION_POINTS)


COLD_POINTS = 3.0


def _cold_goal(cold_warm: Mapping[str, Any]) -> Goal:
    """A router that just started, on its first requests, against the same router warm."""
    cold, warm = cold_warm["cold"]["useful_rate"], cold_warm["warm"]["useful_rate"]
    return Goal("cold router", f"first {cold_warm['requests']} requests after start within "
                f"{COLD_POINTS:g} points of a warm router's useful answers",
                f"cold {cold:.1%} vs warm {warm:.1%} ({cold_warm['gap_points']:+.1f} points)",
                cold_warm["gap_points"] <= COLD_POINTS)


def _hedging_goal(hedging: Mapping[str, Any]) -> Goal:
    cut, extra = hedging.get("p99_cut"), hedging.get("extra_requests")
    return Goal(
        "hedging under stragglers", "p99 cut >= 5x for <= 5% extra requests",
        f"p99 {_fmt(hedging.get('without_p99_ms'), '.0f')} -> "
        f"{_fmt(hedging.get('with_p99_ms'), '.0f')} ms ({_fmt(cut, '.1f')}x), "
        f"extra {_fmt(extra, '.1%')}",
        None if cut is None or extra is None else cut >= 5.0 and extra <= 0.05)


def _overhead_goals(overhead: Mapping[str, Any]) -> list[Goal]:
    decision = overhead.get("decision_us", {})
    p99 = decision.get("p99")
    ratio = overhead.get("throughput", {}).get("ratio")
    return [
        Goal("decision time", "p99 <= 100 us (in the router replica, 3 targets)",
             f"p50 {_fmt(decision.get('p50'), '.0f')} / p99 {_fmt(p99, '.0f')} us",
             None if p99 is None else p99 <= 100.0),
        Goal("router throughput", ">= 0.5 x direct at saturation", _fmt(ratio, ".2f") + "x",
             None if ratio is None else ratio >= 0.5),
    ]


def hedging_effect(with_hedge: Sequence[Outcome], without: Sequence[Outcome]) -> dict[str, Any]:
    """p99 with and without hedging over the same requests, and the extra upstream calls
    hedging cost (attempts per answered request, with minus without)."""
    def p99(outcomes: Sequence[Outcome]) -> float | None:
        return float(np.percentile([o.latency_ms for o in outcomes], 99)) if outcomes else None

    def attempts(outcomes: Sequence[Outcome]) -> float | None:
        ok = [o.attempts for o in outcomes if o.ok]
        return sum(ok) / len(ok) if ok else None

    a, b = p99(with_hedge), p99(without)
    ma, mb = attempts(with_hedge), attempts(without)
    return {
        "with_p99_ms": a, "without_p99_ms": b,
        "p99_cut": None if not a or b is None else b / a,
        "hedged_share": (sum(o.hedged for o in with_hedge) / len(with_hedge)
                         if with_hedge else None),
        "extra_requests": None if ma is None or mb is None or not mb else ma / mb - 1,
    }

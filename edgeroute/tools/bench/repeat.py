"""``edgeroute bench --repeat N``: every arm N times with different seeds, and the spread.

Run ``k`` (0-based) replays the scenario with seed ``seed + k``: other arrival
times, digits, deadlines and draws, the same conditions. Each run gets its own
full report (``run-k/``); this module adds the figures across runs: per arm the
mean and the range (min-max) of the useful-answer rate, SLO attainment,
accuracy, cost and p99, and for every arm whether its difference from the
router's is **beyond the spread** (the two ranges do not overlap: every run of
one beat every run of the other) or within it (the runs disagree, so the
difference is not shown).

The goals checked across runs:

* the router's useful-answer rate is at least every baseline's: a baseline whose
  range lies wholly above the router's, or whose mean is higher while the
  ranges overlap, is a miss;
* its cost is at most that of every baseline whose mean useful-answer rate is
  at least the router's;
* its mean useful-answer rate is at least 0.97x the oracle's;
* it closes at least 80% of the cost gap between the best static baseline
  (``always-edge`` or ``always-cloud``, by useful-answer rate) and the oracle;
* its useful-answer rate varies by at most 1.5 points across the runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edgeroute.tools.bench.compare import BASELINES, ORACLE, STATIC_BASELINES, Goal, gap_closed

METRICS = ("useful_rate", "slo_attainment", "accuracy", "cost_per_1k_usd")
SPREAD_GOAL_POINTS = 1.5
ORACLE_RATIO = 0.97
GAP_CLOSED = 0.80


def _stats(values: Sequence[float | None]) -> dict[str, Any]:
    known = [v for v in values if v is not None]
    if not known:
        return {"mean": None, "min": None, "max": None, "values": list(values)}
    return {"mean": sum(known) / len(known), "min": min(known), "max": max(known),
            "values": list(values)}


def spread(summaries: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per arm (and the oracle), per metric: mean, min, max and each run's value."""
    arms = list(summaries[0]["arms"])
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for arm in arms:
        rows = [s["arms"][arm]["overall"] for s in summaries if arm in s["arms"]]
        found[arm] = {m: _stats([r.get(m) for r in rows]) for m in METRICS}
        found[arm]["p99_ms"] = _stats([r["latency_ms"]["p99"] for r in rows])
    return found


def beyond_spread(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two ranges do not overlap: every run of one is above every run of the other."""
    if a["min"] is None or b["min"] is None:
        return False
    return bool(a["min"] > b["max"] or b["min"] > a["max"])


def _pts(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def repeat_goals(found: Mapping[str, Mapping[str, Any]], router: str = "default") -> list[Goal]:
    """The goals across runs (see the module docstring)."""
    mine = found.get(router)
    if mine is None:
        return []
    useful, cost = mine["useful_rate"], mine["cost_per_1k_usd"]
    baselines = {k: v for k, v in found.items() if k in BASELINES}
    result: list[Goal] = []

    worse = [k for k, v in baselines.items() if v["useful_rate"]["mean"] is not None
             and useful["mean"] is not None and v["useful_rate"]["mean"] > useful["mean"]]
    beaten = [k for k in worse if beyond_spread(baselines[k]["useful_rate"], useful)]
    ahead = [k for k, v in baselines.items() if k not in worse
             and beyond_spread(useful, v["useful_rate"])]
    best = max(baselines.items(), key=lambda kv: kv[1]["useful_rate"]["mean"] or 0.0,
               default=None)
    result.append(Goal(
        "useful answers vs every baseline", "router >= each baseline (3 runs)",
        f"{_pts(useful['mean'])} vs best {best[0]} {_pts(best[1]['useful_rate']['mean'])}; "
        f"above beyond the spread: {', '.join(ahead) or 'none'}; below: "
        f"{', '.join(f'{k} (beyond spread)' if k in beaten else k for k in worse) or 'none'}"
        if best else _pts(useful["mean"]),
        None if useful["mean"] is None or best is None else not worse))

    richer = [k for k, v in baselines.items() if v["useful_rate"]["mean"] is not None
              and useful["mean"] is not None and v["useful_rate"]["mean"] >= useful["mean"]]
    dearer = [k for k in richer if cost["mean"] is not None
              and baselines[k]["cost_per_1k_usd"]["mean"] is not None
              and cost["mean"] > baselines[k]["cost_per_1k_usd"]["mean"]]
    result.append(Goal(
        "cost vs baselines as useful", "router $ <= each baseline with >= its useful rate",
        f"router {_usd(cost['mean'])}; cheaper and as useful: "
        + (", ".join(f"{k} {_usd(baselines[k]['cost_per_1k_usd']['mean'])}" for k in dearer)
           or "none"),
        None if cost["mean"] is None else not dearer))

    oracle = found.get(ORACLE, {}).get("useful_rate", {}).get("mean")
    result.append(Goal(
        "useful answers vs oracle", f"router >= {ORACLE_RATIO}x oracle",
        f"{_pts(useful['mean'])} vs {_pts(oracle)}"
        + (f" ({useful['mean'] / oracle:.3f}x)" if oracle and useful["mean"] else ""),
        None if useful["mean"] is None or not oracle else useful["mean"] >= ORACLE_RATIO * oracle))
    result.append(_gap(found, mine))

    width = None if useful["min"] is None else (useful["max"] - useful["min"]) * 100
    result.append(Goal(
        "router spread", f"useful-answer range <= {SPREAD_GOAL_POINTS} points",
        "-" if width is None else f"{width:.1f} points ({_pts(useful['min'])}-"
                                  f"{_pts(useful['max'])})",
        None if width is None else width <= SPREAD_GOAL_POINTS + 1e-9))
    return result


def _usd(value: float | None) -> str:
    return "-" if value is None else f"${value:.3g}/1k"


def _gap(found: Mapping[str, Mapping[str, Any]], mine: Mapping[str, Any]) -> Goal:
    statics = {k: found[k] for k in STATIC_BASELINES if k in found}
    static = max(statics.items(), key=lambda kv: kv[1]["useful_rate"]["mean"] or 0.0,
                 default=None)
    best = found.get(ORACLE)
    closed = None
    if static is not None and best is not None:
        cs, cr = static[1]["cost_per_1k_usd"]["mean"], mine["cost_per_1k_usd"]["mean"]
        co = best["cost_per_1k_usd"]["mean"]
        if None not in (cs, cr, co):
            closed = gap_closed(cr, cs, co)
    measured = "-" if static is None else (
        f"{'-' if closed is None else f'{closed:.0%}'} of {static[0]}'s gap "
        f"({_usd(static[1]['cost_per_1k_usd']['mean'])} -> router "
        f"{_usd(mine['cost_per_1k_usd']['mean'])} -> oracle "
        f"{_usd(best['cost_per_1k_usd']['mean'] if best else None)})")
    return Goal("cost gap to the oracle", f">= {GAP_CLOSED:.0%} of the best static baseline's "
                "gap closed", measured, None if closed is None else closed >= GAP_CLOSED)


def _cell(stats: Mapping[str, Any], percent: bool) -> str:
    if stats["mean"] is None:
        return "-"
    if percent:
        return f"{stats['mean'] * 100:.1f}% ({stats['min'] * 100:.1f}-{stats['max'] * 100:.1f})"
    return f"{stats['mean']:.3g} ({stats['min']:.3g}-{stats['max']:.3g})"


SPREAD_COLUMNS = ("arm", "useful", "SLO", "accuracy", "$/1k marginal", "p99 ms",
                  "useful vs router")


def spread_rows(found: Mapping[str, Mapping[str, Any]], router: str = "default"
                ) -> list[list[str]]:
    rows = []
    mine = found.get(router)
    for arm, stats in found.items():
        if arm == router or mine is None:
            verdict = ""
        else:
            diff = (stats["useful_rate"]["mean"] or 0.0) - (mine["useful_rate"]["mean"] or 0.0)
            where = ("beyond the spread" if beyond_spread(stats["useful_rate"],
                                                          mine["useful_rate"])
                     else "within the spread")
            verdict = f"{diff * 100:+.1f} pts, {where}"
        p99 = stats["p99_ms"]
        rows.append([arm, _cell(stats["useful_rate"], True), _cell(stats["slo_attainment"], True),
                     _cell(stats["accuracy"], True), _cell(stats["cost_per_1k_usd"], False),
                     "-" if p99["mean"] is None else
                     f"{p99['mean']:.0f} ({p99['min']:.0f}-{p99['max']:.0f})", verdict])
    return rows


def markdown(name: str, seeds: Sequence[int], found: Mapping[str, Mapping[str, Any]],
             checked: Sequence[Goal], backend: str) -> str:
    from edgeroute.tools.bench.report import _md_table

    verdict = {True: "met", False: "MISSED", None: "n/a"}
    return "\n".join([
        f"# {name}: {len(seeds)} runs (seeds {', '.join(map(str, seeds))}), {backend}", "",
        "Each cell: mean over the runs (min-max). Useful: answered within the deadline, by "
        "the model asked for, with the right label. A difference is beyond the spread when "
        "the two ranges do not overlap.", "",
        _md_table(SPREAD_COLUMNS, spread_rows(found)), "",
        "## Goals across the runs", "",
        _md_table(("goal", "target", "measured", "verdict"),
                  [[g.name, g.target, g.measured, verdict[g.met]] for g in checked]), "",
    ])

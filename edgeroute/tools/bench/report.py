"""The benchmark's report: JSON for tools, Markdown for people, PNG plots, a console summary.

``report.json`` holds, per arm and for the oracle, the figures of
:func:`edgeroute.tools.figures.figures` overall and per phase, plus provisioned cost,
decision time and hedge rate; then the overhead measurements and each goal
with its verdict. ``report.md`` renders the same; the plots are the latency
CDF per arm, the cost-versus-attainment plane with the oracle, and a timeline
per arm with the faults marked.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from edgeroute.tools.bench.compare import ORACLE, goals, hedging_effect, oracle
from edgeroute.tools.figures import TARGET_COLOURS, attained_slo, figures
from edgeroute.tools.loadgen import Outcome

if TYPE_CHECKING:
    from edgeroute.tools.bench.run import ArmRun
    from edgeroute.tools.bench.scenario import Scenario



def _decision(outcomes: Sequence[Outcome]) -> dict[str, float | None]:
    values = [o.decision_us for o in outcomes if o.ok and o.decision_us is not None]
    if not values:
        return {"p50": None, "p99": None}
    p50, p99 = np.percentile(values, (50, 99))
    return {"p50": float(p50), "p99": float(p99)}


def _group(outcomes: Sequence[Outcome], scenario: Scenario, provisioned_usd: float
           ) -> dict[str, Any]:
    overall = figures(outcomes, scenario.duration_s)
    ok = overall["ok"]
    overall["provisioned_usd"] = provisioned_usd
    overall["provisioned_per_1k_usd"] = provisioned_usd / ok * 1000 if ok else None
    overall["decision_us"] = _decision(outcomes)
    overall["hedge_rate"] = overall["hedged"] / ok if ok else None
    overall["escalated"] = sum(o.escalated for o in outcomes if o.ok)
    phases = {p.name: figures([o for o in outcomes if o.phase == p.name], p.duration_s)
              for p in scenario.phases}
    models = {m: figures([o for o in outcomes if o.model == m], scenario.duration_s)
              for m in scenario.models()}
    return {"overall": overall, "phases": phases, "models": models}


def _machine() -> dict[str, Any]:
    import ray

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpus": os.cpu_count(), "memory_gib": round(memory, 1),
            "platform": platform.platform(), "python": platform.python_version(),
            "ray": ray.__version__, "date": dt.date.today().isoformat()}


def summarize(scenario: Scenario, arms: Mapping[str, ArmRun], overhead: Mapping[str, Any],
              wall_s: float, backend: str = "real stack",
              cold_warm: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The report's figures; ``cold_warm``: the router arm started cold against warm
    (:func:`edgeroute.tools.bench.simulated.cold_vs_warm`), where it was measured."""
    outcomes = {name: run.result.outcomes for name, run in arms.items()}
    best, picked = oracle(outcomes)
    arm_figures = {name: _group(run.result.outcomes, scenario, run.provisioned_usd)
                   for name, run in arms.items()}
    provisioned = float(np.mean([run.provisioned_usd for run in arms.values()]))
    arm_figures[ORACLE] = {**_group(best, scenario, provisioned), "picked_from": picked}
    hedging = None
    if scenario.hedging is not None:
        arm, without, phase = scenario.hedging
        hedging = {"arm": arm, "without": without, "phase": phase, **hedging_effect(
            [o for o in outcomes[arm] if o.phase == phase],
            [o for o in outcomes[without] if o.phase == phase])}
    decision = arm_figures[scenario.arms[0]]["overall"]["decision_us"]
    overhead_figures = {**overhead, "decision_us": decision}
    overall = {name: f["overall"] for name, f in arm_figures.items()}
    checked = goals(overall, router=scenario.arms[0], hedging=hedging, overhead=overhead_figures,
                    cold_warm=cold_warm)
    return {
        "scenario": scenario.model_dump(mode="json"),
        "machine": _machine(),
        "backend": backend,
        "wall_s": wall_s,
        "arms": arm_figures,
        "events": {name: [{"t_s": t, "name": e} for t, e in
                          sorted((*run.result.events, *run.restarts))]
                   for name, run in arms.items()},
        "hedging": hedging,
        "cold_warm": dict(cold_warm) if cold_warm is not None else None,
        "overhead": overhead_figures,
        "goals": [g.__dict__ for g in checked],
    }


def _n(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _mix(row: Mapping[str, Any]) -> str:
    return " ".join(f"{t} {c['share']:.0%}" for t, c in row["placement"].items())


ARM_COLUMNS = ("arm", "req", "failed", "SLO", "useful", "p50 ms", "p95 ms", "p99 ms",
               "accuracy",
               "$/1k marginal", "$/1k provisioned", "attempts", "hedged", "decision p50/p99 us",
               "placement")


def _arm_row(name: str, row: Mapping[str, Any]) -> list[str]:
    lat, dec = row["latency_ms"], row["decision_us"]
    return [name, str(row["requests"]), str(row["failed"]), _n(row["slo_attainment"], ".1%"),
            _n(row["useful_rate"], ".1%"), _n(lat["p50"]), _n(lat["p95"]), _n(lat["p99"]),
            _n(row["accuracy"], ".1%"),
            _n(row["cost_per_1k_usd"], ".3g"), _n(row["provisioned_per_1k_usd"], ".3g"),
            _n(row["mean_attempts"], ".2f"), _n(row["hedge_rate"], ".1%"),
            f"{_n(dec['p50'], '.0f')}/{_n(dec['p99'], '.0f')}", _mix(row)]


def _phase_rows(summary: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    names = list(summary["arms"])
    phases = [p["name"] for p in summary["scenario"]["phases"]]
    rows = [[phase, *(_n(summary["arms"][a]["phases"][phase]["slo_attainment"], ".1%")
                      for a in names)] for phase in phases]
    return ["phase", *names], rows


MODEL_COLUMNS = ("arm", "model", "req", "failed", "SLO", "useful", "p50 ms", "p99 ms",
                 "accuracy", "$/1k marginal", "placement")


def _model_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    """Each arm's figures split by the model its requests were for."""
    rows = []
    for name, arm in summary["arms"].items():
        for model, row in arm.get("models", {}).items():
            lat = row["latency_ms"]
            rows.append([name, model, str(row["requests"]), str(row["failed"]),
                         _n(row["slo_attainment"], ".1%"), _n(row["useful_rate"], ".1%"),
                         _n(lat["p50"]), _n(lat["p99"]), _n(row["accuracy"], ".1%"),
                         _n(row["cost_per_1k_usd"], ".3g"), _mix(row)])
    return rows


CALIBRATION_COLUMNS = ("arm", "deadline ms", "planned", "refused unplanned",
                       "predicted P(miss)", "observed miss", "gap (points)")


def _calibration_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    """Each arm's predicted P(miss) against what the client saw, per deadline class."""
    rows = []
    for name, arm in summary["arms"].items():
        if name == ORACLE:
            continue
        for deadline, c in (arm["overall"].get("calibration") or {}).items():
            gap = c["gap_points"]
            rows.append([name, deadline, str(c["planned"]), str(c["unplanned"]),
                         _n(c["predicted_p_miss"], ".1%"), _n(c["observed_miss"], ".1%"),
                         "-" if gap is None else f"{gap:+.1f}"])
    return rows


def _goal_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    verdict = {True: "met", False: "MISSED", None: "n/a"}
    return [[g["name"], g["target"], g["measured"], verdict[g["met"]]] for g in summary["goals"]]


def _overhead_rows(overhead: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for kind, row in overhead.get("hop", {}).items():
        routed = row.get("routed_ms", {})
        rows.append([f"hop to {kind} ({row['target']})",
                     f"{row['direct_ms']['p50']:.1f} / {row['direct_ms']['p99']:.1f} ms",
                     f"{_n(routed.get('p50'))} / {_n(routed.get('p99'))} ms",
                     f"+{_n(row.get('overhead_p50_ms'))} ms p50"])
    if "throughput" in overhead:
        t = overhead["throughput"]
        rows.append([f"throughput at saturation ({t['concurrency']} callers)",
                     f"{t['direct_rps']:.0f} rps", f"{t['routed_rps']:.0f} rps",
                     f"{_n(t['ratio'], '.2f')}x"])
    return rows


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(summary: Mapping[str, Any], plots: Mapping[str, str]) -> str:
    s, m = summary["scenario"], summary["machine"]
    arms = summary["arms"]
    parts = [
        f"# Benchmark: {s['name']}", "", s["description"].strip(), "",
        f"Run on the {summary.get('backend', 'real stack')}. "
        f"Machine: {m['cpus']} CPUs, {m['memory_gib']} GiB, {m['platform']}, Python "
        f"{m['python']}, Ray {m['ray']}; run {m['date']}, {summary['wall_s'] / 60:.1f} min. "
        f"Every arm replays the same {arms[ORACLE]['overall']['requests']} requests "
        f"(seed {s['seed']}).", "",
        "## Arms", "", _md_table(ARM_COLUMNS, [_arm_row(n, a["overall"]) for n, a in arms.items()]),
        "", "SLO: answered within the deadline, by the large model when `quality=high` was asked. "
        "Useful: met the SLO with the right label. Latency percentiles include failures. "
        "Oracle: per request, the cheapest measured outcome that was useful (else met the "
        "SLO).", "",
        "## SLO attainment per phase", "", _md_table(*_phase_rows(summary)), "",
        *(["## Per model", "", _md_table(MODEL_COLUMNS, _model_rows(summary)), ""]
          if len(s["mix"].get("models") or {}) > 1 else []),
        "## Goals", "", _md_table(("goal", "target", "measured", "verdict"), _goal_rows(summary)),
        "",
        "## Calibration at the client", "",
        "Per deadline class: the mean P(miss) the router predicted for the requests a plan ran "
        "for, against the share of them the client saw miss the deadline. A request refused "
        "before any decision (the router's own admission) carries no prediction.", "",
        _md_table(CALIBRATION_COLUMNS, _calibration_rows(summary)), "",
    ]
    if (cw := summary.get("cold_warm")) is not None:
        parts += ["## Cold router against warm", "",
                  f"The {cw['arm']} arm's first {cw['requests']} requests on a router that has "
                  "just started, against the same requests (same draws and faults) on the "
                  "same router running the trace again right after.", "",
                  _md_table(("router", "useful answers", "SLO"), [
                      [name, _n(cw[name]["useful_rate"], ".1%"),
                       _n(cw[name]["slo_attainment"], ".1%")] for name in ("cold", "warm")]),
                  ""]
    if summary["overhead"].get("hop") or summary["overhead"].get("throughput"):
        parts += ["## Overhead", "", _md_table(("measure", "direct", "routed", "added"),
                                               _overhead_rows(summary["overhead"])), ""]
    if s.get("sources"):
        parts += ["## Where the numbers come from", ""]
        parts += [f"- **{k}**: {v}" for k, v in s["sources"].items()] + [""]
    parts += [f"![{title}]({path})" for title, path in plots.items()]
    return "\n".join(parts) + "\n"


def render(summary: Mapping[str, Any], console: Console) -> None:
    table = Table(title=f"Arms of {summary['scenario']['name']}", header_style="bold")
    for column in ARM_COLUMNS:
        table.add_column(column, justify="left" if column in ("arm", "placement") else "right")
    for name, arm in summary["arms"].items():
        table.add_row(*_arm_row(name, arm["overall"]), style="italic" if name == ORACLE else None)
    console.print(table)
    header, rows = _phase_rows(summary)
    phases = Table(title="SLO attainment per phase", header_style="bold")
    for column in header:
        phases.add_column(column, justify="left" if column == "phase" else "right")
    for row in rows:
        phases.add_row(*row)
    console.print(phases)
    if len(summary["scenario"]["mix"].get("models") or {}) > 1:
        per_model = Table(title="Per model", header_style="bold")
        for column in MODEL_COLUMNS:
            per_model.add_column(column, justify="left" if column in (
                "arm", "model", "placement") else "right")
        for row in _model_rows(summary):
            per_model.add_row(*row)
        console.print(per_model)
    goal_table = Table(title="Goals (this run)", header_style="bold")
    for column in ("goal", "target", "measured", "verdict"):
        goal_table.add_column(column)
    for row in _goal_rows(summary):
        goal_table.add_row(*row, style="red" if row[3] == "MISSED" else None)
    console.print(goal_table)


def _plot_cdf(arms: Mapping[str, ArmRun], best: Sequence[Outcome], path: Path) -> None:
    figure = Figure(figsize=(8, 5), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    series = {**{n: r.result.outcomes for n, r in arms.items()}, ORACLE: tuple(best)}
    for i, (name, outcomes) in enumerate(series.items()):
        values = np.sort([o.latency_ms for o in outcomes])
        if not len(values):
            continue
        y = np.arange(1, len(values) + 1) / len(values)
        oracle_line = name == ORACLE
        ax.plot(values, y, label=name, linewidth=1.4, linestyle="--" if oracle_line else "-",
                color="black" if oracle_line else TARGET_COLOURS[i % 9])
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, failures at the time they took)")
    ax.set_ylabel("share of requests")
    ax.set_title("Latency CDF per arm", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.savefig(path, dpi=110)


def _plot_plane(summary: Mapping[str, Any], path: Path) -> None:
    figure = Figure(figsize=(7, 5), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    for i, (name, arm) in enumerate(summary["arms"].items()):
        row = arm["overall"]
        if row["cost_per_1k_usd"] is None or row["slo_attainment"] is None:
            continue
        marker, colour = ("*", "black") if name == ORACLE else ("o", TARGET_COLOURS[i % 9])
        ax.scatter(row["cost_per_1k_usd"], row["slo_attainment"], s=90, marker=marker,
                   color=colour, zorder=3)
        ax.annotate(name, (row["cost_per_1k_usd"], row["slo_attainment"]), fontsize=8,
                    xytext=(5, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("marginal cost per 1,000 answers ($)")
    ax.set_ylabel("SLO attainment")
    ax.set_title("Cost versus attainment (up and left is better)", fontsize=10)
    ax.grid(alpha=0.3)
    figure.savefig(path, dpi=110)


def _plot_timeline(summary: Mapping[str, Any], arms: Mapping[str, ArmRun], path: Path) -> None:
    figure = Figure(figsize=(12, 1.9 * len(arms) + 0.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = np.atleast_1d(figure.subplots(len(arms), 1, sharex=True, sharey=True))
    targets = sorted({o.target for r in arms.values() for o in r.result.outcomes if o.target})
    colours = {t: TARGET_COLOURS[i % 9] for i, t in enumerate(targets)}
    for ax, (name, run) in zip(axes, arms.items(), strict=True):
        ok = [o for o in run.result.outcomes if o.ok]
        ax.scatter([o.scheduled_s for o in ok], [o.latency_ms for o in ok], s=3, alpha=0.6,
                   c=[colours[o.target] for o in ok if o.target])
        bad = [o for o in run.result.outcomes if not o.ok]
        ax.scatter([o.scheduled_s for o in bad], [o.latency_ms for o in bad], s=12, marker="x",
                   color="tab:red")
        for event in summary["events"][name]:
            ax.axvline(event["t_s"], color="black", linestyle="--", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_ylabel(f"{name}\nms", fontsize=8)
    for target, colour in colours.items():
        axes[0].scatter([], [], color=colour, label=target, s=12)
    axes[0].scatter([], [], color="tab:red", marker="x", label="failed")
    axes[0].legend(fontsize=7, ncol=len(colours) + 1, loc="upper right")
    axes[-1].set_xlabel("scheduled send time (s); dashed: faults and restarts")
    figure.savefig(path, dpi=100)


REQUEST_FIELDS = ("seq", "model", "phase", "scheduled_s", "latency_ms", "status",
                  "deadline_ms", "quality", "label", "predicted", "target", "tier", "cost_usd",
                  "attempts", "fallback", "hedged", "escalated", "upstream_ms", "decision_us",
                  "predicted_p_miss", "send_lag_ms", "error")


def write_requests(arms: Mapping[str, ArmRun], path: Path) -> None:
    """One row per request and arm, for analysis beyond the report."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("arm", *REQUEST_FIELDS, "attained_slo"))
        for name, run in arms.items():
            for o in run.result.outcomes:
                writer.writerow((name, *(getattr(o, f) for f in REQUEST_FIELDS),
                                 attained_slo(o)))


def write_report(scenario: Scenario, arms: Mapping[str, ArmRun], overhead: Mapping[str, Any],
                 out: Path, console: Console, wall_s: float, backend: str = "real stack",
                 cold_warm: Mapping[str, Any] | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(scenario, arms, overhead, wall_s, backend, cold_warm)
    best, _ = oracle({n: r.result.outcomes for n, r in arms.items()})
    plots = {"Latency CDF per arm": "cdf.png", "Cost versus attainment": "cost_attainment.png",
             "Timeline per arm": "timeline.png"}
    _plot_cdf(arms, best, out / "cdf.png")
    _plot_plane(summary, out / "cost_attainment.png")
    _plot_timeline(summary, arms, out / "timeline.png")
    (out / "report.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    (out / "report.md").write_text(markdown(summary, plots))
    write_requests(arms, out / "requests.csv")
    render(summary, console)
    return [out / "report.json", out / "report.md", out / "requests.csv",
            *(out / p for p in plots.values())]


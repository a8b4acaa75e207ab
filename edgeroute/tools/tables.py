"""Rich tables for people: model cards and the router's view of its targets."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from edgeroute.models.card import load_card
from edgeroute.models.store import ModelSet


def card_table(models: ModelSet) -> Table:
    table = Table(title="digits models (held-out split of scikit-learn's digits)")
    for column in ("model", "role", "accuracy", "parameters", "MACs/row", "p50 b=1 ms",
                   "p50 b=32 ms", "version"):
        table.add_column(column, justify="left" if column in ("model", "role", "version")
                         else "right")
    for path in (models.teacher, models.student, models.student_int8):
        card = load_card(path)
        table.add_row(
            card.name, card.role, f"{card.heldout_accuracy:.2%}", f"{card.parameters:,}",
            f"{card.macs_per_row:,}", f"{card.latency.p50_ms_batch1:.3f}",
            f"{card.latency.p50_ms_batch32:.3f}", card.version,
        )
    return table


def wine_table(models: Any) -> Table:
    """The bundled wine models' cards (held-out split of scikit-learn's wine data)."""
    table = Table(title="wine models (held-out split of scikit-learn's wine)")
    for column in ("model", "role", "accuracy", "parameters", "p50 b=1 ms", "version"):
        table.add_column(column)
    for path in (models.teacher, models.student):
        card = load_card(path)
        table.add_row(card.name, card.role, f"{card.heldout_accuracy:.2%}",
                      f"{card.parameters:,}", f"{card.latency.p50_ms_batch1:.3f}", card.version)
    return table


def targets_table(targets: list[dict[str, Any]], replica: str | None = None) -> Table:
    seen_by = f" of replica {replica}" if replica else ""
    table = Table(title=f"targets (router's live view{seen_by})")
    for column in ("model", "target", "tier", "available", "breaker", "in flight", "network ms",
                   "queue ms",
                   "service ms", "predicted ms", "unsure", "share", "ok", "failed",
                   "USD/request", "last error"):
        table.add_column(column)
    for t in targets:
        e = t["estimates"]
        unsure = t.get("unsure_rate")
        table.add_row(
            t.get("model", "-"), t["name"], t["tier"],
            "yes" if t.get("available", e["available"]) else "no",
            t.get("breaker", {}).get("state", "-") + (", DRAINED" if t.get("drained") else ""),
            str(t.get("in_flight", "-")),
            f"{e['network_ms']:.1f}", f"{e['queue_ms']:.2f}", f"{e['service_ms']:.2f}",
            f"{e['predicted_ms']:.1f}", "-" if unsure is None else f"{unsure:.1%}",
            f"{t.get('traffic_share', 0.0):.0%}", str(e["successes"]), str(e["failures"]),
            f"{t['cost_usd_per_request']:.2e}", _last_error(e),
        )
    return table


def _last_error(estimates: dict[str, Any]) -> str:
    error = estimates.get("last_error")
    if not error:
        return ""
    ago = estimates.get("last_error_s_ago")
    return error[:40] + ("" if ago is None else f" ({ago:.0f} s ago)")


def fleet_table(members: list[dict[str, Any]], ttl_ms: float) -> Table:
    table = Table(title=f"edge fleet (dropped {ttl_ms / 1000:g} s after the last heartbeat)")
    for column in ("member", "url", "tier", "quality", "concurrency", "joined s ago",
                   "last heartbeat s ago"):
        table.add_column(column)
    for m in members:
        table.add_row(m["name"], m["url"], m["tier"], m["quality"], str(m["concurrency"]),
                      f"{m['joined_s_ago']:.1f}", f"{m['last_heartbeat_s_ago']:.1f}")
    return table

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


def targets_table(targets: list[dict[str, Any]]) -> Table:
    table = Table(title="targets (router's live view)")
    for column in ("target", "tier", "breaker", "network ms", "queue ms",
                   "service ms", "predicted ms", "ok", "failed", "USD/request", "last error"):
        table.add_column(column)
    for t in targets:
        e = t["estimates"]
        table.add_row(
            t["name"], t["tier"], t.get("breaker", {}).get("state", "-"),
            f"{e['network_ms']:.1f}", f"{e['queue_ms']:.2f}", f"{e['service_ms']:.2f}",
            f"{e['predicted_ms']:.1f}", str(e["successes"]), str(e["failures"]),
            f"{t['cost_usd_per_request']:.2e}", (e["last_error"] or "")[:40],
        )
    return table


def fleet_table(members: list[dict[str, Any]], ttl_ms: float) -> Table:
    table = Table(title=f"edge fleet (dropped {ttl_ms / 1000:g} s after the last heartbeat)")
    for column in ("member", "url", "tier", "quality", "concurrency", "joined s ago",
                   "last heartbeat s ago"):
        table.add_column(column)
    for m in members:
        table.add_row(m["name"], m["url"], m["tier"], m["quality"], str(m["concurrency"]),
                      f"{m['joined_s_ago']:.1f}", f"{m['last_heartbeat_s_ago']:.1f}")
    return table

"""The demo's second model: held-out rows of the bundled ``wine`` example sent through the
same endpoint as ``digits``, by the default policy and with ``quality=high``, reported as a
table (placements, held-out accuracy, latency)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import numpy as np
from rich.table import Table

from edgeroute.config import ModelEntry, StackConfig

WINE = "wine"


def with_wine(config: StackConfig) -> StackConfig:
    """The config with the bundled ``wine`` model added if it does not serve it yet."""
    if any(m.name == WINE for m in config.models):
        return config
    return config.model_copy(update={"models": [*config.models, ModelEntry(name=WINE)]})


def drive_wine(endpoint: str) -> dict[str, Any]:
    """Every held-out wine row once per mode; what each mode's answers were."""
    from edgeroute.models.wine import INPUT, LABEL, wine_split

    split = wine_split()
    report: dict[str, Any] = {}
    with httpx.Client(timeout=10) as client:
        for mode, parameters in (("default", {}), ("quality=high", {"quality": "high"})):
            tiers: dict[str, int] = {}
            correct, latencies, failed = 0, [], 0
            for row, label in zip(split.x_test, split.y_test, strict=True):
                body = {"inputs": [{"name": INPUT, "datatype": "FP32", "shape": [1, 13],
                                    "data": row.tolist()}],
                        "outputs": [{"name": LABEL}], "parameters": parameters}
                started = time.perf_counter()
                answer = client.post(f"{endpoint}/v2/models/{WINE}/infer", json=body)
                latencies.append((time.perf_counter() - started) * 1000)
                if answer.status_code != 200:
                    failed += 1
                    continue
                document = answer.json()
                target = document["parameters"]["target"]
                tiers[target] = tiers.get(target, 0) + 1
                correct += int(document["outputs"][0]["data"][0] == int(label))
            report[mode] = {"requests": len(split.y_test), "failed": failed,
                            "placement": tiers, "accuracy": correct / len(split.y_test),
                            "p50_ms": float(np.percentile(latencies, 50)),
                            "p99_ms": float(np.percentile(latencies, 99))}
    return report


def wine_report_table(report: dict[str, Any]) -> Table:
    table = Table(title="second model: wine (measurements FP32 [N, 13] -> 3 cultivars), "
                        "held-out rows")
    for column in ("mode", "requests", "failed", "placement", "accuracy", "p50 ms", "p99 ms"):
        table.add_column(column)
    for mode, r in report.items():
        placement = ", ".join(f"{t} {n}" for t, n in sorted(r["placement"].items()))
        table.add_row(mode, str(r["requests"]), str(r["failed"]), placement,
                      f"{r['accuracy']:.1%}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}")
    return table

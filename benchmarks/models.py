"""Whether a placement decision grows with the number of models one router serves.

Run from the repository root: ``.venv/bin/python -m benchmarks.models``
(``--requests N`` per row, default 20,000; ``--models 1,20`` the rows).

Each row builds one router's per-model routing services (:class:`router.models.ModelServices`)
for N models, each with three targets (two edges, one cloud) over an in-memory transport
that answers at once, warms each model with the same number of requests, and routes
requests spread evenly over the models through the real service (admission, decision,
execution, accounting), rebuilding due estimates off the request path every few requests as
the router's probe loop does. It reports the time to find the
request's model and the decision's own time (``decision_us``, as responses carry it),
both per request: with one service per model a decision only reads its own model's targets.
Exploration (:mod:`router.explore`) is timed per (model, target): a model with a twentieth
of the traffic explores on a larger share of its requests, and an exploring decision runs
the engine twice, so the p99 is also given without the exploring requests.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import numpy as np

from edgeroute import contract
from edgeroute.config import LinkProfile
from edgeroute.models.catalog import digits
from edgeroute.signature import Batch, blank_batch
from router.estimator import TargetEstimator
from router.metrics import MemoryFactory, RouterMetrics
from router.models import ModelServices
from router.policy import RoutingPolicy
from router.served import NotServed
from router.service import Rejected, RoutingService
from router.targets import TargetSet, make_target
from router.tenancy import Caller
from router.transport import Reply

CALLER = Caller("anonymous", "default", RoutingPolicy())
WARM_PER_MODEL = 300
MAINTAIN_EVERY = 5
"""Requests each model serves before the timed ones, so that every model's estimates are
as far along in either row."""


class Instant:
    """A target that answers every call at once with a confident digits answer."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def infer(self, x: Batch, timeout_s: float) -> Reply:
        rows = len(x)
        probabilities = np.full((rows, 10), 0.01, np.float32)
        probabilities[:, 3] = 0.91
        return Reply(outputs=contract.output_tensors(probabilities, np.full(rows, 3)),
                     model_version="1-bench", server_ms=0.1, queue_ms=0.0, batch_rows=rows,
                     confidence_output=contract.OUTPUT_PROBABILITIES)

    async def probe(self, timeout_s: float) -> None:
        return None

    async def aclose(self) -> None:
        return None


def _service(metrics: RouterMetrics) -> RoutingService:
    targets = []
    for name, tier, quality in (("edge-a", "edge", "small"), ("edge-b", "edge", "small"),
                                ("cloud", "cloud", "large")):
        estimator = TargetEstimator(name=name, tier=tier, quality=quality)  # type: ignore[arg-type]
        targets.append(make_target(name, tier, quality, LinkProfile(),  # type: ignore[arg-type]
                                   Instant(name), "bench", estimator))
    return RoutingService(TargetSet(targets), metrics=metrics)


def measure(n_models: int, requests: int, seed: int = 0) -> dict[str, float]:
    metrics = RouterMetrics(MemoryFactory())
    base = digits()
    models = ModelServices([(base if i == 0 else _renamed(base, f"m{i}"), _service(metrics))
                            for i in range(n_models)])
    names = models.names()
    rng = random.Random(seed)
    x = blank_batch(contract.SIGNATURE)
    lookup_us, decision_us, exploring = [], [], []
    failed: list[str] = []

    async def route(name: str) -> None:
        try:
            await models.by_name[name].service.route(
                x, deadline_ms=1000.0, received=time.monotonic(), quality="any", caller=CALLER)
        except (NotServed, Rejected):
            failed.append(name)

    def maintain() -> None:
        """What the router's probe loop does off the request path, a few times a second."""
        for model in models:
            for target in model.service.targets:
                target.estimator.maintain()

    async def run() -> None:
        for _ in range(WARM_PER_MODEL):
            for name in names:
                await route(name)
        maintain()
        for i in range(requests):
            if i % MAINTAIN_EVERY == 0:
                maintain()
            name = names[rng.randrange(len(names))]
            started = time.perf_counter_ns()
            served = models.get(name)
            lookup_us.append((time.perf_counter_ns() - started) / 1000)
            try:
                routed = await served.service.route(x, deadline_ms=1000.0,
                                                    received=time.monotonic(), quality="any",
                                                    caller=CALLER)
            except (NotServed, Rejected):
                failed.append(name)
                continue
            decision_us.append(routed.decision_us)
            exploring.append(routed.decision.reason.startswith("exploring"))

    asyncio.run(run())
    d, lk, ex = np.array(decision_us), np.array(lookup_us), np.array(exploring)
    return {"models": n_models, "decision_p50_us": float(np.percentile(d, 50)),
            "decision_p99_us": float(np.percentile(d, 99)),
            "exploring_share": float(ex.mean()),
            "plain_p99_us": float(np.percentile(d[~ex], 99)), "failed": len(failed),
            "lookup_p50_us": float(np.percentile(lk, 50)),
            "lookup_p99_us": float(np.percentile(lk, 99))}


def _renamed(model: object, name: str) -> object:
    import dataclasses

    return dataclasses.replace(model, name=name,  # type: ignore[type-var]
                               signature=model.signature.renamed(name))  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--models", default="1,20")
    args = parser.parse_args()
    print(f"{'models':>6} {'decision p50 us':>16} {'decision p99 us':>16} "
          f"{'exploring':>10} {'p99 not exploring':>18} "
          f"{'lookup p50 us':>14} {'lookup p99 us':>14}")
    for n in (int(v) for v in args.models.split(",")):
        row = measure(n, args.requests)
        print(f"{n:>6} {row['decision_p50_us']:>16.1f} {row['decision_p99_us']:>16.1f} "
              f"{row['exploring_share']:>10.2%} {row['plain_p99_us']:>18.1f} "
              f"{row['lookup_p50_us']:>14.2f} {row['lookup_p99_us']:>14.2f}"
              + (f"  ({row['failed']} not served)" if row["failed"] else ""), flush=True)


if __name__ == "__main__":
    main()

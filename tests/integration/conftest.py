"""The session stack of the integration tests: ``edgeroute up`` as a user runs it.

The stack uses its own ports and a test config in which the edge is the more
expensive tier, so that placement by deadline and by price can be told apart:
a relaxed deadline goes to the (cheaper) cloud, a tight one to the (nearer)
edge. Tests that need a stack of their own use :func:`tests.stackkit.running_stack`
on other ports.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from router.policy import PolicyDocument
from tests.stackkit import RunningStack, running_stack, stack_config

PORT = 18000
EDGE_PORTS = (18101, 18102)


def test_config() -> dict[str, Any]:
    document = stack_config(PORT, EDGE_PORTS)
    document["cloud"]["link"] = {"base_ms": 150.0, "jitter_ms": 3.0}
    for edge, base_ms in zip(document["edges"], (4.0, 12.0), strict=True):
        edge["link"] = {"base_ms": base_ms, "jitter_ms": 1.0}
    return document


def test_policy() -> dict[str, Any]:
    """The default policy with the edge priced above the cloud; anonymous callers may use
    every named policy (a test stack)."""
    document = PolicyDocument().model_dump(mode="json")
    document["prices"]["edge"] = {"usd_per_inference": 1e-5}
    document["prices"]["cloud"] = {"usd_per_compute_hour": 2.5, "usd_per_request": 1e-7}
    document["anonymous"]["allowed_policies"] = sorted(document["policies"])
    return document


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, models: Any) -> Iterator[RunningStack]:
    with running_stack(tmp_path_factory.mktemp("stack"), test_config(), test_policy()) as running:
        yield running

"""Two router replicas behind the Serve proxy: each learns on its own, both serve."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from tests.stackkit import open_loop, running_stack, stack_config

pytestmark = pytest.mark.integration


def test_two_router_replicas_share_the_load(tmp_path: Path, models: object) -> None:
    config = stack_config(19000, (19101, 19102))
    config["router"]["num_replicas"] = 2
    with running_stack(tmp_path, config) as stack:
        outcomes = asyncio.run(open_loop(stack.endpoint, 25, 6, field="router_replica",
                                         deadline_ms=1000))
    assert {status for status, _ in outcomes} == {200}
    replicas = Counter(replica for _, replica in outcomes)
    assert len(replicas) == 2, f"one replica served everything: {replicas}"
    assert min(replicas.values()) >= len(outcomes) // 5

"""OIP extensions shared by the router and the edge worker: compressed request bodies under
the size bound, Triton's statistics, model versions and the targets serving each."""

from __future__ import annotations

import gzip
import zlib
from types import SimpleNamespace
from typing import Any

import pytest

from edgeroute import contract
from edgeroute.http import content_encoding, inflate
from edgeroute.oip import OIPError
from edgeroute.oipstats import InferenceStats
from router.models import ModelServices
from router.oip_routes import OIPRoutes

LIMIT = 1024


@pytest.mark.parametrize("coding, pack", [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_compressed_bodies_inflate_up_to_the_limit(coding: str, pack: Any) -> None:
    body = b'{"inputs": []}' + b" " * (LIMIT - 14)
    assert inflate(pack(body), coding, LIMIT) == body
    with pytest.raises(OIPError) as bomb:
        inflate(pack(body + b" "), coding, LIMIT)
    assert bomb.value.status == 413


def test_a_bomb_is_refused_without_inflating_it_all() -> None:
    bomb = gzip.compress(b"\0" * (256 * 1024 * 1024))  # 256 MiB in about 250 KiB
    with pytest.raises(OIPError) as refused:
        inflate(bomb, "gzip", 4 * 1024 * 1024)
    assert refused.value.status == 413 and "decompressed" in refused.value.message


@pytest.mark.parametrize("data", [b"not gzip at all", gzip.compress(b"{}" * 100)[:-8]])
def test_corrupt_or_truncated_streams_are_400s(data: bytes) -> None:
    with pytest.raises(OIPError) as bad:
        inflate(data, "gzip", LIMIT)
    assert bad.value.status == 400


def test_content_encodings() -> None:
    assert content_encoding({}) is None
    assert content_encoding({"content-encoding": "identity"}) is None
    assert content_encoding({"content-encoding": "GZIP"}) == "gzip"
    with pytest.raises(OIPError) as brotli:
        content_encoding({"content-encoding": "br"})
    assert brotli.value.status == 415


def test_statistics_count_per_model_and_target() -> None:
    stats = InferenceStats("digits", "1", clock=lambda: 1000.0)
    assert stats.model_stats()["model_stats"][0]["inference_stats"]["success"] == {
        "count": 0, "ns": 0}
    stats.success(0.010, 4, target="edge-a", model_version="1-abc")
    stats.success(0.030, 1, target="cloud", model_version="1-def")
    stats.failure(0.002)
    stats.failure(0.004, target="cloud")
    model = stats.model_stats()["model_stats"][0]
    assert model["inference_count"] == 5 and model["execution_count"] == 2
    assert model["last_inference"] == 1_000_000
    assert model["inference_stats"]["success"] == {"count": 2, "ns": 40_000_000}
    assert model["inference_stats"]["fail"] == {"count": 2, "ns": 6_000_000}
    targets = model["parameters"]["targets"]
    assert targets["cloud"]["inference_stats"]["fail"]["count"] == 1
    assert targets["edge-a"]["inference_count"] == 4
    assert targets["edge-a"]["model_version"] == "1-abc"


def test_versions_come_from_what_targets_report() -> None:
    routes = OIPRoutes()
    service = SimpleNamespace(
        targets=[SimpleNamespace(name=n) for n in ("edge-b", "cloud", "edge-a")])
    routes.models = ModelServices.digits_only(service)  # type: ignore[arg-type]
    served = routes.models.get("digits")
    assert routes.version_targets(served) == {"1": ["cloud", "edge-a", "edge-b"]}
    served.stats.success(0.01, 1, target="cloud", model_version="2-new")
    served.stats.success(0.01, 1, target="edge-a", model_version="1-old")
    metadata = routes.metadata(served)
    assert metadata["versions"] == ["1", "2"]
    assert metadata["parameters"]["version_targets"] == {"1": ["edge-a", "edge-b"],
                                                         "2": ["cloud"]}
    assert metadata["parameters"]["target_model_versions"] == {"cloud": "2-new",
                                                               "edge-a": "1-old"}
    routes.check("digits", "2")
    with pytest.raises(OIPError) as unknown:
        routes.check("digits", "3")
    assert unknown.value.status == 404 and "served: 1, 2" in unknown.value.message
    assert contract.version_of("1-abc") == "1"

"""Stack configuration: the shipped file, defaults and validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edgeroute.config import DEFAULT_CONFIG_PATH, StackConfig

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_stack_file_spells_out_the_embedded_default() -> None:
    assert StackConfig.load(ROOT / DEFAULT_CONFIG_PATH) == StackConfig()


def test_default_stack_has_two_edges_with_different_links_and_one_cloud() -> None:
    config = StackConfig()
    assert [e.name for e in config.edges] == ["edge-a", "edge-b"]
    assert config.edges[0].link != config.edges[1].link
    assert config.endpoint == "http://127.0.0.1:8000"


def test_no_file_means_the_embedded_default() -> None:
    assert StackConfig.load(None) == StackConfig()


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"edges": [{"name": "cloud", "port": 9001}]}, "unique"),
        ({"edges": [{"name": "a", "port": 8000}]}, "ports must differ"),
        ({"cloud": {"autoscaling": {"min_replicas": 3, "max_replicas": 2}}}, "min_replicas"),
        ({"router": {"probe_interval_ms": 0}}, "greater than or equal to 50"),
        ({"edges": [{"name": "a", "port": 9001, "link": {"loss_probability": 2}}]},
         "less than or equal to 1"),
        ({"edges": [{"name": "Bad Name", "port": 9001}]}, "pattern"),
        ({"routr": {}}, "Extra inputs"),
    ],
)
def test_invalid_config_is_refused_with_the_reason(document: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        StackConfig.model_validate(document)


def test_config_is_frozen() -> None:
    config = StackConfig()
    with pytest.raises(ValidationError):
        config.port = 1  # type: ignore[misc]


def test_yaml_file_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "stack.yaml"
    path.write_text("port: 9000\ncloud:\n  num_gpus: 1\n  autoscaling: {min_replicas: 0}\n")
    config = StackConfig.load(path)
    assert config.port == 9000
    assert config.cloud.num_gpus == 1
    assert config.cloud.autoscaling.min_replicas == 0
    assert config.edges == StackConfig().edges


def test_shipped_policy_file_keeps_the_defaults_but_opens_the_baselines() -> None:
    from router.policy import PolicyDocument

    shipped = PolicyDocument.load(ROOT / "infra" / "policy.yaml")
    default = PolicyDocument()
    assert shipped.policies == default.policies
    assert shipped.prices == default.prices
    assert (shipped.retry, shipped.breaker, shipped.admission) == (
        default.retry, default.breaker, default.admission)
    assert set(shipped.anonymous.allowed_policies) == set(default.policies) - {"default"}

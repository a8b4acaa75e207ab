"""The deployment files: generated ones match their generator, and each says what the app needs.

Checked statically: the files are parsed and validated with Ray's own schemas;
nothing here starts a cluster.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from edgeroute.config import StackConfig
from edgeroute.tools import infra_gen
from edgeroute.tools.cli import main
from router.policy import PolicyDocument

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_LAUNCHER = ROOT / "infra/cluster/ray-cluster.yaml"
GRAFANA = ROOT / "infra/grafana/edgeroute.json"

COUNTERS = (
    "edgeroute_requests_total", "edgeroute_placements_total", "edgeroute_attempts_total",
    "edgeroute_retries_total", "edgeroute_hedges_total", "edgeroute_fallbacks_total",
    "edgeroute_shed_total", "edgeroute_breaker_transitions_total", "edgeroute_cost_usd_total",
    "edgeroute_cache_lookups_total", "edgeroute_cache_saved_usd_total",
)
HISTOGRAMS = ("edgeroute_request_latency_ms", "edgeroute_upstream_latency_ms",
              "edgeroute_decision_us")
GAUGES = (
    "edgeroute_target_predicted_latency_ms", "edgeroute_target_breaker_open",
    "edgeroute_cloud_replicas", "edgeroute_cache_bytes",
)
PROMETHEUS_NAMES = frozenset(
    [f"ray_{name}" for name in (*COUNTERS, *GAUGES)]
    + [f"ray_{name}_{suffix}" for name in HISTOGRAMS for suffix in ("bucket", "sum", "count")]
)
PROMQL_WORDS = frozenset({
    "sum", "avg", "min", "max", "count", "rate", "irate", "increase", "histogram_quantile",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "clamp_min", "clamp_max", "offset", "vector", "scalar", "abs", "round",
})


@pytest.fixture(autouse=True)
def _repository_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Generated files name their inputs relative to the repository root, as the CLI does."""
    monkeypatch.chdir(ROOT)


def _serve_yaml(path: str) -> tuple[str, ServeDeploySchema]:
    text = (ROOT / path).read_text()
    return text, ServeDeploySchema.model_validate(yaml.safe_load(text))


def _deployment(schema: ServeDeploySchema, name: str) -> Any:
    (app,) = schema.applications
    return next(d for d in app.deployments if d.name == name)


def test_every_generated_file_matches_what_the_generator_makes_now() -> None:
    stale = infra_gen.stale_files(ROOT)
    assert not stale, f"out of date: {stale}; run `edgeroute infra generate` from the repo root"


@pytest.mark.parametrize(("path", "stack"), [
    ("infra/serve/local.yaml", "infra/stack.yaml"),
    ("infra/serve/cluster.yaml", "infra/cluster/stack.yaml"),
])
def test_serve_configs_are_valid_and_say_how_they_were_made(path: str, stack: str) -> None:
    text, schema = _serve_yaml(path)
    assert f"edgeroute infra serve-config --config {stack}" in text.splitlines()[1]
    (app,) = schema.applications
    assert app.import_path == "router.app:app_builder"
    config = StackConfig.model_validate(app.args["config"])
    assert config == StackConfig.load(ROOT / stack)
    router = _deployment(schema, "router")
    PolicyDocument.model_validate(router.user_config["policy"])


def test_serve_config_command_prints_the_generated_yaml(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["infra", "serve-config", "--config", "infra/stack.yaml"]) == 0
    expected = infra_gen.render_serve_config(Path("infra/stack.yaml"),
                                             infra_gen.default_policy_path())
    assert capsys.readouterr().out == expected


def test_serve_config_command_refuses_an_invalid_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("retry: {max_attempts: 0}\n")
    assert main(["infra", "serve-config", "--policy", str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "max_attempts" in captured.err


def test_generate_rewrites_exactly_the_stale_files(tmp_path: Path) -> None:
    manifest = tmp_path / infra_gen.RAYSERVICE_PATH
    manifest.parent.mkdir(parents=True)
    manifest.write_text((ROOT / infra_gen.RAYSERVICE_PATH).read_text())
    infra_gen.generate(tmp_path)
    assert infra_gen.stale_files(tmp_path) == []
    (tmp_path / infra_gen.SERVE_LOCAL_PATH).write_text("# edited by hand\n")
    assert infra_gen.stale_files(tmp_path) == [infra_gen.SERVE_LOCAL_PATH]
    assert infra_gen.generate(tmp_path) == [infra_gen.SERVE_LOCAL_PATH]
    assert infra_gen.stale_files(tmp_path) == []


def test_cluster_serve_config_scales_gpu_replicas_from_zero() -> None:
    _, schema = _serve_yaml("infra/serve/cluster.yaml")
    assert schema.http_options.host == "0.0.0.0"
    router = _deployment(schema, "router")
    assert router.num_replicas == 2
    cloud = _deployment(schema, "cloud")
    assert cloud.ray_actor_options.num_gpus == 1
    scaling = cloud.autoscaling_config
    assert (scaling["min_replicas"], scaling["max_replicas"]) == (0, 4)
    config = StackConfig.load(ROOT / "infra/cluster/stack.yaml")
    assert all(edge.host not in ("127.0.0.1", "localhost") for edge in config.edges)


def test_cluster_launcher_config_passes_rays_own_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    document = yaml.safe_load(CLUSTER_LAUNCHER.read_text())
    validate_config(prepare_config(document))  # what `ray up` runs before calling AWS


def test_cluster_launcher_has_a_cpu_head_and_autoscaled_gpu_workers() -> None:
    document = yaml.safe_load(CLUSTER_LAUNCHER.read_text())
    types = document["available_node_types"]
    head = types[document["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu = [t for name, t in types.items()
           if name != document["head_node_type"] and t["resources"].get("GPU", 0) >= 1]
    assert len(gpu) == 1
    assert (gpu[0]["min_workers"], gpu[0]["max_workers"]) == (0, 4)
    assert document["max_workers"] >= gpu[0]["max_workers"]
    head_start = " ".join(document["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head_start
    assert "RAY_AUTH_MODE=token" in " ".join(document["worker_start_ray_commands"])
    assert any("-c ~/edgeroute/constraints.txt" in c for c in document["setup_commands"])
    assert document["file_mounts"]["~/edgeroute"] == "."


def test_rayservice_serves_exactly_the_cluster_serve_config() -> None:
    manifest = yaml.safe_load((ROOT / "infra/k8s/rayservice.yaml").read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    text, schema = _serve_yaml("infra/serve/cluster.yaml")
    assert manifest["spec"]["serveConfigV2"] == text
    assert ServeDeploySchema.model_validate(yaml.safe_load(manifest["spec"]["serveConfigV2"])) \
        == schema


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_rayservice_cluster_has_a_cpu_head_and_autoscaled_gpu_workers() -> None:
    cluster = yaml.safe_load((ROOT / "infra/k8s/rayservice.yaml").read_text())["spec"][
        "rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["authOptions"]["mode"] == "token"
    secret = cluster["authOptions"]["secretName"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    (gpu,) = cluster["workerGroupSpecs"]
    assert (gpu["minReplicas"], gpu["maxReplicas"]) == (0, 4)
    (worker,) = gpu["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    (head_container,) = head["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in head_container["resources"]["limits"]
    for container in (head_container, worker):
        assert container["image"] == head_container["image"]
        env = _env(container)
        assert env["RAY_AUTH_MODE"] == "token"
        assert env["RAY_AUTH_TOKEN"]["secretKeyRef"] == {"name": secret, "key": "auth_token"}


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def _metric_names(expr: str) -> set[str]:
    """Identifiers of a PromQL expression that are neither functions, keywords nor labels."""
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    stripped = re.sub(r"\{[^}]*\}", "", stripped)
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)
    stripped = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "",
                      stripped)
    stripped = re.sub(r"\$\{?\w+\}?", "", stripped)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", stripped))
    return words - PROMQL_WORDS


def test_dashboard_charts_only_the_routers_metrics() -> None:
    dashboard = json.loads(GRAFANA.read_text())
    assert dashboard["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    used: set[str] = set()
    graphs = [p for p in _panels(dashboard) if p["type"] != "row"]
    for panel in graphs:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = _metric_names(target["expr"])
            assert names, (panel["title"], target["expr"])
            assert names <= PROMETHEUS_NAMES, (panel["title"], names - PROMETHEUS_NAMES)
            used |= names
    assert {f"ray_{name}" for name in (*COUNTERS, *GAUGES)} <= used
    assert {f"ray_{name}_bucket" for name in HISTOGRAMS} <= used
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids))


def test_dashboard_has_the_panels_ops_look_for() -> None:
    dashboard = json.loads(GRAFANA.read_text())
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"])
             for p in _panels(dashboard) if p["type"] != "row"}
    latency = exprs["Latency p50 / p95 / p99"]
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, " in latency
    assert "ray_edgeroute_request_latency_ms_bucket" in latency
    cost = exprs["Cost per 1,000 requests"]
    assert cost.startswith("1000 * sum(rate(ray_edgeroute_cost_usd_total")
    assert "/ sum(rate(ray_edgeroute_requests_total" in cost


def test_every_panel_filters_by_the_model_variable_and_splits_targets_by_model() -> None:
    dashboard = json.loads(GRAFANA.read_text())
    model = {v["name"]: v for v in dashboard["templating"]["list"]}["model"]
    assert "label_values(ray_edgeroute_requests_total, model)" in model["definition"]
    assert model["includeAll"] and model["allValue"] == ".*"
    for panel in (p for p in _panels(dashboard) if p["type"] != "row"):
        for target in panel["targets"]:
            expr = target["expr"]
            selectors = re.findall(r"ray_edgeroute_\w+(\{[^}]*\})?", expr)
            assert selectors and all('model=~"$model"' in s for s in selectors), expr
            for grouping in re.findall(r"by \(([^)]*)\)", expr):
                if "target" in grouping:
                    assert "model" in grouping, (panel["title"], expr)


def test_metric_list_matches_what_the_router_registers() -> None:
    metrics = pytest.importorskip("router.metrics")
    factory = metrics.MemoryFactory()
    metrics.RouterMetrics(factory)
    kinds = {name: recorded.kind for name, recorded in factory.instruments.items()}
    expected = {**dict.fromkeys(COUNTERS, "counter"), **dict.fromkeys(HISTOGRAMS, "histogram"),
                **dict.fromkeys(GAUGES, "gauge")}
    assert kinds == expected

"""The ``models:`` list: resolving entries, refusing mismatched pairs, and a worker that
hosts several models."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from edge.server import EdgeWorker, Hosted, create_app
from edgeroute.config import StackConfig
from edgeroute.models.catalog import ModelConfigError, pinned, resolve
from edgeroute.models.runtime import OnnxModel
from edgeroute.models.store import ModelSet
from tests.onnx_models import sensor_pair, typed_model, wine
from tests.unit.fakes import run_async


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return sensor_pair(tmp_path_factory.mktemp("sensor"))


def config_of(tmp_path: Path, models: list[dict[str, object]]) -> StackConfig:
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump({"port": 8000, "models": models}))
    return StackConfig.load(path)


def test_a_config_with_only_port_and_models_takes_every_other_default(
        tmp_path: Path, pair: tuple[Path, Path]) -> None:
    config = config_of(tmp_path, [
        {"name": "digits"},
        {"name": "sensor", "edge_model": str(pair[0]), "cloud_model": str(pair[1]),
         "confidence_output": "scores"}])
    assert config.edges == StackConfig().edges and config.cloud == StackConfig().cloud
    assert [m.name for m in config.models] == ["digits", "sensor"]
    assert config.cloud_deployment("digits") == "cloud"
    assert config.cloud_deployment("sensor") == "cloud-sensor"
    assert [m.name for m in StackConfig().models] == ["digits"]


def test_pinning_records_each_files_sha256_and_a_changed_file_is_refused(
        tmp_path: Path, pair: tuple[Path, Path], models: ModelSet) -> None:
    small, large = (shutil.copy(p, tmp_path / p.name) for p in pair)
    config = pinned(config_of(tmp_path, [
        {"name": "sensor", "edge_model": str(small), "cloud_model": str(large)}]))
    entry = config.models[0]
    assert entry.edge_sha256 and entry.cloud_sha256
    served = resolve(config)["sensor"]
    assert [s.name for s in served.signature.inputs] == ["readings"]
    Path(large).write_bytes(Path(large).read_bytes() + b"\0")
    with pytest.raises(ModelConfigError, match="cloud_model"):
        resolve(config)


def test_variants_that_disagree_are_refused_naming_the_mismatch(
        tmp_path: Path, pair: tuple[Path, Path]) -> None:
    other = typed_model(tmp_path / "typed.onnx")
    config = config_of(tmp_path, [
        {"name": "sensor", "edge_model": str(pair[0]), "cloud_model": str(other)}])
    with pytest.raises(ModelConfigError, match=r"disagree: inputs differ: \['readings'\]"):
        resolve(config)


def test_a_confidence_output_the_model_lacks_is_refused(
        tmp_path: Path, pair: tuple[Path, Path]) -> None:
    config = config_of(tmp_path, [{"name": "sensor", "edge_model": str(pair[0]),
                                   "cloud_model": str(pair[1]), "confidence_output": "label"}])
    with pytest.raises(ModelConfigError, match="confidence_output 'label'"):
        resolve(config)


def test_an_unbundled_name_without_files_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not bundled"):
        config_of(tmp_path, [{"name": "sensor"}])


def test_one_worker_serves_every_model_it_hosts(
        pair: tuple[Path, Path], models: ModelSet) -> None:
    from edgeroute.models.card import sha256_of

    sensor = OnnxModel(pair[0], sha256=sha256_of(pair[0]))
    worker = EdgeWorker(OnnxModel(models.student_int8), extra=(Hosted("sensor", sensor),))
    x = wine()[0][:5]

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(worker))
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            body = {"inputs": [{"name": "readings", "datatype": "FP32", "shape": [5, 13],
                                "data": x.reshape(-1).tolist()}]}
            bad = {"inputs": [{"name": "readings", "datatype": "FP32", "shape": [1, 4],
                               "data": [1.0] * 4}]}
            return [await client.post("/v2/models/sensor/infer", json=body),
                    await client.post("/v2/models/sensor/infer", json=bad),
                    await client.post("/v2/repository/index"),
                    await client.get("/v2/models/sensor"),
                    await client.get("/v2/models/nope")]

    answer, bad, index, meta, unknown = run_async(main)
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    want = sensor.run({"readings": x})
    np.testing.assert_allclose(outputs["scores"]["data"], want["scores"].reshape(-1), rtol=1e-6)
    assert outputs["label"]["datatype"] == "INT64"
    assert bad.status_code == 400 and "[N, 13]" in bad.json()["error"]
    assert [m["name"] for m in index.json()] == ["digits", "sensor"]
    assert meta.json()["inputs"] == [{"name": "readings", "datatype": "FP32", "shape": [-1, 13]}]
    assert unknown.status_code == 404 and "'sensor'" in unknown.json()["error"]


def test_up_refuses_a_mismatched_pair_before_starting_anything(
        tmp_path: Path, pair: tuple[Path, Path], models: ModelSet,
        capsys: pytest.CaptureFixture[str]) -> None:
    from edgeroute.tools.cli import main

    other = typed_model(tmp_path / "typed.onnx")
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump({"port": 8000, "models": [
        {"name": "digits"},
        {"name": "sensor", "edge_model": str(pair[0]), "cloud_model": str(other)}]}))
    state = tmp_path / "state.json"
    assert main(["up", "--config", str(path), "--state-file", str(state)]) == 1
    err = capsys.readouterr().err
    assert "model 'sensor': edge_model and cloud_model disagree" in err
    assert not state.exists()


def test_targets_are_built_per_model_and_an_external_server_joins_its_own(
        tmp_path: Path, pair: tuple[Path, Path], models: ModelSet) -> None:
    from router.build import build_targets

    config = StackConfig.model_validate({
        "models": [{"name": "digits"}, {"name": "sensor", "edge_model": str(pair[0]),
                                        "cloud_model": str(pair[1])}],
        "external": [{"name": "triton", "url": "http://127.0.0.1:9", "model": "sensor"}]})
    served = resolve(config)
    digits_targets = build_targets(config, None, served["digits"])  # type: ignore[arg-type]
    sensor_targets = build_targets(config, None, served["sensor"])  # type: ignore[arg-type]
    assert sorted(t.name for t in digits_targets) == ["cloud", "edge-a", "edge-b"]
    assert sorted(t.name for t in sensor_targets) == ["cloud", "edge-a", "edge-b", "triton"]
    cloud = sensor_targets.get("cloud")
    assert cloud is not None and cloud.address == "serve:cloud-sensor"
    assert [t.name for t in cloud.trial.tensors] == ["readings"]
    assert cloud.estimator.bytes_per_row == 13 * 4 + 3 * 4 + 8
    with pytest.raises(ValueError, match="not in models"):
        StackConfig.model_validate({"external": [
            {"name": "triton", "url": "http://127.0.0.1:9", "model": "sensor"}]})


def test_relative_model_paths_are_read_from_the_config_files_directory(
        tmp_path: Path, pair: tuple[Path, Path]) -> None:
    (tmp_path / "onnx").mkdir()
    for p in pair:
        shutil.copy(p, tmp_path / "onnx" / p.name)
    config = config_of(tmp_path, [{"name": "sensor", "edge_model": "onnx/small.onnx",
                                   "cloud_model": "onnx/large.onnx"}])
    assert config.models[0].edge_model == tmp_path.resolve() / "onnx" / "small.onnx"
    assert resolve(config)["sensor"].edge_path == tmp_path.resolve() / "onnx" / "small.onnx"

"""The cloud deployment's batching for any signature: requests of several inputs are joined
into one session call and split back, row for row."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from cloud.deployment import CloudModel
from edgeroute.models.card import sha256_of
from edgeroute.models.runtime import OnnxModel
from tests.onnx_models import typed_model

run_all = CloudModel.func_or_class._run_all


def test_requests_of_several_inputs_share_one_run_and_get_their_own_rows(tmp_path: Path) -> None:
    path = typed_model(tmp_path / "typed.onnx")
    model = OnnxModel(path, sha256=sha256_of(path))
    calls = []

    def counting(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(len(inputs["ids"]))
        return model.run(inputs)

    replica = SimpleNamespace(model=SimpleNamespace(run=counting), batched=True)
    rng = np.random.default_rng(0)
    batch = [{"ids": rng.integers(0, 9, (rows, 4)), "mask": rng.random((rows, 4)) > 0.5}
             for rows in (1, 3, 2)]
    results = run_all(replica, batch)
    assert calls == [6]
    for inputs, out in zip(batch, results, strict=True):
        np.testing.assert_array_equal(out["kept"], np.where(inputs["mask"], inputs["ids"], 0))
        assert out["half"].dtype == np.float16 and len(out["half"]) == len(inputs["ids"])
    unbatched = SimpleNamespace(model=SimpleNamespace(run=counting), batched=False)
    calls.clear()
    run_all(unbatched, batch)
    assert calls == [1, 3, 2]

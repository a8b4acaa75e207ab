"""Batch jobs on the real stack (own ports 19800-19802): a 2,000-row digits job runs on the
idle edges, shows its progress, survives a kill of the router replica, and answers every
row with the label the model that ran it gives; a job can be cancelled; a bad one is a 4xx;
the ``edgeroute jobs`` command lists and shows jobs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from edgeroute import contract
from edgeroute.dataset import digits_split
from edgeroute.models.store import ModelSet
from edgeroute.oip import InferRequest, Tensor, decode_response, encode_request
from router.policy import PolicyDocument
from tests.stackkit import (
    RunningStack,
    alive,
    router_pids,
    running_stack,
    stack_config,
)

pytestmark = pytest.mark.integration

ROWS = 2000
CHUNK_ROWS = 32
MAX_ROWS = 10_000
WAIT_S = 180.0


def jobs_config() -> dict[str, Any]:
    """The default stack on its own ports, with edges slowed (so that a job runs for seconds)
    and small job chunks."""
    document = stack_config(19800, (19801, 19802))
    for edge in document["edges"]:
        edge["service_delay_ms"] = 60.0
    document["router"]["jobs"] = {"edge_chunk_rows": CHUNK_ROWS, "max_rows": MAX_ROWS}
    return document


def jobs_policy() -> dict[str, Any]:
    """The default policy with an edge inference priced below a large cloud batch's row:
    idle edge capacity is the cheapest place for a job with time to spare."""
    document = PolicyDocument().model_dump(mode="json")
    document["prices"]["edge"] = {"usd_per_inference": 1e-9, "usd_per_provisioned_hour": 0.02}
    return document


def rows(n: int = ROWS) -> np.ndarray:
    x = digits_split().x_test
    return np.ascontiguousarray(np.resize(x, (n, x.shape[1])), dtype=np.float32)


def submit(endpoint: str, x: np.ndarray, **parameters: Any) -> httpx.Response:
    request = InferRequest(inputs=(Tensor(contract.INPUT_NAME, x),), model_name="digits",
                           parameters={"deadline_ms": 600_000, **parameters},
                           binary_output_default=True)
    body, headers = encode_request(request, binary=True)
    return httpx.post(f"{endpoint}/v1/jobs", content=body, headers=headers, timeout=30)


def status(endpoint: str, job_id: str) -> dict[str, Any] | None:
    """The job's status, or ``None`` while the router does not answer (being restarted)."""
    try:
        answer = httpx.get(f"{endpoint}/v1/jobs/{job_id}", timeout=5)
    except httpx.HTTPError:
        return None
    return answer.json() if answer.status_code == 200 else None


def own_labels(models: ModelSet, x: np.ndarray) -> dict[str, np.ndarray]:
    """Each model's labels for ``x``, run here with onnxruntime: what each target must answer."""
    labels = {}
    for name, path in (("student-int8", models.student_int8), ("student", models.student),
                       ("teacher", models.teacher)):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = session.run([contract.OUTPUT_LABEL], {contract.INPUT_NAME: x})
        labels[name] = np.asarray(out[0])
    return labels


def follow_and_kill(stack: RunningStack, job_id: str) -> tuple[list[dict[str, Any]], int]:
    """Poll the job to its end; once it has made progress, SIGKILL the router replica.
    The statuses seen and the pid killed."""
    seen: list[dict[str, Any]] = []
    killed = 0
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        current = status(stack.endpoint, job_id)
        if current is not None:
            seen.append(current)
            if current["status"] in ("done", "failed", "cancelled"):
                return seen, killed
            if not killed and current["rows_done"] > 0:
                (killed,) = router_pids(stack)
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    pytest.fail(f"job {job_id} did not end within {WAIT_S} s; last: {seen[-1:]}")


def test_a_job_runs_on_idle_edges_survives_a_router_kill_and_matches_the_models(
        tmp_path: Path, models: ModelSet) -> None:
    x = rows()
    with running_stack(tmp_path, jobs_config(), jobs_policy()) as stack:
        accepted = submit(stack.endpoint, x)
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["id"]
        seen, killed = follow_and_kill(stack, job_id)
        final = seen[-1]
        result = httpx.get(f"{stack.endpoint}/v1/jobs/{job_id}/result", timeout=30)
        bad = {
            "wrong shape": submit(stack.endpoint, x[:10, :63]).status_code,
            "too many rows": submit(stack.endpoint, rows(MAX_ROWS + 1)).status_code,
            "bad deadline": submit(stack.endpoint, x[:10], deadline_ms="soon").status_code,
            "not json": httpx.post(f"{stack.endpoint}/v1/jobs", content=b"{",
                                   timeout=10).status_code,
        }
        cancelled = submit(stack.endpoint, rows(MAX_ROWS))
        cancel_id = cancelled.json()["id"]
        cli = [sys.executable, "-m", "edgeroute", "jobs"]
        state = ["--state-file", str(stack.state_file)]
        cancel_out = subprocess.run([*cli, "cancel", cancel_id, *state], capture_output=True,
                                    text=True, timeout=60)
        end = time.monotonic() + WAIT_S
        while (after := status(stack.endpoint, cancel_id)) is None or \
                after["status"] != "cancelled":
            assert time.monotonic() < end, f"the job was not cancelled: {after}"
            time.sleep(0.2)
        listed = subprocess.run([*cli, "list", *state], capture_output=True, text=True,
                                timeout=60)
        replicas_now = router_pids(stack)

    assert killed and not alive(killed) and replicas_now and killed not in replicas_now
    assert final["status"] == "done", final
    assert final["rows_done"] == final["rows"] == ROWS
    assert any(s["status"] == "running" and 0 < s["rows_done"] < ROWS for s in seen), \
        "progress was never visible"
    assert any(s.get("predicted_finish_at") for s in seen if s["status"] == "running")
    assert not final["will_miss_deadline"]
    assert sum(final["placement"].values()) == ROWS
    assert set(final["placement"]) <= {"edge-a", "edge-b"}, "idle edges are the cheapest"
    assert final["cost_usd"] > 0

    assert result.status_code == 200
    answer = decode_response(result.content, result.headers)
    labels = next(t.data for t in answer.outputs if t.name == contract.OUTPUT_LABEL)
    assert labels.shape == (ROWS,)
    expected = own_labels(models, x)
    for start in range(0, ROWS, CHUNK_ROWS):
        span = slice(start, start + CHUNK_ROWS)
        assert any(np.array_equal(labels[span], own[span]) for own in expected.values()), \
            f"rows {start}..: labels match no model's own"

    assert bad == {"wrong shape": 400, "too many rows": 400, "bad deadline": 400,
                   "not json": 400}
    assert cancel_out.returncode == 0, cancel_out.stderr
    assert after["rows_done"] < MAX_ROWS
    assert listed.returncode == 0, listed.stderr
    assert job_id in listed.stdout and cancel_id in listed.stdout

"""Batch jobs without a stack: the store on a temporary folder, the placement plan, and the
runner over a fake ``place`` (the routes over fake targets: ``test_job_routes.py``)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from edgeroute.config import JobSettings, StackConfig
from router.jobplan import Lane, plan
from router.jobrunner import JobRunner, Placed
from router.jobstore import JobRecord, JobStore, new_job_id
from tests.unit.fakes import run_async


def record(rows: int = 10, chunk_rows: int = 4, **changes: object) -> JobRecord:
    now = time.time()
    fields: dict[str, object] = dict(
        id=new_job_id(), tenant="acme", model="digits", rows=rows, chunk_rows=chunk_rows,
        inputs=("input",), created_at=now, deadline_at=now + 3600)
    fields.update(changes)
    return JobRecord.model_validate(fields)


def rows_input(rows: int) -> dict[str, np.ndarray]:
    """Row i holds the value i: an answer's order can be checked against it."""
    return {"input": np.repeat(np.arange(rows, dtype=np.float32)[:, None], 3, axis=1)}


def test_a_job_is_kept_whole_and_read_back(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    job = store.create(record(), rows_input(10))
    assert job.held_bytes == 10 * 3 * 4
    assert store.load(job.id) == job
    assert np.array_equal(store.inputs(job)["input"][:, 0], np.arange(10))
    for index in range(job.chunks):
        start, stop = job.span(index)
        store.write_chunk(job, index, {"label": np.arange(start, stop)})
    assert np.array_equal(store.result(job, ("label",))["label"], np.arange(10))
    assert [p.name for p in tmp_path.rglob("*.tmp")] == []
    assert [p.name for p in tmp_path.iterdir()] == [job.id]


def test_the_store_refuses_names_that_are_not_job_ids(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    assert store.load("../../etc") is None
    assert store.load("0" * 32) is None
    for bad in ("../x", "a" * 32 + "\n", "A" * 32):
        with pytest.raises(KeyError):
            store.folder(bad)


def test_a_claim_is_exclusive_until_released(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    job = store.create(record(), rows_input(10))
    first = store.claim(job.id)
    assert first is not None
    assert store.claim(job.id) is None
    first.release()
    second = store.claim(job.id)
    assert second is not None
    second.release()


def test_job_record_counts_rows_of_chunks_done() -> None:
    job = record(rows=10, chunk_rows=4, done_chunks=(0, 2))
    assert job.chunks == 3
    assert job.span(2) == (8, 10)
    assert job.rows_done == 6


def lane(name: str, cost: float, rate: float, capacity: int = 1, free: int = 1,
         tier: str = "edge") -> Lane:
    return Lane(name, tier, 1, cost, rate, capacity, free)  # type: ignore[arg-type]


def test_plan_uses_the_cheapest_lane_alone_when_it_finishes_in_time() -> None:
    lanes = [lane("cloud", 3e-8, 1000.0, tier="cloud"), lane("edge-a", 1e-8, 100.0)]
    placed = plan(lanes, pending_rows=1000, time_left_s=3600)
    assert [x.name for x in placed.lanes] == ["edge-a"]
    assert placed.finish_s == pytest.approx(10.0)
    assert not placed.will_miss_deadline


def test_plan_adds_dearer_lanes_only_as_the_deadline_needs() -> None:
    lanes = [lane("cloud", 3e-8, 1000.0, capacity=2, tier="cloud"), lane("edge-a", 1e-8, 100.0),
             lane("edge-b", 2e-8, 50.0)]
    assert [x.name for x in plan(lanes, 1000, 15).lanes] == ["edge-a"]
    assert [x.name for x in plan(lanes, 1000, 10).lanes] == ["edge-a", "edge-b"]
    assert [x.name for x in plan(lanes, 1000, 5).lanes] == ["edge-a", "edge-b", "cloud"]
    assert not plan(lanes, 1000, 5).will_miss_deadline


def test_lanes_as_cheap_as_one_taken_are_taken_too() -> None:
    lanes = [lane("cloud", 3e-8, 1000.0, tier="cloud"), lane("edge-a", 1e-8, 100.0),
             lane("edge-b", 1e-8, 50.0)]
    placed = plan(lanes, 1000, 3600)
    assert [x.name for x in placed.lanes] == ["edge-a", "edge-b"]
    assert placed.finish_s == pytest.approx(1000 / 150)


def test_plan_says_early_that_the_deadline_cannot_be_met() -> None:
    lanes = [lane("cloud", 3e-8, 100.0, tier="cloud"), lane("edge-a", 1e-8, 100.0)]
    placed = plan(lanes, pending_rows=10_000, time_left_s=10)
    assert placed.will_miss_deadline
    assert [x.name for x in placed.lanes] == ["edge-a", "cloud"]
    assert placed.finish_s == pytest.approx(50.0)


def test_a_busy_edge_still_counts_but_takes_nothing_now() -> None:
    """An edge busy with online calls (``free`` 0) keeps its place in the plan: the job waits
    for it rather than paying for the cloud, while it still finishes in time."""
    lanes = [lane("cloud", 3e-8, 1000.0, tier="cloud"), lane("edge-a", 1e-8, 100.0, free=0)]
    placed = plan(lanes, 1000, 3600)
    assert [(x.name, x.free) for x in placed.lanes] == [("edge-a", 0)]


def test_plan_without_usable_lanes_places_nothing() -> None:
    placed = plan([lane("edge-a", 1e-8, 100.0, capacity=0, free=0)], 1000, 3600)
    assert placed.lanes == () and placed.finish_s is None


class FakeRouter:
    """Lanes ``edge`` (cheap, one call) and ``cloud`` (dear, two calls); ``place`` answers
    each row with its input value as the label, failing as scripted."""

    def __init__(self, failures: int = 0, edge_free: bool = True) -> None:
        self.calls: list[tuple[str, int]] = []
        self.failures = failures
        self.edge_free = edge_free

    def lanes(self, job: JobRecord, own: dict[str, int], rates: dict[str, float]) -> list[Lane]:
        edge_free = 1 - own.get("edge", 0) if self.edge_free else 0
        return [Lane("edge", "edge", 1, 1e-8, 1e6, 1, edge_free),
                Lane("cloud", "cloud", 2, 3e-8, 1e6, 2, 2 - own.get("cloud", 0))]

    async def place(self, job: JobRecord, name: str, rows: dict[str, np.ndarray]) -> Placed:
        await asyncio.sleep(0)
        x = rows["input"]
        self.calls.append((name, len(x)))
        if self.failures:
            self.failures -= 1
            raise ConnectionError("refused")
        return Placed({"label": x[:, 0].astype(np.int64)}, name, 1e-6 * len(x))


def runner(store: JobStore, fake: FakeRouter, **settings: object) -> JobRunner:
    async def no_wait(seconds: float) -> None:
        await asyncio.sleep(0)

    return JobRunner(store, JobSettings.model_validate(settings), place=fake.place,
                     lanes=fake.lanes, sleep=no_wait, poll_s=0.001)


def test_a_job_runs_to_done_with_every_row_in_order(tmp_path: Path) -> None:
    store, fake = JobStore(tmp_path), FakeRouter()
    job = store.create(record(rows=10, chunk_rows=4), rows_input(10))
    finished = run_async(lambda: runner(store, fake).run_job(job))
    assert finished.status == "done" and finished.rows_done == 10
    assert store.load(job.id) == finished
    assert np.array_equal(store.result(finished, ("label",))["label"], np.arange(10))
    assert sum(finished.placement.values()) == 10
    assert finished.cost_usd == pytest.approx(1e-5)
    assert {name for name, _ in fake.calls} == {"edge"}


def test_with_the_edge_busy_the_job_waits_within_its_deadline(tmp_path: Path) -> None:
    """Online traffic first: an edge with no free slot is not used, and the dearer cloud is
    used only because the deadline needs it."""
    store, fake = JobStore(tmp_path), FakeRouter(edge_free=False)
    job = store.create(record(rows=12, chunk_rows=4, deadline_at=time.time() - 1),
                       rows_input(12))
    finished = run_async(lambda: runner(store, fake).run_job(job))
    assert finished.status == "done"
    assert finished.placement == {"cloud": 12}
    assert sorted(rows for _, rows in fake.calls) == [4, 8]
    assert finished.will_miss_deadline


def test_a_resumed_job_runs_only_the_chunks_not_kept(tmp_path: Path) -> None:
    store, fake = JobStore(tmp_path), FakeRouter()
    job = store.create(record(rows=10, chunk_rows=4), rows_input(10))
    store.write_chunk(job, 0, {"label": np.arange(4)})
    job = job.model_copy(update={"done_chunks": (0,), "status": "running",
                                 "placement": {"edge": 4}})
    store.save(job)
    assert run_async(lambda: runner(store, fake).run_pending()) == 1
    finished = store.load(job.id)
    assert finished is not None and finished.status == "done"
    assert sum(rows for _, rows in fake.calls) == 6
    assert np.array_equal(store.result(finished, ("label",))["label"], np.arange(10))


def test_failed_calls_are_placed_again_and_too_many_fail_the_job(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    job = store.create(record(rows=8, chunk_rows=4), rows_input(8))
    assert run_async(lambda: runner(store, FakeRouter(failures=3)).run_job(job)).status == "done"
    job = store.create(record(rows=8, chunk_rows=4), rows_input(8))
    failed = run_async(lambda: runner(store, FakeRouter(failures=99),
                                      max_chunk_failures=3).run_job(job))
    assert failed.status == "failed" and "refused" in (failed.error or "")


def test_a_cancelled_job_stops_and_says_so(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    job = store.create(record(rows=8, chunk_rows=4), rows_input(8))
    store.request_cancel(job.id)
    assert run_async(lambda: runner(store, FakeRouter()).run_job(job)).status == "cancelled"
    queued = store.create(record(rows=8, chunk_rows=4), rows_input(8))
    cancelled = runner(store, FakeRouter()).cancel_unclaimed(queued.id)
    assert cancelled is not None and cancelled.status == "cancelled"


def test_a_job_another_replica_holds_is_left_to_it(tmp_path: Path) -> None:
    store, fake = JobStore(tmp_path), FakeRouter()
    job = store.create(record(rows=8, chunk_rows=4), rows_input(8))
    held = store.claim(job.id)
    assert held is not None
    assert run_async(lambda: runner(store, fake).run_pending()) == 0
    assert runner(store, fake).cancel_unclaimed(job.id) is None
    assert store.cancel_requested(job.id)
    held.release()
    assert fake.calls == []


def test_finished_jobs_are_deleted_after_their_retention(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    old = store.create(record(status="done", finished_at=time.time() - 100), rows_input(10))
    new = store.create(record(status="done", finished_at=time.time()), rows_input(10))
    run_async(lambda: runner(store, FakeRouter(), retention_s=50).run_pending())
    assert store.load(old.id) is None and store.load(new.id) is not None


def test_the_stack_keeps_jobs_beside_its_state_file(tmp_path: Path) -> None:
    config = StackConfig().with_jobs_dir(tmp_path / "jobs")
    assert config.router.jobs.dir == (tmp_path / "jobs").resolve()
    assert config.with_jobs_dir(tmp_path / "other") == config


def test_job_deadlines_read_as_a_person_writes_them() -> None:
    from argparse import ArgumentTypeError

    from edgeroute.tools.jobs_cli import parse_duration_s

    assert [parse_duration_s(t) for t in ("1h", "30m", "90s", "500ms", "12")] == [
        3600.0, 1800.0, 90.0, 0.5, 12.0]
    for bad in ("", "soon", "-1h", "0"):
        with pytest.raises(ArgumentTypeError):
            parse_duration_s(bad)


def test_jobs_submit_parses_as_documented() -> None:
    from edgeroute.tools.cli import build_parser

    args = build_parser().parse_args(["jobs", "submit", "rows.npy", "--model", "digits",
                                      "--deadline", "1h", "--out", "result.npy"])
    assert (args.file, args.model, args.deadline, args.out) == ("rows.npy", "digits", 3600.0,
                                                                "result.npy")

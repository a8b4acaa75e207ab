"""Running batch jobs in a router replica: claim a job, cut it into chunks, place, keep.

:class:`JobRunner` is the replica's one background loop for jobs. Every ``scan_s`` it
looks at the store (:mod:`router.jobstore`) for a job not finished that no replica holds,
claims it and runs it to the end: so a job a killed replica left is resumed by the next
replica that looks (the claim is a lock the kernel drops with the process), and the
chunks it had kept are not run again. One job runs at a time per replica.

A running job's chunks go where :func:`router.jobplan.plan` says, through ``place`` (the
replica's routing service: the same transports, breakers, bounds and ledger as online
requests). A failed call puts its chunks back to be placed again after a backoff;
``max_chunk_failures`` failures in a row fail the job, as does a job whose inputs cannot
be read or whose model is no longer served. A cancel (the store's marker, written by any
replica) stops it within one poll. Clock and sleep are injected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from edgeroute.config import JobSettings
from router.jobplan import Lane, plan
from router.jobstore import FINAL, Claim, JobRecord, JobStore

log = logging.getLogger("ray.serve")
RATE_WEIGHT = 0.3
"""Weight of a new observation in a lane's rows-per-second average."""
MAX_BACKOFF_S = 5.0
"""After a failed call the runner waits ``poll_s * 2**failures`` (at most this) before
placing more: a target that just died has its breaker open before the job burns its
``max_chunk_failures``."""
SAVE_EVERY_S = 1.0
"""The record's progress figures (prediction, placement) are written at most this often
when nothing else changed; a chunk done is written at once."""


@dataclass(frozen=True)
class Placed:
    """One chunk call's answer."""

    outputs: dict[str, np.ndarray]
    target: str
    cost_usd: float


Place = Callable[[JobRecord, str, dict[str, np.ndarray]], Awaitable[Placed]]
"""``place(job, lane name, inputs of the rows)`` -> the answer, or raises."""
Lanes = Callable[[JobRecord, dict[str, int], dict[str, float]], list[Lane]]
"""``lanes(job, the job's calls in flight per lane, observed rows/s per lane)``."""


@dataclass
class _Call:
    lane: str
    chunks: list[int]
    started: float


class JobRunner:
    def __init__(self, store: JobStore, settings: JobSettings, *, place: Place, lanes: Lanes,
                 wall: Callable[[], float] = time.time,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 poll_s: float = 0.05, scan_s: float = 1.0) -> None:
        self.store, self.settings = store, settings
        self.place, self.lanes = place, lanes
        self.wall, self.clock, self.sleep = wall, clock, sleep
        self.poll_s, self.scan_s = poll_s, scan_s
        self.running: str | None = None
        """The job this replica runs now."""

    async def run(self) -> None:
        """Forever: run every job this replica can claim, one at a time; drop expired ones."""
        while True:
            try:
                await self.run_pending()
            except Exception:  # a bad job folder must not stop the loop
                log.exception("batch job loop")
            await self.sleep(self.scan_s)

    async def run_pending(self) -> int:
        """Run each job not finished that no one holds; the number run. Also deletes the
        jobs finished longer than ``retention_s`` ago."""
        ran = 0
        for record in list(self.store.records()):
            if record.status in FINAL:
                if self.wall() - (record.finished_at or record.created_at) > \
                        self.settings.retention_s:
                    self.store.remove(record.id)
                continue
            claim = self.store.claim(record.id)
            if claim is None:
                continue
            try:
                fresh = self.store.load(record.id)
                if fresh is not None and fresh.status not in FINAL:
                    self.running = record.id
                    try:
                        await self.run_job(fresh)
                    except (OSError, ValueError, LookupError) as exc:  # unreadable inputs,
                        self._finish(fresh, "failed", f"cannot run: {exc}")  # a model gone
                    ran += 1
            finally:
                self.running = None
                claim.release()
        return ran

    def cancel_unclaimed(self, job_id: str) -> JobRecord | None:
        """Cancel a job no replica is running now (the caller of ``DELETE``); ``None`` if
        one is (it obeys the marker) or there is no such job."""
        self.store.request_cancel(job_id)
        claim: Claim | None = self.store.claim(job_id)
        if claim is None:
            return None
        try:
            record = self.store.load(job_id)
            if record is not None and record.status not in FINAL:
                record = record.model_copy(update={"status": "cancelled",
                                                   "finished_at": self.wall()})
                self.store.save(record)
            return record
        finally:
            claim.release()

    async def run_job(self, record: JobRecord) -> JobRecord:
        """Run one claimed job to its end (done, failed or cancelled); its last record."""
        done = set(record.done_chunks)
        pending = [i for i in range(record.chunks) if i not in done]
        record = record.model_copy(update={"status": "running",
                                           "started_at": record.started_at or self.wall()})
        self.store.save(record)
        inputs = self.store.inputs(record)
        calls: dict[asyncio.Task[Placed], _Call] = {}
        rates: dict[str, float] = {}
        failures, saved_at = 0, self.clock()
        try:
            while pending or calls:
                if self.store.cancel_requested(record.id):
                    return self._finish(record, "cancelled")
                record = self._launch(record, pending, calls, rates, inputs)
                if self.clock() - saved_at >= SAVE_EVERY_S:
                    self.store.save(record)
                    saved_at = self.clock()
                if not calls:
                    await self.sleep(self.poll_s)
                    continue
                finished, _ = await asyncio.wait(calls, timeout=self.poll_s,
                                                 return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    call = calls.pop(task)
                    try:
                        placed = task.result()
                    except Exception as exc:  # any failure: place the chunks again
                        failures += 1
                        pending = sorted([*pending, *call.chunks])
                        log.warning("job %s: call to %s failed (%s in a row): %s", record.id,
                                    call.lane, failures, exc)
                        if failures >= self.settings.max_chunk_failures:
                            return self._finish(record, "failed",
                                                f"{failures} calls failed in a row; last: {exc}")
                        await self.sleep(min(self.poll_s * 2 ** failures, MAX_BACKOFF_S))
                        continue
                    failures = 0
                    record = self._keep(record, call, placed, rates)
                    saved_at = self.clock()
            return self._finish(record, "done")
        finally:
            for task in calls:
                task.cancel()
            if calls:
                await asyncio.wait(calls)

    def _launch(self, record: JobRecord, pending: list[int],
                calls: dict[asyncio.Task[Placed], _Call], rates: dict[str, float],
                inputs: dict[str, np.ndarray]) -> JobRecord:
        """Start calls on the lanes :func:`plan` picks while they are free; the record with
        the new prediction."""
        own: dict[str, int] = {}
        for call in calls.values():
            own[call.lane] = own.get(call.lane, 0) + 1
        lanes = self.lanes(record, own, dict(rates))
        pending_rows = sum(record.span(i)[1] - record.span(i)[0] for i in pending)
        in_flight_rows = sum(record.span(i)[1] - record.span(i)[0]
                             for c in calls.values() for i in c.chunks)
        now = self.wall()
        placement = plan(lanes, pending_rows + in_flight_rows, record.deadline_at - now)
        for lane in placement.lanes:
            for _ in range(lane.free):
                if not pending:
                    break
                chunks = _take(pending, lane.chunks_per_call)
                start, stop = record.span(chunks[0])[0], record.span(chunks[-1])[1]
                rows = {name: np.asarray(array[start:stop]) for name, array in inputs.items()}
                task = asyncio.ensure_future(self.place(record, lane.name, rows))
                calls[task] = _Call(lane.name, chunks, self.clock())
        finish = None if placement.finish_s is None else now + placement.finish_s
        return record.model_copy(update={"predicted_finish_at": finish,
                                         "will_miss_deadline": placement.will_miss_deadline})

    def _keep(self, record: JobRecord, call: _Call, placed: Placed,
              rates: dict[str, float]) -> JobRecord:
        """Write one answered call's chunks, then the record that counts them done."""
        offset = record.span(call.chunks[0])[0]
        for index in call.chunks:
            start, stop = record.span(index)
            self.store.write_chunk(record, index, {
                name: array[start - offset:stop - offset]
                for name, array in placed.outputs.items()})
        rows = record.span(call.chunks[-1])[1] - offset
        elapsed = max(self.clock() - call.started, 1e-6)
        seen = rows / elapsed
        rates[call.lane] = seen if call.lane not in rates else (
            (1 - RATE_WEIGHT) * rates[call.lane] + RATE_WEIGHT * seen)
        placement = dict(record.placement)
        placement[placed.target] = placement.get(placed.target, 0) + rows
        record = record.model_copy(update={
            "done_chunks": tuple(sorted({*record.done_chunks, *call.chunks})),
            "cost_usd": record.cost_usd + placed.cost_usd, "placement": placement})
        self.store.save(record)
        return record

    def _finish(self, record: JobRecord, status: str, error: str | None = None) -> JobRecord:
        now = self.wall()
        record = record.model_copy(update={
            "status": status, "finished_at": now, "error": error,
            "predicted_finish_at": now if status == "done" else record.predicted_finish_at,
            "will_miss_deadline": now > record.deadline_at if status == "done"
            else record.will_miss_deadline})
        self.store.save(record)
        log.info("job %s %s: %s rows, %.3g USD", record.id, status, record.rows_done,
                 record.cost_usd)
        return record


def _take(pending: list[int], most: int) -> list[int]:
    """Up to ``most`` consecutive chunks from the front of ``pending`` (removed from it)."""
    taken = [pending.pop(0)]
    while pending and len(taken) < most and pending[0] == taken[-1] + 1:
        taken.append(pending.pop(0))
    return taken

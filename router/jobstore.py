"""Batch jobs on disk: what each job is, how far it got, and its results.

One folder per job under the store's root, so that any router replica that sees the
folder can answer for a job and a replica that restarts picks up where one stopped:

* ``job.json``: the :class:`JobRecord` (status, chunks done, cost, placement);
* ``input-<name>.npy``: each input tensor, as submitted;
* ``chunk-<index>-<output>.npy``: each output of one chunk (rows
  ``index * chunk_rows`` up to the next chunk's first row);
* ``cancel``: present once a cancel was asked (the replica running the job obeys it);
* ``lock``: the replica running the job holds an exclusive ``flock`` on it
  (:meth:`JobStore.claim`); the kernel drops it when that process dies, so a job is run
  by one replica at a time and never by none for long.

Every file is written to a temporary name and renamed into place, so a reader (or a
replica killed mid-write) sees the old file or the new one, never half of one; a chunk's
files are written before the record that counts it done. A job folder appears whole:
it is filled under a temporary name first.
"""

from __future__ import annotations

import fcntl
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]
FINAL: frozenset[str] = frozenset({"done", "failed", "cancelled"})
_ID = re.compile(r"[0-9a-f]{32}")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class JobRecord(BaseModel):
    """One job's state; a new record replaces the old one (``model_copy(update=...)``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    tenant: str
    model: str
    rows: int = Field(ge=1)
    chunk_rows: int = Field(ge=1)
    inputs: tuple[str, ...]
    outputs: tuple[str, ...] | None = None
    """Outputs asked for (``None``: every output of the model)."""
    binary_outputs: tuple[str, ...] = ()
    """Outputs the result sends as binary tensors (as the submission asked)."""
    quality: Literal["any", "high"] = "any"
    request_id: str | None = None
    created_at: float
    """Wall-clock seconds (Unix time), as every time of a record: it outlives processes."""
    deadline_at: float
    status: JobStatus = "queued"
    done_chunks: tuple[int, ...] = ()
    cost_usd: float = 0.0
    placement: dict[str, int] = {}
    """Rows each target has answered."""
    started_at: float | None = None
    finished_at: float | None = None
    predicted_finish_at: float | None = None
    will_miss_deadline: bool = False
    error: str | None = None
    held_bytes: int = 0
    """Bytes of this job's inputs on disk (results add about as much again)."""

    @property
    def chunks(self) -> int:
        return math.ceil(self.rows / self.chunk_rows)

    def span(self, index: int) -> tuple[int, int]:
        """The rows ``[start, stop)`` of chunk ``index``."""
        start = index * self.chunk_rows
        return start, min(start + self.chunk_rows, self.rows)

    @property
    def rows_done(self) -> int:
        return sum(stop - start for start, stop in map(self.span, self.done_chunks))

    def view(self, status_url: str) -> dict[str, object]:
        """What ``GET /v1/jobs/{id}`` answers."""
        return {
            "id": self.id, "status": self.status, "model_name": self.model,
            "tenant": self.tenant, "rows": self.rows, "rows_done": self.rows_done,
            "cost_usd": self.cost_usd, "placement": dict(self.placement),
            "created_at": self.created_at, "deadline_at": self.deadline_at,
            "started_at": self.started_at, "finished_at": self.finished_at,
            "predicted_finish_at": self.predicted_finish_at,
            "will_miss_deadline": self.will_miss_deadline, "error": self.error,
            "status_url": status_url, "result_url": f"{status_url}/result",
        }


def new_job_id() -> str:
    return uuid.uuid4().hex


def _write_atomic(path: Path, content: bytes | np.ndarray) -> None:
    """Write to a temporary name, then rename into place: readers see the old file or the
    new one whole, also after this process is killed mid-write (not after a power loss:
    nothing is fsynced, to keep the replica's event loop free)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as out:
        if isinstance(content, bytes):
            out.write(content)
        else:
            np.save(out, content, allow_pickle=False)
    os.replace(tmp, path)


class Claim:
    """The exclusive right to run one job, held until :meth:`release` or process death."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle: IO[bytes] | None = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


class JobStore:
    """The jobs under ``root`` (created if missing). Not thread-safe: one event loop uses it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def folder(self, job_id: str) -> Path:
        if not _ID.fullmatch(job_id):
            raise KeyError(job_id)
        return self.root / job_id

    def create(self, record: JobRecord, inputs: dict[str, np.ndarray]) -> JobRecord:
        """Keep a new job: its inputs and its record, appearing at once as a whole."""
        if any(not _NAME.fullmatch(name) for name in inputs):
            raise ValueError("input names must be plain file-safe names")
        staging = self.root / f".new-{record.id}"
        staging.mkdir()
        held = 0
        for name, array in inputs.items():
            _write_atomic(staging / f"input-{name}.npy", np.ascontiguousarray(array))
            held += int(array.nbytes)
        record = record.model_copy(update={"held_bytes": held})
        _write_atomic(staging / "job.json", record.model_dump_json().encode())
        os.replace(staging, self.folder(record.id))
        return record

    def load(self, job_id: str) -> JobRecord | None:
        """The job's record, or ``None`` if there is no such job (or its record is unreadable)."""
        try:
            text = (self.folder(job_id) / "job.json").read_bytes()
            return JobRecord.model_validate_json(text)
        except (KeyError, OSError, ValidationError, ValueError):
            return None

    def save(self, record: JobRecord) -> None:
        folder = self.folder(record.id)
        if folder.exists():
            _write_atomic(folder / "job.json", record.model_dump_json().encode())

    def records(self) -> Iterator[JobRecord]:
        """Every readable job, oldest first."""
        found = [r for entry in self.root.iterdir() if _ID.fullmatch(entry.name)
                 if (r := self.load(entry.name)) is not None]
        yield from sorted(found, key=lambda r: (r.created_at, r.id))

    def inputs(self, record: JobRecord) -> dict[str, np.ndarray]:
        """The job's input tensors, memory-mapped (read as chunks are cut)."""
        folder = self.folder(record.id)
        return {name: np.load(folder / f"input-{name}.npy", mmap_mode="r", allow_pickle=False)
                for name in record.inputs}

    def write_chunk(self, record: JobRecord, index: int, outputs: dict[str, np.ndarray]) -> int:
        """Keep one chunk's outputs; the bytes written."""
        folder = self.folder(record.id)
        written = 0
        for name, array in outputs.items():
            if not _NAME.fullmatch(name):
                raise ValueError(f"output name {name!r} is not a plain file-safe name")
            _write_atomic(folder / f"chunk-{index}-{name}.npy", np.ascontiguousarray(array))
            written += int(array.nbytes)
        return written

    def result(self, record: JobRecord, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Every chunk's outputs ``names``, joined in row order (the job must be done)."""
        folder = self.folder(record.id)
        return {name: np.concatenate([
            np.load(folder / f"chunk-{i}-{name}.npy", allow_pickle=False)
            for i in range(record.chunks)]) for name in names}

    def request_cancel(self, job_id: str) -> None:
        _write_atomic(self.folder(job_id) / "cancel", b"")

    def cancel_requested(self, job_id: str) -> bool:
        return (self.folder(job_id) / "cancel").exists()

    def claim(self, job_id: str) -> Claim | None:
        """The right to run the job, or ``None`` while another holder (this process
        included) has it."""
        handle = open(self.folder(job_id) / "lock", "ab")  # noqa: SIM115 - held by the Claim
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        return Claim(handle)

    def held_bytes(self) -> int:
        """Bytes every job folder holds on disk."""
        return sum(p.stat().st_size for p in self.root.rglob("*.npy") if p.is_file())

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.folder(job_id), ignore_errors=True)


def summary(records: list[JobRecord]) -> list[dict[str, object]]:
    """``GET /v1/jobs``: one line per job, newest first."""
    return [{"id": r.id, "status": r.status, "model_name": r.model, "rows": r.rows,
             "rows_done": r.rows_done, "cost_usd": r.cost_usd, "created_at": r.created_at,
             "deadline_at": r.deadline_at, "will_miss_deadline": r.will_miss_deadline}
            for r in reversed(records)]


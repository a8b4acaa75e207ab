"""Open-loop load generator for the router's OIP endpoint. What it guarantees:

* **Open loop, no coordinated omission.** The whole schedule (Poisson arrivals,
  rows, deadlines, qualities) is drawn up front from seeds; each request is
  launched as its own task at its scheduled time whatever earlier ones are
  doing, and its latency is measured from the *scheduled* send time, so a late
  send counts against the system as it would for a real user (Gil Tene, "How
  NOT to measure latency").
* **Every wait is bounded.** A request gives up after its deadline plus
  ``timeout_slack_s``; the end-of-run drain and every event hook are bounded too.
* **Overload is recorded, not hidden.** Past ``max_in_flight`` a request is not
  queued (that would close the loop) but recorded as a client-side failure.
* **Nothing the server does makes run_load raise**: transport failures and
  timeouts become outcomes with ``status`` 0.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from edgeroute.contract import INPUT_NAME, MODEL_NAME, OUTPUT_LABEL
from edgeroute.dataset import Split
from edgeroute.oip import InferRequest, OIPError, Tensor, decode_response, encode_request
from edgeroute.tools.schedule import Phase, Planned, RequestMix, Schedule, plan

EventHook = Callable[[str], Awaitable[None]]
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
MAX_ERROR_CHARS = 300


@dataclass(frozen=True)
class Outcome:
    """One request as the user saw it; failure fields hold None/0/False."""

    phase: str
    scheduled_s: float
    latency_ms: float
    """From the scheduled send time to the end of the response (or the give-up)."""
    status: int
    """HTTP status, or 0 for a client-side transport error, timeout or drop."""
    deadline_ms: float
    quality: str
    label: int
    predicted: int | None
    target: str | None
    tier: str | None
    cost_usd: float
    attempts: int
    fallback: bool
    hedged: bool
    upstream_ms: float | None
    error: str | None
    send_lag_ms: float = 0.0
    """How late the request actually left; large values mean the client itself saturated."""
    seq: int = 0
    """The request's position in the schedule (see :class:`Planned`)."""
    decision_us: float | None = None
    escalated: bool = False
    model: str = MODEL_NAME
    """The model the request was for."""
    predicted_p_miss: float | None = None
    """The P(miss) of the plan the router ran for it (from the answer's or the error's
    ``parameters``); ``None``: no plan ran (refused before a decision, or no answer)."""

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


@dataclass(frozen=True)
class LoadResult:
    outcomes: tuple[Outcome, ...]
    events: tuple[tuple[float, str], ...]
    """(seconds since start when the event fired, name)."""
    phases: tuple[tuple[str, float, float], ...]
    """(name, start_s, end_s) as scheduled."""
    event_errors: tuple[tuple[str, str], ...] = ()
    """(event name, error) for hooks that raised or ran past their bound."""
    duration_s: float = 0.0


@dataclass(frozen=True)
class ProgressTick:
    sent: int
    done: int
    failed: int
    phase: str
    total: int
    elapsed_s: float


def _truncate(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "..."


@dataclass(frozen=True)
class ModelRows:
    """What the load sends one model: its held-out rows and labels, the name of its input
    and of the output holding the label."""

    x: np.ndarray
    y: np.ndarray
    input_name: str
    label_output: str

    @classmethod
    def digits(cls, data: Split) -> ModelRows:
        return cls(data.x_test, data.y_test, INPUT_NAME, OUTPUT_LABEL)


def bundled_rows(models: Sequence[str]) -> dict[str, ModelRows]:
    """The held-out rows of each bundled model but ``digits`` among ``models`` (``wine``:
    its bundled data's test split); a model without bundled data gets none."""
    if "wine" not in models:
        return {}
    from edgeroute.models import wine

    split = wine.wine_split()
    return {"wine": ModelRows(split.x_test, split.y_test, wine.INPUT, wine.LABEL)}


def _failure(p: Planned, latency_ms: float, status: int, error: str, lag_ms: float,
             predicted_p_miss: float | None = None) -> Outcome:
    return Outcome(p.phase, p.at_s, latency_ms, status, p.deadline_ms, p.quality, p.label,
                   None, None, None, 0.0, 0, False, False, None, _truncate(error), lag_ms,
                   p.seq, model=p.model, predicted_p_miss=predicted_p_miss)


def _error_of(response: httpx.Response) -> tuple[str, float | None]:
    """The error's message, and the P(miss) of the plan that ran for it, if it says."""
    try:
        document = response.json()
    except ValueError:
        document = None
    if isinstance(document, dict) and "error" in document:
        parameters = document.get("parameters")
        predicted = parameters.get("predicted_p_miss") if isinstance(parameters, dict) else None
        return (_truncate(str(document["error"])),
                float(predicted) if isinstance(predicted, (int, float)) else None)
    return _truncate(response.text) or f"HTTP {response.status_code}", None


def _parse(p: Planned, response: httpx.Response, latency_ms: float, lag_ms: float,
           label_output: str = OUTPUT_LABEL) -> Outcome:
    """One HTTP response as an Outcome; a malformed 200 keeps its status but is not ok."""
    if response.status_code != 200:
        error, predicted = _error_of(response)
        return _failure(p, latency_ms, response.status_code, error, lag_ms, predicted)
    try:
        decoded = decode_response(response.content, response.headers)
        labels = [t.data for t in decoded.outputs if t.name == label_output]
        params: dict[str, Any] = dict(decoded.parameters)
        upstream = params.get("upstream_ms")
        decision = params.get("decision_us")
        predicted = params.get("predicted_p_miss")
        return Outcome(
            p.phase, p.at_s, latency_ms, 200, p.deadline_ms, p.quality, p.label,
            int(np.asarray(labels[0]).reshape(-1)[0]),
            str(params["target"]), str(params["tier"]), float(params.get("cost_usd", 0.0)),
            int(params.get("attempts", 1)), bool(params.get("fallback", False)),
            bool(params.get("hedged", False)),
            None if upstream is None else float(upstream), None, lag_ms, p.seq,
            None if decision is None else float(decision), bool(params.get("escalated", False)),
            p.model, None if predicted is None else float(predicted),
        )
    except (OIPError, KeyError, IndexError, TypeError, ValueError) as exc:
        return _failure(p, latency_ms, 200, f"malformed response: {exc!r}", lag_ms)


class _Run:
    """State of one run: the dispatcher, the in-flight tasks and the counters."""

    def __init__(self, url: str, client: httpx.AsyncClient, schedule: Schedule,
                 data: Mapping[str, ModelRows], *, on_event: EventHook | None,
                 progress: Callable[[ProgressTick], None] | None,
                 max_in_flight: int, timeout_slack_s: float, clock: Clock, sleep: Sleep,
                 progress_interval_s: float, event_timeout_s: float,
                 parameters: Mapping[str, Any]) -> None:
        self.url, self.client, self.schedule, self.data = url, client, schedule, data
        self.parameters = dict(parameters)
        self.on_event, self.progress = on_event, progress
        self.max_in_flight, self.slack_s = max_in_flight, timeout_slack_s
        self.clock, self.sleep = clock, sleep
        self.progress_interval_s, self.event_timeout_s = progress_interval_s, event_timeout_s
        self.start = 0.0
        self.inflight: dict[asyncio.Task[Outcome], Planned] = {}
        self.event_tasks: list[asyncio.Task[None]] = []
        self.outcomes: list[Outcome] = []
        self.fired: list[tuple[float, str]] = []
        self.event_errors: list[tuple[str, str]] = []
        self.sent = self.failed = 0

    def now(self) -> float:
        return self.clock() - self.start

    async def run(self) -> LoadResult:
        self.start = self.clock()
        ticker = asyncio.create_task(self._tick()) if self.progress else None
        try:
            await self._dispatch()
            await self._drain()
        finally:
            leftovers = [*self.inflight, *self.event_tasks, *([ticker] if ticker else [])]
            for task in leftovers:
                task.cancel()
            await asyncio.gather(*leftovers, return_exceptions=True)
        self._report("done")
        outcomes = sorted(self.outcomes, key=lambda o: o.scheduled_s)
        return LoadResult(tuple(outcomes), tuple(self.fired), self.schedule.phases,
                          tuple(self.event_errors), self.now())

    async def _until(self, at_s: float) -> None:
        delay = at_s - self.now()
        await (self.sleep(delay) if delay > 0 else asyncio.sleep(0))

    async def _dispatch(self) -> None:
        items: list[tuple[float, int, Any]] = [(t, 0, name) for t, name in self.schedule.events]
        items += [(p.at_s, 1, p) for p in self.schedule.requests]
        items.sort(key=lambda item: (item[0], item[1]))
        for at_s, kind, item in items:
            await self._until(at_s)
            if kind == 0:
                self._fire(item)
            else:
                self._launch(item)
        await self._until(self.schedule.phases[-1][2])

    def _fire(self, name: str) -> None:
        self.fired.append((self.now(), name))
        if self.on_event is not None:
            self.event_tasks.append(asyncio.create_task(self._run_hook(self.on_event, name)))

    async def _run_hook(self, hook: EventHook, name: str) -> None:
        try:
            await asyncio.wait_for(hook(name), self.event_timeout_s)
        except asyncio.TimeoutError:
            self.event_errors.append((name, f"did not finish within {self.event_timeout_s} s"))
        except Exception as exc:
            self.event_errors.append((name, _truncate(f"{type(exc).__name__}: {exc}")))

    def _launch(self, p: Planned) -> None:
        self.sent += 1
        if len(self.inflight) >= self.max_in_flight:
            lag_ms = (self.now() - p.at_s) * 1000
            error = f"dropped by the client: {self.max_in_flight} requests already in flight"
            self._record(_failure(p, lag_ms, 0, error, lag_ms))
            return
        task = asyncio.create_task(self._send(p))
        self.inflight[task] = p
        task.add_done_callback(self._finished)

    def _record(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        if not outcome.ok:
            self.failed += 1

    def _finished(self, task: asyncio.Task[Outcome]) -> None:
        p = self.inflight.pop(task)
        latency_ms = (self.now() - p.at_s) * 1000
        if task.cancelled():
            self._record(_failure(p, latency_ms, 0, "abandoned at the end of the run", 0.0))
        elif (exc := task.exception()) is not None:
            self._record(_failure(p, latency_ms, 0, f"{type(exc).__name__}: {exc}", 0.0))
        else:
            self._record(task.result())

    async def _send(self, p: Planned) -> Outcome:
        lag_ms = max(0.0, (self.now() - p.at_s) * 1000)
        rows = self.data[p.model]
        x = rows.x[p.row : p.row + 1]
        request = InferRequest(inputs=(Tensor(rows.input_name, x),),
                               parameters={**self.parameters, "deadline_ms": p.deadline_ms,
                                           "quality": p.quality})
        body, headers = encode_request(request, binary=False)
        timeout_s = p.deadline_ms / 1000 + self.slack_s
        try:
            response = await asyncio.wait_for(
                self.client.post(self.url.format(model=p.model), content=body, headers=headers,
                                 timeout=timeout_s),
                timeout_s,
            )
        except (asyncio.TimeoutError, httpx.TimeoutException):
            error = f"timeout after {timeout_s:.3f} s"
        except (httpx.HTTPError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        else:
            return _parse(p, response, (self.now() - p.at_s) * 1000, lag_ms,
                          rows.label_output)
        return _failure(p, (self.now() - p.at_s) * 1000, 0, error, lag_ms)

    async def _drain(self) -> None:
        if self.inflight:
            slowest = max(p.deadline_ms for p in self.inflight.values()) / 1000
            _, pending = await asyncio.wait(set(self.inflight), timeout=slowest + self.slack_s + 1)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self.event_tasks:
            await asyncio.gather(*self.event_tasks, return_exceptions=True)

    def _report(self, phase: str) -> None:
        if self.progress is not None:
            self.progress(ProgressTick(self.sent, len(self.outcomes), self.failed, phase,
                                       len(self.schedule.requests), self.now()))

    async def _tick(self) -> None:
        while True:
            await self.sleep(self.progress_interval_s)
            now = self.now()
            self._report(next((n for n, _, end in self.schedule.phases if now < end), "drain"))


async def run_load(
    endpoint: str,
    phases: Sequence[Phase],
    data: Split,
    mix: RequestMix,
    *,
    on_event: EventHook | None = None,
    progress: Callable[[ProgressTick], None] | None = None,
    client: httpx.AsyncClient | None = None,
    max_in_flight: int = 2000,
    timeout_slack_s: float = 2.0,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
    seed: int = 0,
    progress_interval_s: float = 0.25,
    event_timeout_s: float = 60.0,
    parameters: Mapping[str, Any] | None = None,
    models: Mapping[str, ModelRows] | None = None,
) -> LoadResult:
    """Replay ``plan(phases, data, mix, seed)`` against ``{endpoint}/v2/models/<model>/infer``:
    ``digits`` with ``data``'s rows, and each other model of ``mix.models`` with the rows of
    ``models`` (its held-out rows, input and label output).

    ``on_event(name)`` runs in its own task (bounded by ``event_timeout_s``) so a
    slow hook never delays sends. Without ``client`` one is made with a
    connection pool as large as ``max_in_flight`` (a smaller pool would queue
    requests inside the client) and closed at the end; a passed client is left open.
    ``parameters`` go with every request beside its deadline and quality (e.g. ``policy``).
    """
    if max_in_flight < 1:
        raise ValueError("max_in_flight must be at least 1")
    rows = {MODEL_NAME: ModelRows.digits(data), **(models or {})}
    schedule = plan(phases, data, mix, seed,
                    {name: r.y for name, r in rows.items() if name != MODEL_NAME})
    url = f"{endpoint.rstrip('/')}/v2/models/{{model}}/infer"
    own = client is None
    http = client or httpx.AsyncClient(
        limits=httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=256),
        trust_env=False,
        headers={"accept-encoding": "identity"},  # load measures routing, not gzip
    )
    try:
        runner = _Run(url, http, schedule, rows, on_event=on_event, progress=progress,
                      max_in_flight=max_in_flight, timeout_slack_s=timeout_slack_s,
                      clock=clock, sleep=sleep, progress_interval_s=progress_interval_s,
                      event_timeout_s=event_timeout_s, parameters=parameters or {})
        return await runner.run()
    finally:
        if own:
            await http.aclose()

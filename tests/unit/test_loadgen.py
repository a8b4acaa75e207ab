"""The load generator against an in-process fake router (httpx.MockTransport).

Timing assertions use wide bounds: they tell open loop from closed loop (a
factor of ten apart), not milliseconds.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
import numpy as np
import pytest

from edgeroute.contract import output_tensors
from edgeroute.dataset import Split, digits_split
from edgeroute.oip import InferResponse, Tensor, decode_request, encode_response
from edgeroute.tools.loadgen import (
    LoadResult,
    Phase,
    ProgressTick,
    RequestMix,
    bundled_rows,
    plan,
    run_load,
)

ENDPOINT = "http://router.test"
Handler = Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]


@pytest.fixture(scope="module")
def data() -> Split:
    return digits_split(seed=0)


def fake_router(data: Split, *, delay_s: float = 0.0, fail_label: int | None = None) -> Handler:
    """Answers with the true label, even labels from edge-a and odd ones from cloud;
    requests for ``fail_label`` get a 503."""
    labels = {row.tobytes(): int(y) for row, y in zip(data.x_test, data.y_test, strict=True)}

    async def handler(request: httpx.Request) -> httpx.Response:
        decoded = decode_request(request.content, dict(request.headers))
        x = np.asarray(decoded.inputs[0].data, dtype=np.float32)
        label = labels[x[0].tobytes()]
        if delay_s:
            await asyncio.sleep(delay_s)
        if label == fail_label:
            return httpx.Response(503, json={"error": "overloaded",
                                             "parameters": {"predicted_p_miss": 0.25}},
                                  headers={"Retry-After": "1"})
        probabilities = np.eye(10, dtype=np.float32)[[label]]
        edge = label % 2 == 0
        params = {"target": "edge-a" if edge else "cloud", "tier": "edge" if edge else "cloud",
                  "cost_usd": 1e-6, "attempts": 1, "fallback": False, "hedged": False,
                  "upstream_ms": 1.0, "model_version": "1", "predicted_p_miss": 0.01}
        body, headers = encode_response(InferResponse(
            "digits", output_tensors(probabilities, np.array([label])), "1", None, params))
        return httpx.Response(200, content=body, headers=headers)

    return handler


def load(handler: Handler, phases: list[Phase], data: Split, mix: RequestMix | None = None,
         **kwargs: Any) -> LoadResult:
    async def main() -> LoadResult:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            result = await run_load(ENDPOINT, phases, data, mix or RequestMix(), client=client,
                                    **kwargs)
        leaked = asyncio.all_tasks() - {asyncio.current_task()}
        assert not leaked, f"run_load leaked tasks: {leaked}"
        return result

    return asyncio.run(main())


def within_poisson(count: int, expected: float, sigmas: float = 6.0) -> bool:
    return abs(count - expected) <= sigmas * math.sqrt(expected) + 1


def test_arrivals_per_phase_follow_the_rate(data: Split) -> None:
    phases = [Phase("steady", 60.0, 50.0), Phase("burst", 20.0, 400.0), Phase("idle", 5.0, 0.0)]
    schedule = plan(phases, data, RequestMix(), seed=3)
    counts = {p.name: sum(r.phase == p.name for r in schedule.requests) for p in phases}
    assert within_poisson(counts["steady"], 3000)
    assert within_poisson(counts["burst"], 8000)
    assert counts["idle"] == 0
    burst = [r.at_s for r in schedule.requests if r.phase == "burst"]
    assert min(burst) >= 60.0 and max(burst) <= 80.0
    assert schedule.phases == (("steady", 0.0, 60.0), ("burst", 60.0, 80.0), ("idle", 80.0, 85.0))


def test_plan_is_seeded_and_carries_true_labels(data: Split) -> None:
    phases = [Phase("a", 10.0, 100.0)]
    mix = RequestMix(deadlines_ms=((50.0, 3.0), (500.0, 1.0)), high_quality_share=0.2, seed=7)
    first, again = plan(phases, data, mix, seed=1), plan(phases, data, mix, seed=1)
    assert first == again
    assert plan(phases, data, mix, seed=2).requests != first.requests
    requests = first.requests
    assert all(r.label == data.y_test[r.row] for r in requests)
    assert len({r.row for r in requests}) > 100
    tight = sum(r.deadline_ms == 50.0 for r in requests) / len(requests)
    high = sum(r.quality == "high" for r in requests) / len(requests)
    assert 0.65 < tight < 0.85
    assert 0.12 < high < 0.28


def test_outcomes_record_answers_failures_and_placement(data: Split) -> None:
    phases = [Phase("warm", 0.3, 100.0), Phase("hot", 0.3, 200.0)]
    result = load(fake_router(data, fail_label=3), phases, data, seed=5)
    schedule = plan(phases, data, RequestMix(), seed=5)
    assert len(result.outcomes) == len(schedule.requests)
    for phase in phases:
        count = sum(o.phase == phase.name for o in result.outcomes)
        assert within_poisson(count, phase.rate_rps * phase.duration_s)
    for outcome in result.outcomes:
        if outcome.label == 3:
            assert (outcome.status, outcome.error, outcome.ok) == (503, "overloaded", False)
            assert outcome.predicted_p_miss == 0.25, "the error's parameters are kept"
        else:
            assert outcome.ok and outcome.predicted == outcome.label
            assert outcome.predicted_p_miss == 0.01
            assert outcome.target == ("edge-a" if outcome.label % 2 == 0 else "cloud")
            assert outcome.cost_usd == pytest.approx(1e-6) and outcome.upstream_ms == 1.0
    assert result.phases == (("warm", 0.0, 0.3), ("hot", 0.3, 0.6))
    assert [r.seq for r in schedule.requests] == list(range(len(schedule.requests)))
    assert sorted(o.seq for o in result.outcomes) == list(range(len(schedule.requests)))


def test_latency_counts_from_the_scheduled_time_not_the_send(data: Split) -> None:
    async def late_sleep(seconds: float) -> None:
        await asyncio.sleep(seconds + 0.05)

    result = load(fake_router(data), [Phase("a", 0.5, 40.0)], data, sleep=late_sleep, seed=1)
    first = result.outcomes[0]
    assert first.send_lag_ms >= 45.0 and first.latency_ms >= 45.0, "the server itself is instant"
    assert all(o.latency_ms >= o.send_lag_ms for o in result.outcomes)


def test_a_slow_server_shows_in_latency(data: Split) -> None:
    result = load(fake_router(data, delay_s=0.1), [Phase("a", 0.4, 40.0)], data, seed=2)
    assert result.outcomes and all(o.ok for o in result.outcomes)
    assert min(o.latency_ms for o in result.outcomes) >= 100.0


def test_a_slow_server_does_not_slow_the_send_schedule(data: Split) -> None:
    phases = [Phase("steady", 2.0, 50.0)]
    started = time.monotonic()
    result = load(fake_router(data, delay_s=0.2), phases, data, seed=4)
    elapsed = time.monotonic() - started
    assert within_poisson(len(result.outcomes), 100)
    assert all(o.ok for o in result.outcomes)
    assert elapsed < 4.0, "a closed loop would need ~20 s for 100 requests of 0.2 s"
    assert max(o.scheduled_s for o in result.outcomes) > 1.5
    assert max(o.latency_ms for o in result.outcomes) < 1000.0


def test_events_fire_at_their_offsets_without_delaying_sends(data: Split) -> None:
    calls: list[tuple[float, str]] = []
    started = time.monotonic()

    async def on_event(name: str) -> None:
        calls.append((time.monotonic() - started, name))
        if name == "restart edge-a":
            raise RuntimeError("restart refused")
        await asyncio.sleep(0.3)

    phases = [Phase("base", 0.4, 40.0, events=((0.2, "kill edge-a"),)),
              Phase("chaos", 0.4, 40.0, events=((0.1, "restart edge-a"),))]
    result = load(fake_router(data), phases, data, on_event=on_event, seed=6)
    assert [name for _, name in result.events] == ["kill edge-a", "restart edge-a"]
    assert [name for _, name in calls] == ["kill edge-a", "restart edge-a"]
    (kill_t, _), (restart_t, _) = result.events
    assert kill_t == pytest.approx(0.2, abs=0.15)
    assert restart_t == pytest.approx(0.5, abs=0.15)
    assert result.event_errors == (("restart edge-a", "RuntimeError: restart refused"),)
    after_kill = [o for o in result.outcomes if 0.25 < o.scheduled_s < 0.8]
    assert after_kill and max(o.send_lag_ms for o in after_kill) < 150.0


def test_timeouts_are_bounded(data: Split) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    mix = RequestMix(deadlines_ms=((100.0, 1.0),))
    started = time.monotonic()
    result = load(hang, [Phase("a", 0.3, 30.0)], data, mix=mix, timeout_slack_s=0.2, seed=3)
    assert time.monotonic() - started < 3.0
    assert result.outcomes
    for outcome in result.outcomes:
        assert outcome.status == 0 and "timeout" in (outcome.error or "")
        assert 250.0 <= outcome.latency_ms < 1500.0


def test_slow_event_hooks_are_bounded(data: Split) -> None:
    async def stuck(name: str) -> None:
        await asyncio.Event().wait()

    phases = [Phase("a", 0.2, 10.0, events=((0.0, "partition cloud"),))]
    started = time.monotonic()
    result = load(fake_router(data), phases, data, on_event=stuck, event_timeout_s=0.3)
    assert time.monotonic() - started < 3.0
    assert result.event_errors == (("partition cloud", "did not finish within 0.3 s"),)


def test_past_max_in_flight_requests_are_dropped_not_queued(data: Split) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    mix = RequestMix(deadlines_ms=((100.0, 1.0),))
    result = load(hang, [Phase("a", 0.2, 100.0)], data, mix=mix, timeout_slack_s=0.1,
                  max_in_flight=5, seed=8)
    dropped = [o for o in result.outcomes if "dropped" in (o.error or "")]
    timed_out = [o for o in result.outcomes if "timeout" in (o.error or "")]
    assert len(timed_out) == 5
    assert len(dropped) == len(result.outcomes) - 5 > 0
    assert all(o.status == 0 for o in result.outcomes)


def test_transport_errors_become_status_zero_outcomes(data: Split) -> None:
    async def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    result = load(refuse, [Phase("a", 0.2, 50.0)], data, seed=2)
    assert result.outcomes
    assert all(o.status == 0 and "ConnectError" in (o.error or "") for o in result.outcomes)


def test_malformed_success_is_not_ok(data: Split) -> None:
    async def garbage(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"model_name": "digits", "outputs": []})

    result = load(garbage, [Phase("a", 0.2, 50.0)], data, seed=2)
    assert result.outcomes
    assert all(o.status == 200 and not o.ok for o in result.outcomes)
    assert all("malformed" in (o.error or "") for o in result.outcomes)


def test_progress_ends_with_everything_done(data: Split) -> None:
    ticks: list[ProgressTick] = []
    result = load(fake_router(data, fail_label=0), [Phase("a", 0.4, 50.0)], data,
                  progress=ticks.append, progress_interval_s=0.1, seed=9)
    assert len(ticks) >= 3
    last = ticks[-1]
    n = len(result.outcomes)
    assert (last.sent, last.done, last.total, last.phase) == (n, n, n, "done")
    assert last.failed == sum(not o.ok for o in result.outcomes) > 0
    assert "a" in {t.phase for t in ticks[:-1]}


def test_bad_configuration_fails_at_construction() -> None:
    with pytest.raises(ValueError):
        Phase("a", 0.0, 10.0)
    with pytest.raises(ValueError):
        Phase("a", 1.0, 10.0, events=((2.0, "late"),))
    with pytest.raises(ValueError):
        RequestMix(deadlines_ms=((100.0, 0.0),))
    with pytest.raises(ValueError):
        RequestMix(high_quality_share=1.5)


def test_digits_split_is_stratified_and_typed(data: Split) -> None:
    assert data.x_train.dtype == np.float32 and data.x_test.dtype == np.float32
    assert data.y_train.dtype == np.int64 and data.y_test.dtype == np.int64
    assert data.x_train.shape[1] == data.x_test.shape[1] == 64
    assert len(data.x_test) == 450 and len(data.x_train) == 1347
    assert data.x_test.min() >= 0.0 and data.x_test.max() <= 16.0
    full = np.bincount(np.concatenate([data.y_train, data.y_test]))
    assert np.all(np.abs(np.bincount(data.y_test) - full * 0.25) <= 1.0)
    again = digits_split(seed=0)
    assert np.array_equal(again.x_test, data.x_test)


def test_a_model_mix_sends_each_model_its_own_rows_at_its_share(data: Split) -> None:
    phases = [Phase("a", 20.0, 100.0)]
    wine = bundled_rows(["digits", "wine"])["wine"]
    mix = RequestMix(deadlines_ms=((50.0, 1.0), (500.0, 1.0)), seed=7,
                     models=(("digits", 0.7), ("wine", 0.3)))
    one = plan(phases, data, RequestMix(deadlines_ms=mix.deadlines_ms, seed=7), seed=1)
    mixed = plan(phases, data, mix, seed=1, labels={"wine": wine.y})
    assert [(r.at_s, r.deadline_ms) for r in mixed.requests] == [
        (r.at_s, r.deadline_ms) for r in one.requests]
    share = sum(r.model == "wine" for r in mixed.requests) / len(mixed.requests)
    assert 0.25 < share < 0.35
    for r in mixed.requests:
        assert r.label == (wine.y if r.model == "wine" else data.y_test)[r.row]
    assert len({r.row for r in mixed.requests if r.model == "wine"}) == len(wine.y)
    with pytest.raises(ValueError, match="no held-out rows for the models"):
        plan(phases, data, mix, seed=1)
    with pytest.raises(ValueError, match="add up to 1"):
        RequestMix(models=(("digits", 0.7), ("wine", 0.2)))


def test_each_request_goes_to_its_models_route_with_its_models_input(data: Split) -> None:
    wine = bundled_rows(["wine"])["wine"]
    digits_answer = fake_router(data)
    wine_labels = {row.tobytes(): int(y) for row, y in zip(wine.x, wine.y, strict=True)}
    seen: list[tuple[str, str]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        decoded = decode_request(request.content, dict(request.headers))
        seen.append((request.url.path, decoded.inputs[0].name))
        if request.url.path != "/v2/models/wine/infer":
            return await digits_answer(request)
        x = np.asarray(decoded.inputs[0].data, dtype=np.float32).reshape(1, -1)
        label = wine_labels[x[0].tobytes()]
        body, headers = encode_response(InferResponse("wine", (
            Tensor("cultivar", np.array([label], dtype=np.int64)),), "1", None, {
            "target": "edge-b", "tier": "edge", "cost_usd": 1e-7}))
        return httpx.Response(200, content=body, headers=headers)

    result = load(handler, [Phase("a", 0.5, 100.0)], data,
                  RequestMix(seed=2, models=(("digits", 0.5), ("wine", 0.5))), seed=4,
                  models={"wine": wine})
    assert set(seen) == {("/v2/models/digits/infer", "input"),
                         ("/v2/models/wine/infer", "measurements")}
    assert all(o.ok and o.predicted == o.label for o in result.outcomes)
    assert {o.model for o in result.outcomes} == {"digits", "wine"}
    assert all(o.target == "edge-b" for o in result.outcomes if o.model == "wine")

"""The CPU-budget benchmark's filing of py-spy samples by stage (benchmarks/cpu_budget.py);
the benchmark itself runs the stack and py-spy and prints figures."""

from __future__ import annotations

from collections import Counter

import pytest

from benchmarks.cpu_budget import budget, frame_stage, sample_stage, split_samples

LOOP = "BaseEventLoop._run_once (asyncio/base_events.py:1936)"
SERVE = "UserCallableWrapper._call_func_or_gen (ray/serve/_private/replica.py:4010)"
FASTAPI = "FastAPI.__call__ (fastapi/applications.py:1224)"
HANDLER = "Router._infer (router/app.py:234)"
CALL = "HttpTransport.infer (router/transport.py:183)"
HTTPCORE = "AsyncHTTP11Connection._receive_event (httpcore/_async/http11.py:214)"
WRITE = "StreamWriter.write (asyncio/streams.py:330)"
DECIDE = "decide (router/decision.py:88)"


def test_a_frame_takes_the_most_specific_stage_its_path_names() -> None:
    assert frame_stage(SERVE) == "Serve replica machinery"
    assert frame_stage("Worker.main_loop (ray/_private/worker.py:1069)") == "Ray core (other)"
    assert frame_stage("Gauge.set (ray/util/metrics.py:77)") == "metrics"
    assert frame_stage(DECIDE) == "placement decision"
    assert frame_stage(HANDLER) == "router handler (other)"
    assert frame_stage("AiohttpTransport.handle_async_request (router/aiohttp_pool.py:60)") == (
        "target call (httpx, aiohttp)")
    assert frame_stage("helper (mylib/thing.py:3)") is None
    assert frame_stage("<native>") is None


def test_a_sample_takes_the_stage_of_its_deepest_frame_that_has_one() -> None:
    assert sample_stage([LOOP, SERVE, FASTAPI, HANDLER, DECIDE]) == "placement decision"
    assert sample_stage([LOOP, SERVE, FASTAPI]) == "web framework (FastAPI, Starlette, pydantic)"
    # A library's socket writes through asyncio stay with the library, not the event loop.
    assert sample_stage([LOOP, HANDLER, CALL, HTTPCORE, WRITE]) == (
        "target call (httpx, aiohttp)")
    assert sample_stage([LOOP, "select (selectors.py:468)"]) == "event loop"
    assert sample_stage(["Thread.run (threading.py:982)"]) == "other"


def test_py_spy_raw_lines_are_counted_by_stage() -> None:
    lines = [f"{LOOP};{SERVE};{FASTAPI};{HANDLER};{DECIDE} 3\n",
             f"{LOOP};{HANDLER};{CALL};{HTTPCORE} 5\n",
             f"{LOOP};{SERVE} 2\n",
             "\n", "garbage without a count\n"]
    assert split_samples(lines) == Counter({"placement decision": 3,
                                            "target call (httpx, aiohttp)": 5,
                                            "Serve replica machinery": 2})


def test_the_budget_splits_the_sampled_share_of_a_requests_cpu_and_keeps_the_rest() -> None:
    counts = Counter({"target call (httpx, aiohttp)": 6, "placement decision": 2})
    rows = budget(counts, cpu_ms_per_request=5.0, sampled_share=0.8)
    assert [row["stage"] for row in rows] == ["target call (httpx, aiohttp)",
                                              "placement decision",
                                              "not sampled (native threads)"]
    assert rows[0]["ms_per_request"] == pytest.approx(3.0)  # 6/8 of 4 ms sampled
    assert rows[1]["share"] == pytest.approx(0.25)
    assert rows[2]["ms_per_request"] == pytest.approx(1.0)
    assert sum(row["ms_per_request"] for row in rows) == pytest.approx(5.0)
    assert budget(Counter(), 5.0, 0.8)[-1]["ms_per_request"] == pytest.approx(5.0)

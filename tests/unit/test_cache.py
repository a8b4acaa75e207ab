"""The response cache: TTL, byte bound, the quality rule, version invalidation, single flight.

Pure logic with a fake clock; the last tests drive the routing service over fake
targets to check what a caller sees (a hit costs nothing, the ledger and metrics count
what it saved, 50 identical requests at once make one upstream call).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import numpy as np
import pytest

from edgeroute.config import Quality
from edgeroute.oip import Tensor
from edgeroute.signature import Batch
from router.cache import (
    USE_CACHE,
    Directives,
    Entry,
    ResponseCache,
    Reused,
    directives,
)
from router.cache import cache_key as batch_key
from router.estimator import TargetEstimator
from router.metrics import MemoryFactory, RouterMetrics
from router.policy import CacheSettings, PolicyDocument, RoutingPolicy
from router.served import NotServed
from router.service import Routed, RoutingService
from router.targets import TargetSet
from router.tenancy import Caller
from tests.unit.fakes import (
    FakeClock,
    FakeTransport,
    fail_with,
    fake_target,
    gated,
    refused,
    reply_for,
    run_async,
)

ON = CacheSettings(enabled=True, ttl_s=60.0)
X = np.arange(64, dtype=np.float32).reshape(1, 64) / 4
CALLER = Caller("anonymous", "default", RoutingPolicy())


def entry(target: str = "cloud", quality: Quality = "large", version: str = "v1",
          label: int = 7, cost_usd: float = 1e-6) -> Entry:
    return Entry(reply_for(X, label=label, version=version), target,
                 "cloud" if quality == "large" else "edge", quality, cost_usd)


def batch(x: np.ndarray) -> Batch:
    return Batch("digits", (Tensor("input", x),), len(x))


def cache_key(model: str, quality: str, x: np.ndarray) -> tuple[str, str, bytes]:
    return batch_key(model, quality, batch(x))


def digits(i: int) -> np.ndarray:
    return np.full((1, 64), i % 17, dtype=np.float32)


def test_the_key_is_the_model_quality_and_the_tensor_bytes_dtype_and_shape() -> None:
    assert cache_key("digits", "any", X) == cache_key("digits", "any", X.copy())
    assert cache_key("digits", "any", X) != cache_key("digits", "high", X)
    assert cache_key("digits", "any", X) != cache_key("other", "any", X)
    assert cache_key("digits", "any", X) != cache_key("digits", "any", X + 1)
    assert cache_key("digits", "any", X) != cache_key("digits", "any", X.reshape(2, 32))
    assert cache_key("digits", "any", X) != cache_key("digits", "any", X.astype(np.float64))


def test_an_entry_answers_until_its_ttl_passes() -> None:
    clock = FakeClock()
    cache = ResponseCache(ON, clock=clock)
    key = cache_key("digits", "any", X)
    cache.put(key, entry())
    clock.advance(59.0)
    assert cache.get(key, "any") is not None
    clock.advance(2.0)
    assert cache.get(key, "any") is None


def test_the_store_holds_at_most_max_bytes_dropping_the_least_recently_used() -> None:
    one = entry().nbytes
    cache = ResponseCache(CacheSettings(enabled=True, max_bytes=4096), clock=FakeClock())
    keys = [cache_key("digits", "any", digits(i)) for i in range(12)]
    cache.put(keys[0], entry())
    for key in keys[1:]:
        assert cache.get(keys[0], "any") is not None  # kept warm: never the least recent
        cache.put(key, entry())
    assert cache.nbytes <= 4096
    held = [k for k in keys if cache.get(k, "any") is not None]
    assert len(held) == 4096 // one
    assert keys[0] in held and keys[1] not in held


def test_an_answer_larger_than_the_whole_store_is_not_kept() -> None:
    cache = ResponseCache(CacheSettings(enabled=True, max_bytes=4096), clock=FakeClock())
    big = np.zeros((200, 64), dtype=np.float32)
    key = cache_key("digits", "any", big)
    cache.put(key, Entry(reply_for(big), "cloud", "cloud", "large", 0.0))
    assert cache.get(key, "any") is None


def test_quality_high_is_never_answered_from_a_small_models_entry() -> None:
    cache = ResponseCache(ON, clock=FakeClock())
    cache.put(cache_key("digits", "high", X), entry("edge-a", "small"))
    assert cache.get(cache_key("digits", "high", X), "high") is None
    cache.put(cache_key("digits", "high", X), entry("cloud", "large"))
    assert cache.get(cache_key("digits", "high", X), "high") is not None


def test_quality_any_may_take_the_large_models_answer_but_not_the_reverse() -> None:
    cache = ResponseCache(ON, clock=FakeClock())
    cache.put(cache_key("digits", "high", X), entry("cloud", "large", label=3))
    hit = cache.get(cache_key("digits", "any", X), "any")
    assert hit is not None and hit.target == "cloud"
    cache.put(cache_key("digits", "any", digits(1)), entry("edge-a", "small"))
    assert cache.get(cache_key("digits", "high", digits(1)), "high") is None


def test_a_new_model_version_drops_the_targets_older_entries() -> None:
    cache = ResponseCache(ON, clock=FakeClock())
    edge_key, cloud_key = cache_key("digits", "any", X), cache_key("digits", "high", X)
    cache.put(edge_key, entry("edge-a", "small", version="1-aaa"))
    cache.put(cloud_key, entry("cloud", "large", version="1-ccc"))
    cache.observe("edge-a", "1-bbb")
    assert cache.get(edge_key, "any") is None or cache.get(edge_key, "any").target == "cloud"
    assert cache.get(cloud_key, "high") is not None
    assert all(e.target != "edge-a" for e in cache._store.values())


def test_changed_settings_drop_every_entry() -> None:
    cache = ResponseCache(ON, clock=FakeClock())
    key = cache_key("digits", "any", X)
    cache.put(key, entry())
    cache.configure(ON)
    assert cache.get(key, "any") is not None
    cache.configure(CacheSettings(enabled=True, ttl_s=30.0))
    assert cache.get(key, "any") is None


def test_cache_control_directives() -> None:
    assert directives(None) == Directives(read=True, write=True)
    assert directives("no-cache") == Directives(read=False, write=True)
    assert directives("max-age=0, No-Store") == Directives(read=False, write=False)
    assert directives("max-age=60") == Directives()


class Upstream:
    """A compute step that counts its calls and answers when ``gate`` opens."""

    def __init__(self, gate: asyncio.Event | None = None, fail: int = 0) -> None:
        self.calls = 0
        self.gate = gate
        self.fail = fail

    async def __call__(self) -> tuple[str, Entry]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.calls <= self.fail:
            raise NotServed("upstream failed", attempts=1, deadline_passed=False)
        return f"fresh-{self.calls}", entry(cost_usd=2e-6)


def ask(cache: ResponseCache, upstream: Upstream, *, deadline_s: float = 5.0,
        quality: str = "any", how: Directives = USE_CACHE) -> Awaitable[object]:
    return cache.answer("digits", quality, batch(X), deadline_at=time.monotonic() + deadline_s,
                        directives=how, compute=upstream)


def test_fifty_identical_requests_at_once_make_one_upstream_call() -> None:
    async def main() -> list[object]:
        cache = ResponseCache(ON)
        gate = asyncio.Event()
        upstream = Upstream(gate)
        tasks = [asyncio.create_task(ask(cache, upstream)) for _ in range(50)]
        await asyncio.sleep(0)
        gate.set()
        answers = await asyncio.gather(*tasks)
        assert upstream.calls == 1
        assert cache.counts["miss"] == 1 and cache.counts["coalesced"] == 49
        return answers

    answers = run_async(main)
    assert answers.count("fresh-1") == 1
    followers = [a for a in answers if isinstance(a, Reused)]
    assert len(followers) == 49 and all(a.coalesced for a in followers)
    assert followers[0].parameters(CALLER, 250.0, False)["cost_usd"] == 0.0


def test_when_the_leader_fails_one_follower_leads_and_the_error_is_not_kept() -> None:
    async def main() -> tuple[list[object], Upstream, ResponseCache]:
        cache = ResponseCache(ON)
        gate = asyncio.Event()
        upstream = Upstream(gate, fail=1)
        tasks = [asyncio.create_task(ask(cache, upstream)) for _ in range(10)]
        await asyncio.sleep(0)
        gate.set()
        answers = await asyncio.gather(*tasks, return_exceptions=True)
        return answers, upstream, cache

    answers, upstream, cache = run_async(main)
    assert upstream.calls == 2
    assert cache.snapshot()["entries"] == 1
    assert sum(isinstance(a, NotServed) for a in answers) == 1
    assert answers.count("fresh-2") == 1
    assert sum(isinstance(a, Reused) for a in answers) == 8


def test_a_follower_waits_no_longer_than_its_own_deadline() -> None:
    async def main() -> None:
        cache = ResponseCache(ON)
        gate = asyncio.Event()
        upstream = Upstream(gate)
        leader = asyncio.create_task(ask(cache, upstream, deadline_s=0.05))
        await asyncio.sleep(0)
        with pytest.raises(NotServed) as failure:
            await ask(cache, upstream, deadline_s=0.1)
        assert failure.value.deadline_passed
        gate.set()
        assert await leader == "fresh-1"

    run_async(main)


def test_a_follower_with_an_earlier_deadline_does_not_wait_for_a_later_leader() -> None:
    async def main() -> None:
        cache = ResponseCache(ON)
        gate = asyncio.Event()
        slow = Upstream(gate)
        leader = asyncio.create_task(ask(cache, slow, deadline_s=10.0))
        await asyncio.sleep(0)
        assert await ask(cache, Upstream(), deadline_s=0.5) == "fresh-1"
        gate.set()
        await leader

    run_async(main)


def test_identical_requests_sent_together_share_a_call_whatever_their_arrival_order() -> None:
    async def main() -> None:
        cache = ResponseCache(ON)
        gate = asyncio.Event()
        upstream = Upstream(gate)
        leader = asyncio.create_task(ask(cache, upstream, deadline_s=2.0))
        await asyncio.sleep(0)
        follower = asyncio.create_task(ask(cache, upstream, deadline_s=1.9))
        await asyncio.sleep(0)
        gate.set()
        assert await leader == "fresh-1"
        assert isinstance(await follower, Reused) and upstream.calls == 1

    run_async(main)


def test_no_cache_routes_afresh_and_no_store_keeps_nothing() -> None:
    async def main() -> None:
        cache = ResponseCache(ON)
        upstream = Upstream()
        assert await ask(cache, upstream, how=directives("no-store")) == "fresh-1"
        assert await ask(cache, upstream, how=directives("no-cache")) == "fresh-2"
        assert isinstance(await ask(cache, upstream), Reused)
        assert await ask(cache, upstream, how=directives("no-cache")) == "fresh-3"
        assert cache.counts["bypass"] == 3 and cache.counts["hit"] == 1

    run_async(main)


def test_a_disabled_cache_calls_every_time() -> None:
    async def main() -> None:
        cache = ResponseCache(CacheSettings(enabled=False))
        upstream = Upstream()
        assert [await ask(cache, upstream) for _ in range(3)] == [
            "fresh-1", "fresh-2", "fresh-3"]
        assert not cache.counts

    run_async(main)


def cached_service(*transports: tuple[FakeTransport, str, Quality]) -> tuple[
        RoutingService, MemoryFactory]:
    targets = TargetSet([
        fake_target(t, tier=tier, quality=quality,  # type: ignore[arg-type]
                    estimator=TargetEstimator(name=t.name, tier=tier,  # type: ignore[arg-type]
                                              quality=quality))
        for t, tier, quality in transports])
    factory = MemoryFactory()
    svc = RoutingService(targets, metrics=RouterMetrics(factory))
    svc.apply_policy(PolicyDocument(cache=ON))
    return svc, factory


def route(svc: RoutingService, quality: str = "any",
          how: Directives = USE_CACHE) -> Routed | Reused:
    async def main() -> Routed | Reused:
        return await svc.route(batch(X), deadline_ms=500.0, received=time.monotonic(),
                               quality=quality, caller=CALLER, cache=how)

    return run_async(main)


def test_the_second_identical_request_is_a_hit_that_costs_nothing() -> None:
    edge = FakeTransport("edge-a")
    svc, factory = cached_service((edge, "edge", "small"), (FakeTransport("cloud"), "cloud",
                                                              "large"))
    first, second = route(svc), route(svc)
    assert isinstance(first, Routed) and isinstance(second, Reused)
    params = second.parameters(CALLER, 500.0, False)
    assert params["cache_hit"] is True and params["cost_usd"] == 0.0
    assert (params["target"], params["model_version"]) == ("edge-a", "fake-1")
    assert params["saved_usd"] == pytest.approx(first.cost_usd)
    assert edge.calls == 1
    ledger = svc.ledger.snapshot()["total"]
    assert ledger["requests"] == 1 and ledger["reused"] == 1
    assert ledger["saved_usd"] == pytest.approx(first.cost_usd)
    lookups = factory.instruments["edgeroute_cache_lookups_total"]
    assert lookups.total(outcome="hit") == 1 and lookups.total(outcome="miss") == 1
    assert factory.instruments["edgeroute_cache_saved_usd_total"].total() == pytest.approx(
        first.cost_usd)
    assert isinstance(route(svc, how=directives("no-cache")), Routed)
    assert edge.calls == 2


def test_quality_high_after_a_small_models_answer_calls_the_large_model() -> None:
    cloud = FakeTransport("cloud", label=3)
    svc, _ = cached_service((FakeTransport("edge-a"), "edge", "small"),
                            (cloud, "cloud", "large"))
    assert route(svc).target_name == "edge-a"
    high = route(svc, quality="high")
    assert isinstance(high, Routed) and high.target_name == "cloud"
    assert cloud.calls == 1
    assert isinstance(route(svc, quality="high"), Reused)


def test_fifty_identical_requests_through_the_service_make_one_upstream_call() -> None:
    async def main() -> list[Routed | Reused]:
        gate = asyncio.Event()
        edge = FakeTransport("edge-a", gated(gate))
        svc, _ = cached_service((edge, "edge", "small"))
        x = batch(X)
        tasks = [asyncio.create_task(svc.route(x, deadline_ms=500.0, received=time.monotonic(),
                                               quality="any", caller=CALLER))
                 for _ in range(50)]
        for _ in range(5):
            await asyncio.sleep(0)
        gate.set()
        answers = await asyncio.gather(*tasks)
        assert edge.calls == 1
        return answers

    answers = run_async(main)
    assert sum(isinstance(a, Reused) and a.coalesced for a in answers) == 49


def test_errors_are_never_cached() -> None:
    broken = FakeTransport("edge-a", fail_with(refused))
    svc, _ = cached_service((broken, "edge", "small"))
    for _ in range(2):
        with pytest.raises(NotServed):
            route(svc)
    assert svc.cache.snapshot()["entries"] == 0
    assert broken.calls >= 2


@pytest.mark.parametrize("block", [{"ttl_s": 0}, {"max_bytes": 100}, {"enabled": "maybe"},
                                   {"size": 10}])
def test_a_bad_cache_block_is_refused_with_the_policy(block: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="cache"):
        PolicyDocument.model_validate({"cache": block})


def test_the_cache_is_off_unless_the_policy_enables_it() -> None:
    assert PolicyDocument().cache.enabled is False
    svc, _ = cached_service((FakeTransport("edge-a"), "edge", "small"))
    svc.apply_policy(PolicyDocument())
    assert isinstance(route(svc), Routed) and isinstance(route(svc), Routed)

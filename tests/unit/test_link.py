"""Link emulation with an injected sleep and a seeded rng: the delays, losses and partitions
a chaos run puts between the router and a target, without waiting for any of them."""

from __future__ import annotations

import random

import numpy as np
import pytest

from edgeroute.config import LinkProfile
from router.link import Link, LinkedTransport
from router.transport import Reply, TargetTimeout, TargetUnavailable
from tests.unit.fakes import FakeTransport, RecordingSleep, run_async

X = np.zeros((2, 64), dtype=np.float32)
SEED = 1234


def linked(profile: LinkProfile, seed: int = SEED) -> tuple[LinkedTransport, FakeTransport,
                                                            RecordingSleep]:
    inner = FakeTransport("edge-a")
    sleep = RecordingSleep()
    return LinkedTransport(inner, Link(profile, random.Random(seed)), sleep=sleep), inner, sleep


def twin_rtts(profile: LinkProfile, calls: int, seed: int = SEED) -> list[float]:
    """The round trips a link seeded alike samples, drawing the rng as the transport does."""
    twin = Link(profile, random.Random(seed))
    rtts = []
    for _ in range(calls):
        rtts.append(twin.sample_rtt_s())
        assert not twin.lost()
    return rtts


def test_a_fixed_link_sleeps_half_the_round_trip_each_way() -> None:
    transport, inner, sleep = linked(LinkProfile(base_ms=10.0))
    reply = run_async(lambda: transport.infer(X, timeout_s=1.0))
    assert isinstance(reply, Reply)
    assert reply.output("label").tolist() == [7, 7]
    assert sleep.calls == pytest.approx([0.005, 0.005])
    assert inner.infer_timeouts == pytest.approx([1.0 - 0.010]), "the link time is not the target's"
    assert transport.name == "edge-a"


@pytest.mark.parametrize(
    "profile",
    [
        LinkProfile(base_ms=6.0, jitter_ms=2.0),
        LinkProfile(base_ms=18.0, jitter_ms=5.0, spike_probability=0.3, spike_multiplier=4.0),
        LinkProfile(base_ms=30.0, jitter_ms=6.0, spike_probability=0.01, spike_multiplier=4.0,
                    loss_probability=0.0),
    ],
)
def test_jittered_and_spiky_links_sleep_exactly_the_sampled_round_trip(
    profile: LinkProfile,
) -> None:
    transport, inner, sleep = linked(profile)

    async def main() -> None:
        for _ in range(50):
            await transport.infer(X, timeout_s=5.0)

    run_async(main)
    rtts = twin_rtts(profile, 50)
    outbound, inbound = sleep.calls[0::2], sleep.calls[1::2]
    assert outbound == pytest.approx([r / 2 for r in rtts])
    assert inbound == pytest.approx([r / 2 for r in rtts])
    assert all(r >= profile.base_ms / 1000 for r in rtts)
    assert inner.calls == 50


def test_jitter_varies_the_round_trip() -> None:
    rtts = twin_rtts(LinkProfile(base_ms=6.0, jitter_ms=2.0), 50)
    assert len(set(rtts)) > 40


def test_a_spike_multiplies_the_whole_round_trip() -> None:
    plain = twin_rtts(LinkProfile(base_ms=10.0, jitter_ms=3.0), 20)
    spiky = twin_rtts(
        LinkProfile(base_ms=10.0, jitter_ms=3.0, spike_probability=1.0, spike_multiplier=5.0), 20
    )
    assert all(s >= 5 * 0.010 for s in spiky)
    assert min(spiky) > max(plain)


def test_the_same_seed_gives_the_same_delays() -> None:
    profile = LinkProfile(base_ms=18.0, jitter_ms=5.0, spike_probability=0.1, spike_multiplier=4.0)
    assert twin_rtts(profile, 30, seed=7) == twin_rtts(profile, 30, seed=7)
    assert twin_rtts(profile, 30, seed=7) != twin_rtts(profile, 30, seed=8)


def test_a_lost_exchange_is_a_connection_failure_after_one_round_trip() -> None:
    transport, inner, sleep = linked(LinkProfile(base_ms=20.0, loss_probability=1.0))
    with pytest.raises(TargetUnavailable, match="lost"):
        run_async(lambda: transport.infer(X, timeout_s=1.0))
    assert sleep.calls == pytest.approx([0.020])
    assert inner.calls == 0


def test_a_lost_exchange_never_waits_past_the_timeout() -> None:
    transport, _, sleep = linked(LinkProfile(base_ms=500.0, loss_probability=1.0))
    with pytest.raises(TargetUnavailable):
        run_async(lambda: transport.infer(X, timeout_s=0.05))
    assert sleep.calls == pytest.approx([0.05])


def test_some_exchanges_are_lost_on_a_lossy_link() -> None:
    transport, inner, _ = linked(LinkProfile(base_ms=1.0, loss_probability=0.5))

    async def main() -> int:
        lost = 0
        for _ in range(200):
            try:
                await transport.infer(X, timeout_s=1.0)
            except TargetUnavailable:
                lost += 1
        return lost

    lost = run_async(main)
    assert 50 < lost < 150
    assert inner.calls == 200 - lost


@pytest.mark.parametrize("call", ["infer", "probe"])
def test_a_partition_is_silence_until_the_timeout(call: str) -> None:
    transport, inner, sleep = linked(LinkProfile(base_ms=5.0, partitioned=True))

    async def main() -> None:
        if call == "infer":
            await transport.infer(X, timeout_s=0.3)
        else:
            await transport.probe(timeout_s=0.3)

    with pytest.raises(TargetTimeout, match="partitioned"):
        run_async(main)
    assert sleep.calls == [0.3]
    assert inner.calls == 0
    assert inner.probe_timeouts == []


def test_a_probe_crosses_the_link_both_ways() -> None:
    transport, inner, sleep = linked(LinkProfile(base_ms=8.0))
    run_async(lambda: transport.probe(timeout_s=1.0))
    assert sleep.calls == pytest.approx([0.004, 0.004])
    assert inner.probe_timeouts == pytest.approx([0.992])


def test_changing_the_profile_at_run_time_applies_to_the_next_call() -> None:
    transport, inner, sleep = linked(LinkProfile(base_ms=2.0))

    async def main() -> None:
        await transport.infer(X, timeout_s=1.0)
        transport.link.profile = LinkProfile(partitioned=True)
        with pytest.raises(TargetTimeout):
            await transport.infer(X, timeout_s=0.2)
        transport.link.profile = LinkProfile(base_ms=40.0)
        await transport.infer(X, timeout_s=1.0)

    run_async(main)
    assert sleep.calls == pytest.approx([0.001, 0.001, 0.2, 0.02, 0.02])
    assert inner.calls == 2


def test_closing_the_link_closes_the_target_transport() -> None:
    transport, inner, _ = linked(LinkProfile())
    run_async(transport.aclose)
    assert inner.closed

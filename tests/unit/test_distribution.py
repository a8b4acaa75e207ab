"""Latency distributions as quantile tables: what P(L > D) the decision reads, and how sums,
shifts and the vectorised paths agree with the scalar one."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.distribution import LEVELS, Distribution, p_exceed_rows

RNG_SEED = 11


def lognormal_samples(median: float, sigma: float, n: int = 200_000, seed: int = RNG_SEED):
    return np.random.default_rng(seed).lognormal(np.log(median), sigma, n)


values = st.floats(0.0, 5_000.0, allow_subnormal=False).map(lambda ms: round(ms, 6))
"""Latencies in ms at nanosecond resolution: finer values (1e-38 ms) only probe float rounding."""
tables = st.lists(values, min_size=len(LEVELS), max_size=len(LEVELS)).map(
    lambda drawn: Distribution(np.sort(np.array(drawn)))
)


def test_the_levels_are_dense_in_the_tail_and_span_min_to_max() -> None:
    assert LEVELS[0] == 0.0 and LEVELS[-1] == 1.0
    assert {0.01, 0.5, 0.99, 0.995, 0.999}.issubset(set(LEVELS.tolist()))
    assert np.all(np.diff(LEVELS) > 0)


def test_a_constant_latency_is_an_atom() -> None:
    d = Distribution.point(10.0)
    assert d.p_exceed(9.999) == 1.0
    assert d.p_exceed(10.0) == 0.0, "P(L > D) is strict: exactly on time is in time"
    assert d.quantile(0.5) == 10.0
    assert d.mean == pytest.approx(10.0)


def test_below_the_minimum_is_certain_and_at_the_maximum_impossible() -> None:
    d = Distribution.from_samples(lognormal_samples(20.0, 0.5))
    assert d.p_exceed(d.minimum - 1e-9) == 1.0
    assert d.p_exceed(-5.0) == 1.0
    assert d.p_exceed(d.maximum) == 0.0
    assert d.p_exceed(1e12) == 0.0


def test_the_table_matches_the_empirical_survival() -> None:
    samples = lognormal_samples(20.0, 0.5)
    d = Distribution.from_samples(samples)
    for ms in (10.0, 15.0, 20.0, 40.0, 60.0, 80.0):
        assert d.p_exceed(ms) == pytest.approx(np.mean(samples > ms), abs=2e-3)
    assert d.quantile(0.5) == pytest.approx(20.0, rel=0.01)
    assert d.quantile(0.999) == pytest.approx(np.quantile(samples, 0.999), rel=1e-6)


@settings(max_examples=200, deadline=None)
@given(d=tables, q=st.floats(0.0, 1.0))
def test_quantile_and_p_exceed_are_inverse(d: Distribution, q: float) -> None:
    x = d.quantile(q)
    assert d.p_exceed(x) <= 1.0 - q + 1e-9, "at the q-quantile at most 1-q is above"
    if x > d.minimum:
        assert d.p_exceed(x - 1e-6 * max(x, 1.0)) >= 1.0 - q - 1e-6


@settings(max_examples=200, deadline=None)
@given(d=tables, a=st.floats(-100.0, 6_000.0), b=st.floats(-100.0, 6_000.0))
def test_p_exceed_never_rises_with_the_deadline(d: Distribution, a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    assert 0.0 <= d.p_exceed(hi) <= d.p_exceed(lo) <= 1.0


@settings(max_examples=100, deadline=None)
@given(d=tables, xs=st.lists(st.floats(-100.0, 6_000.0), min_size=1, max_size=20))
def test_the_vectorised_paths_agree_with_the_scalar_one(d: Distribution, xs: list[float]) -> None:
    ms = np.array(xs)
    scalar = np.array([d.p_exceed(x) for x in xs])
    np.testing.assert_allclose(d.p_exceed_many(ms), scalar, atol=1e-12)
    stacked = np.stack([d.values] * len(xs))
    np.testing.assert_allclose(p_exceed_rows(stacked, ms), scalar, atol=1e-12)
    knots = np.concatenate([d.values, d.values - 1e-9])
    np.testing.assert_allclose(d.p_exceed_many(knots), [d.p_exceed(x) for x in knots],
                               atol=1e-12)


def test_rows_of_different_targets_are_evaluated_each_at_its_own_deadline() -> None:
    fast, slow = Distribution.point(5.0), Distribution.from_samples(lognormal_samples(50.0, 0.3))
    got = p_exceed_rows(np.stack([fast.values, slow.values]), np.array([4.0, 50.0]))
    assert got.tolist() == pytest.approx([1.0, slow.p_exceed(50.0)])


def test_a_shift_moves_every_quantile() -> None:
    d = Distribution.from_samples(lognormal_samples(20.0, 0.5))
    shifted = d.shift(7.5)
    assert shifted.quantile(0.9) == pytest.approx(d.quantile(0.9) + 7.5)
    assert shifted.p_exceed(37.5) == pytest.approx(d.p_exceed(30.0))
    assert d.shift(0.0) is d


def test_the_sum_of_independent_parts_matches_sampling_into_the_tail() -> None:
    rng = np.random.default_rng(RNG_SEED)
    network = rng.lognormal(np.log(20.0), 0.35, 1_000_000)
    network *= np.where(rng.random(1_000_000) < 0.02, 10.0, 1.0)
    service = rng.lognormal(np.log(4.0), 0.25, 1_000_000)
    total = Distribution.from_samples(network).plus(Distribution.from_samples(service))
    truth = network + service
    for level in (0.5, 0.9, 0.99, 0.995, 0.999):
        deadline = float(np.quantile(truth, level))
        assert total.p_exceed(deadline) == pytest.approx(1.0 - level, rel=0.05), level
    assert total.minimum == pytest.approx(network.min() + service.min())


def test_adding_a_constant_is_a_shift_and_the_sum_is_symmetric() -> None:
    a = Distribution.from_samples(lognormal_samples(20.0, 0.5))
    b = Distribution.from_samples(lognormal_samples(3.0, 0.2, seed=5))
    np.testing.assert_allclose(a.plus(Distribution.point(4.0)).values, a.values + 4.0)
    np.testing.assert_allclose(a.plus(b).values, b.plus(a).values)


def test_sums_of_shifted_tables_reuse_one_convolution() -> None:
    a = Distribution.from_samples(lognormal_samples(20.0, 0.5))
    b = Distribution.from_samples(lognormal_samples(3.0, 0.2, seed=5))
    total, offset = a.shift(2.0).sum_with(b.shift(3.0).shift(1.0))
    again, _ = a.sum_with(b.shift(9.0))
    assert offset == pytest.approx(6.0)
    assert again is total
    np.testing.assert_allclose(total.values + offset, a.shift(2.0).plus(b.shift(4.0)).values,
                               rtol=1e-9)


def test_the_lognormal_prior_has_the_median_and_spread_asked_for() -> None:
    prior = Distribution.lognormal(50.0, 0.5)
    assert prior.quantile(0.5) == pytest.approx(50.0, rel=1e-6)
    assert prior.quantile(0.99) == pytest.approx(50.0 * np.exp(0.5 * 2.3263479), rel=1e-4)


def test_a_table_of_the_wrong_size_or_with_nan_is_refused() -> None:
    with pytest.raises(ValueError, match="finite values"):
        Distribution(np.zeros(5))
    with pytest.raises(ValueError, match="finite values"):
        Distribution(np.full(len(LEVELS), np.nan))

"""Frechet distance against closed forms and scipy's sqrtm; FeatureStats against np.mean / np.cov."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given
from hypothesis import strategies as st

from bidm_ref.metrics.frechet import FeatureStats, frechet_distance, frechet_distance_of_stats

seeds = st.integers(0, 2**32 - 1)


def random_orthogonal(rng: np.random.Generator, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def random_spd(rng: np.random.Generator, d: int, min_eig: float = 0.1) -> np.ndarray:
    q = random_orthogonal(rng, d)
    return q @ np.diag(rng.uniform(min_eig, 3.0, d)) @ q.T


def scipy_reference_fd(mu1, s1, mu2, s2) -> float:
    """The pytorch-fid / ADM formula: tr(S1 + S2 - 2 sqrtm(S1 S2)), real part."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def test_one_dimensional_closed_form():
    # N(m1, s1^2) vs N(m2, s2^2): FD = (m1 - m2)^2 + (s1 - s2)^2
    got = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]]))
    assert got == pytest.approx((1.0 + 2.0) ** 2 + (2.0 - 3.0) ** 2)


@given(seeds, st.integers(1, 12))
def test_diagonal_covariances_closed_form(seed, d):
    rng = np.random.default_rng(seed)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0, 5, d), rng.uniform(0, 5, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9, abs=1e-9)


@given(seeds, st.integers(1, 12))
def test_commuting_covariances_closed_form(seed, d):
    # S1 = Q diag(a) Q^T and S2 = Q diag(b) Q^T commute: tr sqrt(S1 S2) = sum sqrt(a b)
    rng = np.random.default_rng(seed)
    q = random_orthogonal(rng, d)
    a, b = rng.uniform(0, 5, d), rng.uniform(0, 5, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a) + np.sum(b) - 2 * np.sum(np.sqrt(a * b))
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-8, abs=1e-8)


def test_singular_covariances():
    # rank-1 covariances on orthogonal axes: sqrt(S1 S2) = 0, FD = tr S1 + tr S2
    s1, s2 = np.diag([1.0, 0.0]), np.diag([0.0, 4.0])
    assert frechet_distance(np.zeros(2), s1, np.zeros(2), s2) == pytest.approx(5.0, abs=1e-12)


@given(seeds, st.integers(2, 20))
def test_symmetric_and_zero_on_identical(seed, d):
    rng = np.random.default_rng(seed)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = random_spd(rng, d), random_spd(rng, d)
    forward = frechet_distance(mu1, s1, mu2, s2)
    assert forward == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)
    assert forward > 0
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-10 * d)


@given(seeds, st.integers(2, 40))
def test_agrees_with_scipy_sqrtm(seed, d):
    rng = np.random.default_rng(seed)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = random_spd(rng, d, min_eig=0.5), random_spd(rng, d, min_eig=0.5)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(scipy_reference_fd(mu1, s1, mu2, s2), rel=1e-7)


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.array([np.nan]), np.eye(1), np.zeros(1), np.eye(1))
    with pytest.raises(ValueError, match="not symmetric"):
        frechet_distance(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros(2), np.eye(2))


@given(seeds, st.integers(2, 60), st.integers(1, 6), st.lists(st.integers(0, 60), max_size=5))
def test_stats_in_batches_equal_numpy_on_whole_set(seed, n, d, cuts):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 10, d) + rng.normal(size=d) * 5
    stats = FeatureStats(d)
    bounds = sorted({0, n, *(c % (n + 1) for c in cuts)})
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        stats.add(x[lo:hi])
    stats.add(x[:0])  # an empty batch changes nothing
    np.testing.assert_allclose(stats.mean, x.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.cov, np.atleast_2d(np.cov(x, rowvar=False)), rtol=1e-10, atol=1e-12)


def test_stats_stable_under_large_offset():
    # a naive sum-of-squares covariance loses every digit here; the merged M2 keeps them
    rng = np.random.default_rng(0)
    x = 1e8 + rng.normal(size=(1000, 3))
    stats = FeatureStats(3)
    for batch in np.array_split(x, 7):
        stats.add(batch)
    np.testing.assert_allclose(stats.cov, np.cov(x, rowvar=False), rtol=1e-6, atol=1e-7)


def test_stats_float32_batches_accumulate_in_float64():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 4)).astype(np.float32)
    stats = FeatureStats(4)
    for batch in np.array_split(x, 5):
        stats.add(batch)
    np.testing.assert_allclose(stats.cov, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)
    assert stats.cov.dtype == np.float64


def test_distance_of_stats_matches_closed_form_for_samples():
    rng = np.random.default_rng(2)
    a, b = FeatureStats(2), FeatureStats(2)
    xa, xb = rng.normal(size=(400, 2)), rng.normal(size=(300, 2)) + 1
    a.add(xa)
    b.add(xb)
    expected = scipy_reference_fd(xa.mean(0), np.cov(xa, rowvar=False), xb.mean(0), np.cov(xb, rowvar=False))
    assert frechet_distance_of_stats(a, b) == pytest.approx(expected, rel=1e-9)


def test_stats_errors():
    stats = FeatureStats(3)
    with pytest.raises(ValueError, match=r"\[B, 3\]"):
        stats.add(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="NaN"):
        stats.add(np.full((2, 3), np.nan))
    stats.add(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        _ = stats.cov

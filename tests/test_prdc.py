"""k-NN precision/recall: known answers, a hand-worked case, and a brute-force twin."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.spatial.distance import cdist

from bidm_ref.metrics.prdc import fraction_inside, manifold_radii, precision_recall


def brute_force_pr(real: np.ndarray, gen: np.ndarray, k: int) -> tuple[float, float]:
    """Plain Euclidean distances, full matrices, sorted rows (column 0 of a self-distance row is the point)."""
    r_radius = np.sort(cdist(real, real), axis=1)[:, k]
    g_radius = np.sort(cdist(gen, gen), axis=1)[:, k]
    d = cdist(gen, real)  # [M, N]
    precision = np.mean((d <= r_radius[None, :]).any(axis=1))
    recall = np.mean((d.T <= g_radius[None, :]).any(axis=1))
    return float(precision), float(recall)


def test_identical_sets_give_one_one():
    x = np.random.default_rng(0).normal(size=(50, 8))
    assert precision_recall(x, x.copy()) == (1.0, 1.0)


def test_disjoint_far_sets_give_zero_zero():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(40, 5))
    gen = rng.normal(size=(30, 5)) + 1000.0
    assert precision_recall(real, gen) == (0.0, 0.0)


def test_hand_worked_one_dimensional_case():
    # real 0, 1, 2, 3, -30: 3rd-NN radii 3, 2, 2, 3, 32
    # gen 2.5, 3.5, 4.5, 6, 100: 3rd-NN radii 3.5, 2.5, 2, 3.5, 96.5
    # precision: 2.5, 3.5, 4.5 lie in real balls; 6 lies exactly on the ball of 3 (|6-3| = 3, inclusive);
    #            100 is 97 from 3 and 130 from -30 -> 4/5
    # recall: 0..3 lie within 3.5 of 2.5; -30 is 32.5 from 2.5 (> 3.5) and 130 from 100 (> 96.5) -> 4/5
    real = np.array([0.0, 1.0, 2.0, 3.0, -30.0])[:, None]
    gen = np.array([2.5, 3.5, 4.5, 6.0, 100.0])[:, None]
    np.testing.assert_array_equal(manifold_radii(real), np.array([3.0, 2.0, 2.0, 3.0, 32.0]) ** 2)
    np.testing.assert_array_equal(manifold_radii(gen), np.array([3.5, 2.5, 2.0, 3.5, 96.5]) ** 2)
    assert precision_recall(real, gen) == (0.8, 0.8)


def test_boundary_is_inclusive():
    centers = np.array([[0.0], [1.0]])
    radii = np.array([4.0, 0.0])  # squared radius 4 -> ball of radius 2 around 0
    assert fraction_inside(np.array([[2.0], [-2.0], [2.5]]), centers, radii) == pytest.approx(2 / 3)


@given(st.integers(0, 2**32 - 1), st.integers(4, 40), st.integers(4, 40), st.integers(1, 6), st.integers(1, 3))
def test_matches_brute_force_with_tiny_blocks(seed, n, m, d, k):
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(n, d))
    gen = rng.normal(size=(m, d)) * rng.uniform(0.5, 2) + rng.uniform(-1, 1)
    expected = brute_force_pr(real, gen, k)
    # memory for one or two rows per block forces the blocked path through many blocks
    got = precision_recall(real, gen, k=k, memory_bytes=8 * max(n, m))
    assert got == pytest.approx(expected, abs=1e-12)
    assert precision_recall(real, gen, k=k) == got


def test_errors():
    with pytest.raises(ValueError, match="more than 3"):
        manifold_radii(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        manifold_radii(np.full((5, 2), np.nan))
    with pytest.raises(ValueError, match="do not fit"):
        fraction_inside(np.zeros((2, 3)), np.zeros((4, 2)), np.zeros(4))

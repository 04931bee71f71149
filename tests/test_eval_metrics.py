"""The metric code against independent float64 references: closed-form FID of Gaussians, KID's unbiased
MMD² written out as double sums, precision/recall by brute force, and a hand-counted k-NN case."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flexidit_trt.evaluation.metrics import (
    FeatureStats,
    class_accuracy,
    feature_stats,
    frechet_distance,
    kernel_inception_distance,
    precision_recall,
)


def _spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def test_fid_of_diagonal_gaussians_is_the_closed_form():
    # For commuting (here diagonal) covariances tr(S1 + S2 - 2 (S1 S2)^½) = Σ (√a - √b)².
    rng = np.random.default_rng(0)
    d = 64
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    a, b = rng.uniform(0.1, 4.0, d), rng.uniform(0.1, 4.0, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(FeatureStats(mu1, np.diag(a), 0), FeatureStats(mu2, np.diag(b), 0))
    assert got == pytest.approx(expected, rel=1e-10)


def test_fid_of_general_gaussians_matches_the_symmetric_form():
    # tr((S1 S2)^½) = tr((S1^½ S2 S1^½)^½): an independent route through eigh only (no sqrtm).
    rng = np.random.default_rng(1)
    d = 128
    s1, s2 = _spd(rng, d), _spd(rng, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    r1 = _sqrt_psd(s1)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.trace(_sqrt_psd(r1 @ s2 @ r1))
    got = frechet_distance(FeatureStats(mu1, s1, 0), FeatureStats(mu2, s2, 0))
    assert got == pytest.approx(expected, rel=1e-9)
    # Same distribution → 0 (up to the matrix root's rounding).
    assert abs(frechet_distance(FeatureStats(mu1, s1, 0), FeatureStats(mu1, s1, 0))) < 1e-8 * np.trace(s1)


def test_fid_with_fewer_samples_than_dimensions_takes_the_exact_low_rank_route():
    # n < d: S_gen is singular. The n×n route must give what the d×d formula gives, computed here
    # independently through eigh (the symmetric form), and what scipy's sqrtm gives on the product.
    import scipy.linalg

    rng = np.random.default_rng(9)
    d = 96
    real = rng.standard_normal((400, d)) @ rng.standard_normal((d, d)) / np.sqrt(d)
    gen = rng.standard_normal((12, d)) * 1.5 + 0.2
    a, b = feature_stats(real), feature_stats(gen)
    assert a.centred is None and b.centred is not None

    def trace_sqrt(s_full, s_low, rank):
        # d×d symmetric form, keeping only the `rank` nonzero eigenvalues (the rest are 0 exactly; their
        # rounding, ~1e-13, would add spurious square roots ~3e-7 each).
        r = _sqrt_psd(s_full)
        return np.sqrt(np.sort(np.linalg.eigvalsh(r @ s_low @ r))[-rank:]).sum()

    expected = np.sum((a.mu - b.mu) ** 2) + np.trace(a.sigma + b.sigma) - 2 * trace_sqrt(a.sigma, b.sigma, 11)
    got = frechet_distance(a, b)
    assert got == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-9)
    by_sqrtm = (
        np.sum((a.mu - b.mu) ** 2)
        + np.trace(a.sigma + b.sigma - 2 * scipy.linalg.sqrtm(a.sigma @ b.sigma)).real
    )
    assert got == pytest.approx(by_sqrtm, rel=1e-6)  # sqrtm of a singular product: less exact
    # Both sides small: the smaller one's rows are used; still the same number.
    c = feature_stats(rng.standard_normal((30, d)))
    expected = np.sum((c.mu - b.mu) ** 2) + np.trace(c.sigma + b.sigma) - 2 * trace_sqrt(c.sigma, b.sigma, 11)
    assert frechet_distance(c, b) == pytest.approx(expected, rel=1e-9)


def test_feature_stats_are_the_float64_mean_and_unbiased_covariance():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 6)).astype(np.float32) * 3 + 1
    stats = feature_stats(torch.from_numpy(x))
    x64 = x.astype(np.float64)
    centred = x64 - x64.sum(axis=0) / 50
    expected_cov = sum(np.outer(row, row) for row in centred) / 49
    assert stats.mu.dtype == np.float64 and stats.sigma.dtype == np.float64
    np.testing.assert_allclose(stats.mu, x64.sum(axis=0) / 50, rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, expected_cov, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        feature_stats(x[:1])


def test_fid_of_sampled_gaussians_approaches_the_closed_form():
    # Finite-sample FID is biased upward by O(d/n); with d = 4 and n = 200k it is within 1e-2 of the truth.
    rng = np.random.default_rng(3)
    d, n = 4, 200_000
    a, b = np.array([1.0, 2.0, 0.5, 3.0]), np.array([2.0, 1.0, 0.5, 1.0])
    x = rng.standard_normal((n, d)) * np.sqrt(a)
    y = rng.standard_normal((n, d)) * np.sqrt(b) + 1.0
    expected = d * 1.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(feature_stats(x), feature_stats(y)) == pytest.approx(expected, abs=1e-2)


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """The KID paper's unbiased estimator, written as explicit double sums (O(n²) Python loops)."""
    d = x.shape[1]

    def k(u, v):
        return (float(u @ v) / d + 1.0) ** 3

    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2 * kxy


def test_kid_with_one_full_subset_is_the_unbiased_mmd2():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((40, 16))
    y = rng.standard_normal((40, 16)) * 1.2 + 0.3
    # One subset of all 40 on each side: a permutation, which the estimator does not see.
    kid = kernel_inception_distance(x, y, num_subsets=1, max_subset_size=40)
    assert kid.subset_size == 40
    assert kid.mean == pytest.approx(_mmd2_unbiased(x, y), rel=1e-10)


def test_kid_subsets_average_the_estimator_and_are_seeded():
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((120, 8)), rng.standard_normal((90, 8)) + 0.5
    kid = kernel_inception_distance(x, y, num_subsets=5, max_subset_size=30, seed=7)
    # The same draws, made here with the documented generator, through the direct formula.
    draw = np.random.default_rng(7)
    values = []
    for _ in range(5):
        xs = x[draw.choice(120, 30, replace=False)]
        ys = y[draw.choice(90, 30, replace=False)]
        values.append(_mmd2_unbiased(xs, ys))
    assert kid.mean == pytest.approx(np.mean(values), rel=1e-10)
    assert kid.std == pytest.approx(np.std(values), rel=1e-8)
    assert kernel_inception_distance(x, y, num_subsets=5, max_subset_size=30, seed=7) == kid


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(6)
    same = kernel_inception_distance(rng.standard_normal((500, 8)), rng.standard_normal((500, 8)), 20, 200)
    shifted = kernel_inception_distance(
        rng.standard_normal((500, 8)), rng.standard_normal((500, 8)) + 0.5, 20, 200
    )
    # Unbiased: the same distribution gives a mean within a subset's spread of 0 (the subsets share points,
    # so their mean is not sqrt(20)× tighter); a 0.5 shift is ~50 such spreads away.
    assert abs(same.mean) < 2 * same.std
    assert shifted.mean > 20 * same.std


def _pr_brute(gen: np.ndarray, real: np.ndarray, k: int) -> tuple[float, float]:
    def share(probes, manifold):
        dm = np.sqrt(((manifold[:, None, :] - manifold[None, :, :]) ** 2).sum(-1))
        radius = np.sort(dm, axis=1)[:, k]  # index 0 is the point itself
        dp = np.sqrt(((probes[:, None, :] - manifold[None, :, :]) ** 2).sum(-1))
        return float(np.mean([(dp[i] <= radius).any() for i in range(len(probes))]))

    return share(gen, real), share(real, gen)


def test_precision_recall_match_brute_force_float64():
    rng = np.random.default_rng(8)
    real = rng.standard_normal((300, 32))
    gen = rng.standard_normal((250, 32)) + 0.3
    expected = _pr_brute(gen, real, k=3)
    got = precision_recall(gen.astype(np.float32), real.astype(np.float32), k=3, batch_size=64)
    assert (got.precision, got.recall) == pytest.approx(expected, abs=1 / 250)
    assert 0.05 < got.precision < 0.95 and 0.05 < got.recall < 0.95  # a case that discriminates


def test_precision_recall_hand_counted_case():
    # Real points 0..9 on a line: radius (3rd neighbour) 2 inside, 3 at the ends, so the real manifold
    # covers [-3, 12]. Generated 0.5 and 4 fall inside, 20 and 100 outside → precision 1/2. Every
    # generated point's radius reaches its farthest peer (3 peers, k = 3), so recall is 1.
    line = np.zeros((10, 4))
    line[:, 0] = np.arange(10)
    gen = np.zeros((4, 4))
    gen[:, 0] = [0.5, 20.0, 4.0, 100.0]
    got = precision_recall(gen, line, k=3)
    assert got.precision == 0.5 and got.recall == 1.0
    with pytest.raises(ValueError, match="more than 3"):
        precision_recall(gen[:3], line, k=3)


def test_class_accuracy():
    assert class_accuracy(np.array([1, 2, 3, 3]), np.array([1, 2, 0, 3])) == 0.75
    with pytest.raises(ValueError):
        class_accuracy(np.array([1, 2]), np.array([1]))


def test_fid_full_rank_equals_the_sqrtm_route_of_stylegan():
    # Our trace through eigh must give what StyleGAN's scipy.linalg.sqrtm of the product gives, on
    # non-negative (post-ReLU, like Inception's pool) features with more samples than dimensions.
    # Measured: 3e-14 relative at d = 2048, n = 10,000.
    import scipy.linalg

    rng = np.random.default_rng(4)
    d, n = 256, 2000
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    a = feature_stats(np.maximum(rng.standard_normal((n, d)) @ mix, 0))
    b = feature_stats(np.maximum(rng.standard_normal((n, d)) @ mix * 1.05 + 0.01, 0))
    assert a.centred is None and b.centred is None
    by_sqrtm = (
        np.sum((a.mu - b.mu) ** 2)
        + np.trace(a.sigma + b.sigma - 2 * scipy.linalg.sqrtm(a.sigma @ b.sigma)).real
    )
    assert frechet_distance(a, b) == pytest.approx(by_sqrtm, rel=1e-11)
    assert frechet_distance(b, a) == pytest.approx(by_sqrtm, rel=1e-11)

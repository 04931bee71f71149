"""Sample-quality metrics on Inception features: FID, KID, k-NN precision and recall, class accuracy.
The same Fréchet distance gives the classifier FD, on the project classifier's penultimate features.

- FID (Heusel et al. 2017): |mu_r - mu_g|² + tr(S_r + S_g - 2 (S_r S_g)^½), statistics in float64,
  the covariance with N - 1 (np.cov, as the original TTUR code). StyleGAN's `frechet_inception_distance.py`
  takes tr (S_r S_g)^½ as the real part of scipy.linalg.sqrtm of the product; we take the same trace as
  tr (S_r^½ S_g S_r^½)^½ through two symmetric eigenproblems (numpy only: scipy is not on the GPU image),
  which tests/test_eval_metrics.py checks against sqrtm; with fewer samples than feature dimensions
  (smoke tests) through an n×n eigenproblem (see _trace_sqrt_product).
- KID (Bińkowski et al. 2018): the unbiased MMD² with the kernel k(x, y) = (x·y / d + 1)³, averaged over
  random subsets of m = min(n_r, n_g, max_subset_size) features from each side, drawn without
  replacement, exactly the estimator of StyleGAN's `kernel_inception_distance.py` (100 subsets of 1000).
- Precision and recall (Kynkäänniemi et al. 2019): a feature lies in a set's manifold when it is within
  the distance of some set member to that member's k-th nearest neighbour (k = 3, the member itself not
  counted); precision = share of generated features in the real manifold, recall = the reverse. As in
  StyleGAN's `precision_recall.py`, but on the Inception features (StyleGAN uses VGG16 ones).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class FeatureStats:
    """Mean and covariance (float64) of n feature vectors; with n <= d also the centred rows, which give
    the covariance's square-root factor for FID's low-rank route."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int
    centred: np.ndarray | None = None  # [n, d] when n <= d


@dataclass(frozen=True)
class KID:
    mean: float
    std: float  # over the subsets: the spread of one subset's estimate, not the error of the mean
    subsets: int
    subset_size: int


@dataclass(frozen=True)
class PrecisionRecall:
    precision: float
    recall: float
    k: int


def feature_stats(features: np.ndarray | torch.Tensor) -> FeatureStats:
    feats = _as_float64(features)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"need at least 2 feature rows [N, D], got shape {list(feats.shape)}")
    mu = feats.mean(axis=0)
    centred = feats - mu if feats.shape[0] <= feats.shape[1] else None
    return FeatureStats(mu, np.cov(feats, rowvar=False), feats.shape[0], centred)


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """The Fréchet distance between two Gaussians given by their statistics (FID on Inception stats)."""
    if a.mu.shape != b.mu.shape or a.sigma.shape != b.sigma.shape:
        raise ValueError(f"statistics of different sizes: {a.mu.shape[0]} vs {b.mu.shape[0]} features")
    mean_term = float(np.square(a.mu - b.mu).sum())
    return mean_term + float(np.trace(a.sigma) + np.trace(b.sigma)) - 2.0 * _trace_sqrt_product(a, b)


def _trace_sqrt_product(a: FeatureStats, b: FeatureStats) -> float:
    """tr (S_a S_b)^½. S_a S_b is similar to the symmetric PSD S_a^½ S_b S_a^½, so the trace is the sum of
    the square roots of that matrix's eigenvalues (eigh, float64). When one side has n <= d samples,
    S = XᵀX with X its centred rows / √(n-1), and the n×n matrix X S_o Xᵀ has the same nonzero
    eigenvalues: O(n·d²) instead of d×d, and no spurious roots of rounding-level eigenvalues."""
    small = [s for s in (a, b) if s.centred is not None]
    if small:
        low = min(small, key=lambda s: s.count)
        other = b if low is a else a
        x = low.centred / np.sqrt(low.count - 1)
        product = x @ other.sigma @ x.T
    else:
        root = _psd_sqrt(a.sigma)
        product = root @ b.sigma @ root
    eigenvalues = np.linalg.eigvalsh(product)  # reads one triangle: product is symmetric up to rounding
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a PSD matrix (negative rounding-level eigenvalues clipped to 0)."""
    w, v = np.linalg.eigh(matrix)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def kernel_inception_distance(
    generated: np.ndarray | torch.Tensor,
    real: np.ndarray | torch.Tensor,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> KID:
    """KID in float64; the subset draws from numpy's seeded generator, the kernel sums on `device`
    (default: the CPU; a GPU makes the 100 subsets of 1000×2048 instant)."""
    gen = torch.as_tensor(generated).to(device=device or "cpu", dtype=torch.float64)
    ref = torch.as_tensor(real).to(device=gen.device, dtype=torch.float64)
    if gen.ndim != 2 or ref.ndim != 2 or gen.shape[1] != ref.shape[1]:
        raise ValueError(f"feature sets of different shapes: {list(gen.shape)} vs {list(ref.shape)}")
    d = gen.shape[1]
    m = min(gen.shape[0], ref.shape[0], max_subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 features on each side, got {gen.shape[0]} and {ref.shape[0]}")
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets)
    for i in range(num_subsets):
        x = gen[torch.from_numpy(rng.choice(gen.shape[0], m, replace=False)).to(gen.device)]
        y = ref[torch.from_numpy(rng.choice(ref.shape[0], m, replace=False)).to(gen.device)]
        a = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
        b = (x @ y.T / d + 1) ** 3
        values[i] = float(((a.sum() - a.diagonal().sum()) / (m - 1) - b.sum() * 2 / m) / m)
    return KID(float(values.mean()), float(values.std()), num_subsets, m)


def precision_recall(
    generated: torch.Tensor | np.ndarray,
    real: torch.Tensor | np.ndarray,
    k: int = 3,
    batch_size: int = 4096,
    device: str | torch.device | None = None,
) -> PrecisionRecall:
    """Improved precision and recall; distances in fp32 on `device` (default: the features'), in blocks."""
    gen, ref = _as_tensor(generated, device), _as_tensor(real, device)
    if gen.ndim != 2 or ref.ndim != 2 or gen.shape[1] != ref.shape[1]:
        raise ValueError(f"feature sets of different shapes: {list(gen.shape)} vs {list(ref.shape)}")
    if min(gen.shape[0], ref.shape[0]) <= k:
        raise ValueError(
            f"k-NN with k={k} needs more than {k} features per set, got {gen.shape[0]} and {ref.shape[0]}"
        )
    precision = _share_in_manifold(probes=gen, manifold=ref, k=k, batch_size=batch_size)
    recall = _share_in_manifold(probes=ref, manifold=gen, k=k, batch_size=batch_size)
    return PrecisionRecall(precision, recall, k)


def _share_in_manifold(probes: torch.Tensor, manifold: torch.Tensor, k: int, batch_size: int) -> float:
    # Radius of each manifold point: distance to its k-th neighbour; k + 1 because it is its own 0-th.
    radii = torch.cat(
        [torch.cdist(rows, manifold).kthvalue(k + 1, dim=1).values for rows in manifold.split(batch_size)]
    )
    inside = torch.cat(
        [(torch.cdist(rows, manifold) <= radii).any(dim=1) for rows in probes.split(batch_size)]
    )
    return float(inside.double().mean())


def class_accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Share of samples whose predicted class (the classifier's argmax) is the class they were made for."""
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    if predicted.shape != labels.shape or predicted.size == 0:
        raise ValueError(f"predictions {predicted.shape} and labels {labels.shape} must be equal, non-empty")
    return float((predicted == labels).mean())


def _as_float64(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _as_tensor(x: np.ndarray | torch.Tensor, device: str | torch.device | None) -> torch.Tensor:
    t = torch.as_tensor(x)
    return t.to(device=device or t.device, dtype=torch.float32)

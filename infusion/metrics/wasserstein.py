"""Wasserstein-2 distance between two feature sets (concept-specific overfitting).

Two figures, both in the units of the features:

- ``gaussian_w2``: W2 between Gaussian fits (mu, Sigma) of the two sets,
  W2^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S2^1/2 S1 S2^1/2)^1/2).
- ``empirical_w2``: the exact W2 between the two empirical distributions of equal-size
  sets, i.e. the root mean squared distance under the optimal one-to-one assignment.

Everything is computed in float64 on CPU: the sets are small (tens to hundreds of
images) and the closed form subtracts traces of similar size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def _as_features(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    """A feature set as an (n, d) float64 CPU tensor; a clear error for bad input."""
    t = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if t.ndim == 1:
        t = t[:, None]  # n scalars: a 1-D feature set
    if t.ndim != 2:
        raise ValueError(f"{name}: expected an (n, d) feature matrix, got shape {tuple(t.shape)}")
    if t.shape[0] < 2:
        raise ValueError(f"{name}: need at least 2 samples to fit a covariance, got {t.shape[0]}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: features contain NaN or infinity")
    return t


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} vs {y.shape[1]}")


def sqrtm_psd(s: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition.

    On a rank-deficient matrix (fewer samples than dimensions) eigh returns rounding
    noise of either sign, about d * eps * |S|, for the zero eigenvalues. Their square
    roots (~1e-8 |S|^1/2) would leak into products with the other covariance, so
    eigenvalues below that noise level are set to zero, as pinv does.
    """
    s = 0.5 * (s + s.T)  # symmetrise away rounding so eigh sees a symmetric matrix
    vals, vecs = torch.linalg.eigh(s)
    noise = s.shape[0] * torch.finfo(s.dtype).eps * vals.abs().max()
    vals = torch.where(vals > noise, vals, torch.zeros_like(vals))
    return (vecs * vals.sqrt()) @ vecs.T


def gaussian_w2_from_stats(mu1: torch.Tensor, cov1: torch.Tensor,
                           mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """W2 between N(mu1, cov1) and N(mu2, cov2); covariances may be singular."""
    mu1, mu2, cov1, cov2 = (torch.as_tensor(t, dtype=torch.float64) for t in (mu1, mu2, cov1, cov2))
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"means must be vectors of one size, got {tuple(mu1.shape)} and {tuple(mu2.shape)}")
    for name, c in (("cov1", cov1), ("cov2", cov2)):
        if c.shape != (mu1.shape[0], mu1.shape[0]):
            raise ValueError(f"{name}: expected a {mu1.shape[0]}x{mu1.shape[0]} matrix, got {tuple(c.shape)}")
    for name, t in (("mu1", mu1), ("cov1", cov1), ("mu2", mu2), ("cov2", cov2)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or infinity")
    w2_sq = (mu1 - mu2).square().sum() + _covariance_term(cov1, cov2)
    return float(w2_sq.clamp_min(0.0).sqrt())


def _covariance_term(cov1: torch.Tensor, cov2: torch.Tensor) -> torch.Tensor:
    """Tr(S1 + S2 - 2 (S2^1/2 S1 S2^1/2)^1/2), not clipped at zero."""
    # Tr((S2^1/2 S1 S2^1/2)^1/2) is the nuclear norm of S1^1/2 S2^1/2. Summing its
    # singular values is far better conditioned than the square roots of the
    # eigenvalues of S2^1/2 S1 S2^1/2, which squares the spread of the spectrum.
    cross = torch.linalg.svdvals(sqrtm_psd(cov1) @ sqrtm_psd(cov2)).sum()
    return cov1.trace() + cov2.trace() - 2.0 * cross


def _span_basis(xc: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns spanning every centred sample of both sets.

    Both covariances live in this span, so W2's covariance term is the same computed
    there: with n samples in d >> n dimensions the matrices shrink from d x d to at
    most (n1 + n2) x (n1 + n2), and the null space (where eigh only sees rounding) is gone.
    """
    q, _ = torch.linalg.qr(torch.cat([xc, yc]).T)
    return q


def gaussian_w2(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> float:
    """W2 between Gaussian fits (mean, unbiased covariance) of two (n, d) feature sets."""
    x, y = _as_features(x, "x"), _as_features(y, "y")
    _check_pair(x, y)
    mu1, mu2 = x.mean(0), y.mean(0)
    xc, yc = x - mu1, y - mu2
    if x.shape[0] + y.shape[0] < x.shape[1]:
        basis = _span_basis(xc, yc)
        xc, yc = xc @ basis, yc @ basis
    cov1 = xc.T @ xc / (x.shape[0] - 1)
    cov2 = yc.T @ yc / (y.shape[0] - 1)
    w2_sq = (mu1 - mu2).square().sum() + _covariance_term(cov1, cov2)
    return float(w2_sq.clamp_min(0.0).sqrt())


def empirical_w2(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> float:
    """Exact W2 between the empirical distributions of two equal-size (n, d) sets."""
    x, y = _as_features(x, "x"), _as_features(y, "y")
    _check_pair(x, y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"empirical W2 needs equal-size sets, got {x.shape[0]} and {y.shape[0]}")
    # Exact differences, not |x|^2 + |y|^2 - 2 x.y: identical points must cost exactly 0.
    cost = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist").square().numpy()
    # SciPy is one of ComfyUI's own requirements; imported here so the rest of the metrics need only torch.
    from scipy.optimize import linear_sum_assignment
    rows, cols = linear_sum_assignment(cost)
    return float(np.sqrt(cost[rows, cols].mean()))


@dataclass(frozen=True)
class W2Result:
    """Both W2 figures between a customized set and a base set of features."""

    gaussian: float
    empirical: float | None  # None when the two sets differ in size
    mean_distance: float  # |mu1 - mu2|: the part of the Gaussian W2 due to the means
    n_custom: int
    n_base: int
    dim: int

    def report(self) -> str:
        emp = (f"{self.empirical:.6g}" if self.empirical is not None
               else "n/a (needs sets of equal size)")
        cov_part = max(self.gaussian ** 2 - self.mean_distance ** 2, 0.0) ** 0.5
        return "\n".join([
            "Infusion Wasserstein-2 (concept-specific overfitting; lower = keeps the class's variety)",
            f"Gaussian W2:  {self.gaussian:.6g}",
            f"  mean part |mu_c - mu_b|: {self.mean_distance:.6g}",
            f"  covariance part:         {cov_part:.6g}",
            f"Empirical W2 (optimal assignment): {emp}",
            f"samples: customized {self.n_custom}, base {self.n_base}; feature dim {self.dim}",
        ])


def feature_wasserstein(custom: torch.Tensor | np.ndarray, base: torch.Tensor | np.ndarray) -> W2Result:
    """Gaussian and (for equal sizes) empirical W2 between customized and base features."""
    x, y = _as_features(custom, "customized features"), _as_features(base, "base features")
    _check_pair(x, y)
    return W2Result(
        gaussian=gaussian_w2(x, y),
        empirical=empirical_w2(x, y) if x.shape[0] == y.shape[0] else None,
        mean_distance=float((x.mean(0) - y.mean(0)).norm()),
        n_custom=x.shape[0],
        n_base=y.shape[0],
        dim=x.shape[1],
    )

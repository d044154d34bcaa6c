"""Wasserstein-2 core against closed forms."""
import itertools
import math

import pytest
import torch

from infusion.metrics import empirical_w2, feature_wasserstein, gaussian_w2, gaussian_w2_from_stats, sqrtm_psd


def features(n: int, d: int, seed: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, d), generator=g, dtype=torch.float64) * scale + shift


def rotation(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn((d, d), generator=g, dtype=torch.float64))
    return q


def gram_reference(x: torch.Tensor, y: torch.Tensor) -> float:
    """Gaussian W2 with no matrix square root: Tr((S2^1/2 S1 S2^1/2)^1/2) equals the
    nuclear norm of Xc Yc^T / sqrt((n1 - 1)(n2 - 1)) for centred data matrices."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    c1, c2 = x.shape[0] - 1, y.shape[0] - 1
    cross = torch.linalg.svdvals(xc @ yc.T).sum() / math.sqrt(c1 * c2)
    w2_sq = (x.mean(0) - y.mean(0)).square().sum() + xc.square().sum() / c1 + yc.square().sum() / c2 - 2 * cross
    return float(w2_sq.clamp_min(0).sqrt())


# ------------------------------------------------------------------ identities

@pytest.mark.parametrize("n, d", [(50, 8), (12, 300)])
def test_identical_sets_give_zero(n, d):
    x = features(n, d, 0)
    assert empirical_w2(x, x) == 0.0  # identity assignment, every distance exactly 0
    # The closed form subtracts traces of size ~d: zero up to rounding at that scale.
    assert gaussian_w2(x, x) < 1e-6 * math.sqrt(d)


@pytest.mark.parametrize("n, d", [(40, 5), (10, 200)])
def test_mean_shift_only_gives_the_shift_length(n, d):
    x = features(n, d, 1)
    shift = features(1, d, 2)[0]
    expected = float(shift.norm())
    assert gaussian_w2(x, x + shift) == pytest.approx(expected, rel=1e-9)
    # Sum_i (x_i - x_pi(i)) = 0 for any permutation, so the identity is optimal.
    assert empirical_w2(x, x + shift) == pytest.approx(expected, rel=1e-12)


def test_diagonal_covariances_match_the_commuting_closed_form():
    a = torch.tensor([4.0, 1.0, 0.25, 9.0, 0.0], dtype=torch.float64)
    b = torch.tensor([1.0, 1.0, 1.0, 0.0, 2.0], dtype=torch.float64)
    mu1 = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0], dtype=torch.float64)
    mu2 = torch.zeros(5, dtype=torch.float64)
    expected = math.sqrt(float((mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum()))
    assert gaussian_w2_from_stats(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_commuting_covariances_in_a_rotated_basis():
    q = rotation(6, 3)
    a = torch.tensor([3.0, 2.0, 1.0, 0.5, 0.1, 0.0], dtype=torch.float64)
    b = torch.tensor([1.0, 1.0, 2.0, 0.0, 0.1, 4.0], dtype=torch.float64)
    zero = torch.zeros(6, dtype=torch.float64)
    expected = float((a.sqrt() - b.sqrt()).square().sum().sqrt())
    got = gaussian_w2_from_stats(zero, q @ torch.diag(a) @ q.T, zero, q @ torch.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("n, d", [(30, 6), (8, 64)])
def test_rotation_invariance(n, d):
    x, y = features(n, d, 4), features(n, d, 5, scale=2.0, shift=0.3)
    q = rotation(d, 6)
    assert gaussian_w2(x @ q, y @ q) == pytest.approx(gaussian_w2(x, y), rel=1e-10)
    assert empirical_w2(x @ q, y @ q) == pytest.approx(empirical_w2(x, y), rel=1e-10)


def test_rank_deficient_covariances_from_stats():
    # Both covariances have rank 2 in 5-D, on different planes (non-commuting).
    g = torch.Generator().manual_seed(7)
    a1, a2 = (torch.randn((5, 2), generator=g, dtype=torch.float64) for _ in range(2))
    cov1, cov2 = a1 @ a1.T, a2 @ a2.T
    zero = torch.zeros(5, dtype=torch.float64)
    # Reference: Tr((S2^1/2 S1 S2^1/2)^1/2) = nuclear norm of A1^T A2 for S = A A^T.
    cross = torch.linalg.svdvals(a1.T @ a2).sum()
    expected = float((cov1.trace() + cov2.trace() - 2 * cross).sqrt())
    assert gaussian_w2_from_stats(zero, cov1, zero, cov2) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("n1, n2, d", [(10, 14, 512), (3, 3, 40), (25, 25, 25)])
def test_fewer_samples_than_dimensions_match_the_gram_form(n1, n2, d):
    x, y = features(n1, d, 8), features(n2, d, 9, scale=1.5, shift=0.1)
    assert gaussian_w2(x, y) == pytest.approx(gram_reference(x, y), rel=1e-12)


def test_sample_form_matches_full_covariances():
    x, y = features(6, 20, 10), features(9, 20, 11, scale=0.5)
    cov = lambda z: torch.cov(z.T)  # noqa: E731  (unbiased, as gaussian_w2)
    full = gaussian_w2_from_stats(x.mean(0), cov(x), y.mean(0), cov(y))
    assert gaussian_w2(x, y) == pytest.approx(full, rel=1e-10)


def test_one_dimensional_case():
    x, y = features(40, 1, 12), features(40, 1, 13, scale=3.0, shift=1.0)
    # Empirical W2 on a line: match the sorted samples.
    expected = float((x[:, 0].sort().values - y[:, 0].sort().values).square().mean().sqrt())
    assert empirical_w2(x, y) == pytest.approx(expected, rel=1e-12)
    assert empirical_w2(x[:, 0], y[:, 0]) == pytest.approx(expected, rel=1e-12)  # 1-D input accepted
    # Gaussian W2 on a line: (mu1 - mu2)^2 + (s1 - s2)^2.
    s1, s2 = x[:, 0].std(), y[:, 0].std()
    gauss = math.sqrt(float((x.mean() - y.mean()) ** 2 + (s1 - s2) ** 2))
    assert gaussian_w2(x, y) == pytest.approx(gauss, rel=1e-12)


def test_collapsed_or_shifted_set_is_farther():
    # Low dimension: the empirical W2 of two finite samples of one law shrinks slowly
    # with n in high dimension, and would hide the difference.
    base = features(64, 3, 14)
    similar = features(64, 3, 15)
    collapsed = features(64, 3, 16, scale=0.1)
    shifted = features(64, 3, 17, shift=1.0)
    near = feature_wasserstein(similar, base)
    for far in (collapsed, shifted):
        r = feature_wasserstein(far, base)
        assert r.gaussian > near.gaussian and r.empirical > near.empirical


# ------------------------------------------------------------------ pieces

def test_sqrtm_psd_squares_back_and_clips_rank_deficiency():
    g = torch.Generator().manual_seed(18)
    a = torch.randn((6, 3), generator=g, dtype=torch.float64)
    s = a @ a.T  # rank 3
    r = sqrtm_psd(s)
    torch.testing.assert_close(r @ r, s, rtol=1e-10, atol=1e-12)
    assert torch.linalg.eigvalsh(r).min() > -1e-12


@pytest.mark.parametrize("n", [2, 3, 5, 6])
def test_empirical_w2_is_the_best_of_all_assignments(n):
    for seed in range(10):
        x, y = features(n, 3, 100 + seed), features(n, 3, 200 + seed, shift=0.3)
        cost = torch.cdist(x, y).square()
        best = min(sum(float(cost[i, p[i]]) for i in range(n)) for p in itertools.permutations(range(n)))
        assert empirical_w2(x, y) == pytest.approx(math.sqrt(best / n), rel=1e-12)


def test_result_and_report():
    x, y = features(8, 4, 19), features(8, 4, 20, shift=0.5)
    r = feature_wasserstein(x, y)
    assert r.gaussian == gaussian_w2(x, y) and r.empirical == empirical_w2(x, y)
    assert r.mean_distance == pytest.approx(float((x.mean(0) - y.mean(0)).norm()))
    assert (r.n_custom, r.n_base, r.dim) == (8, 8, 4)
    text = r.report()
    assert "Gaussian W2" in text and "Empirical W2" in text
    unequal = feature_wasserstein(x, y[:5])
    assert unequal.empirical is None and "n/a" in unequal.report()


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("fn", [gaussian_w2, empirical_w2, feature_wasserstein])
def test_bad_input_is_a_clear_error(fn):
    x = features(5, 3, 21)
    with pytest.raises(ValueError, match="dimensions differ"):
        fn(x, features(5, 4, 22))
    bad = x.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fn(bad, x)
    with pytest.raises(ValueError, match="at least 2 samples"):
        fn(x[:1], x)
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        fn(x[None], x)


def test_empirical_needs_equal_sizes():
    with pytest.raises(ValueError, match="equal-size"):
        empirical_w2(features(5, 3, 23), features(6, 3, 24))


def test_bad_stats_are_clear_errors():
    eye = torch.eye(3, dtype=torch.float64)
    zero = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="3x3"):
        gaussian_w2_from_stats(zero, torch.eye(2), zero, eye)
    with pytest.raises(ValueError, match="NaN"):
        gaussian_w2_from_stats(zero, eye * float("nan"), zero, eye)

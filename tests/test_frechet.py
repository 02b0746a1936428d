"""The Frechet distance (cfglab.metrics.frechet) against its closed form and against the peers' implementations."""

import numpy as np
import pytest
import scipy.linalg
import torch
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

from cfglab.metrics.frechet import feature_statistics, frechet_distance


def rotation(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def closed_form(mu1, a, mu2, b) -> float:
    """Gaussians N(mu1, Q diag(a) Q^T) and N(mu2, Q diag(b) Q^T) with the same rotation Q commute: the distance
    is ||mu1 - mu2||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2 (Dowson & Landau 1982)."""
    return float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())


@pytest.mark.parametrize("rank", [256, 40, 1])
def test_commuting_covariances_give_the_closed_form_also_when_singular(rank):
    d = 256
    rng = np.random.default_rng(0)
    q = rotation(d, 1)
    a, b = np.zeros(d), np.zeros(d)
    a[:rank], b[:rank] = rng.uniform(0.1, 4, rank), rng.uniform(0.1, 4, rank)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T  # rounding leaves eigenvalues of about -1e-15 where rank < d
    fd = frechet_distance(mu1, s1, mu2, s2)
    assert fd == pytest.approx(closed_form(mu1, a, mu2, b), rel=1e-9, abs=1e-9)


def test_fewer_samples_than_dimensions_stay_real_finite_and_equal_the_gram_matrix_form():
    """The case of LightningDiT#97: covariances of 100 samples in 512 dimensions (rank 99), nearly singular. The
    distance is real and finite, and equals the distance computed from the samples' Gram matrices (an identity:
    the nonzero eigenvalues of S1 S2 are those of (X1^T X2)(X2^T X1) / ((n1 - 1)(n2 - 1)) on centred samples)."""
    rng = np.random.default_rng(3)
    x1 = rng.standard_normal((100, 512)) @ rng.standard_normal((512, 512)) * 0.1
    x2 = rng.standard_normal((100, 512)) @ rng.standard_normal((512, 512)) * 0.1 + 0.2
    (mu1, s1), (mu2, s2) = feature_statistics(x1), feature_statistics(x2)
    fd = frechet_distance(mu1, s1, mu2, s2)
    c1, c2 = x1 - mu1, x2 - mu2
    cross = c1 @ c2.T / np.sqrt(99 * 99)  # (100, 100)
    singular = np.linalg.svd(cross, compute_uv=False)  # sqrt of the eigenvalues of S1 S2
    reference = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * singular.sum())
    assert np.isfinite(fd) and isinstance(fd, float)
    assert fd == pytest.approx(reference, rel=1e-9)


def test_equal_sets_are_at_distance_zero_and_the_distance_is_symmetric():
    x = np.random.default_rng(0).standard_normal((300, 64))
    y = np.random.default_rng(1).standard_normal((300, 64)) * 1.5
    sx, sy = feature_statistics(x), feature_statistics(y)
    assert abs(frechet_distance(*sx, *sx)) < 1e-9
    assert frechet_distance(*sx, *sy) == pytest.approx(frechet_distance(*sy, *sx), rel=1e-12)


def test_the_peers_formulas_agree_on_well_conditioned_features():
    """torch-fidelity's (eigenvalues of S1 S2) and pytorch-fid's / the ADM evaluator's (scipy.linalg.sqrtm of S1 S2)
    formulas give the same distance on full-rank statistics."""
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((2000, 64)), rng.standard_normal((2000, 64)) @ rng.uniform(0.5, 1.5, (64, 64)) / 8
    (mu1, s1), (mu2, s2) = feature_statistics(x), feature_statistics(y)
    ours = frechet_distance(mu1, s1, mu2, s2)
    stats = [fid_features_to_statistics(torch.from_numpy(f)) for f in (x, y)]
    theirs = fid_statistics_to_metric(*stats, False)["frechet_inception_distance"]
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    adm = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
    assert ours == pytest.approx(theirs, rel=1e-9) and ours == pytest.approx(adm, rel=1e-7)


@pytest.mark.parametrize("bad, match", [
    (lambda m, s: (m[:3], s), "different shapes"),
    (lambda m, s: (m, np.where(np.eye(len(m)) > 0, np.nan, s)), "sigma1 holds NaN"),
])
def test_broken_statistics_are_refused_with_what_is_broken(bad, match):
    mu, sigma = feature_statistics(np.random.default_rng(0).standard_normal((50, 8)))
    with pytest.raises(ValueError, match=match):
        frechet_distance(*bad(mu, sigma), mu, sigma)

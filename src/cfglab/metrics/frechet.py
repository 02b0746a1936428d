"""The Frechet distance between two Gaussians (Dowson & Landau 1982), the FID of Heusel et al. 2017 (eq. 6) on
feature statistics, with a matrix square root that cannot come out NaN or complex."""

from __future__ import annotations

import numpy as np


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D), in float64; the covariance with N - 1 in the
    denominator, as numpy.cov, the ADM evaluator, pytorch-fid and torch-fidelity compute it."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"features of shape {features.shape}: need (N, D) with N >= 2")
    return features.mean(0), np.cov(features, rowvar=False)


def _nonnegative(values: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric positive semi-definite matrix with those below its rounding level (the largest
    times the size times float64's eps, numpy.linalg.matrix_rank's threshold) set to 0: their square roots (about
    3e-8 for rounding of 1e-15) would otherwise add up over the null space of a singular covariance."""
    tol = max(values.max(initial=0.0), 0.0) * len(values) * np.finfo(np.float64).eps
    return np.where(values > tol, values, 0.0)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix."""
    values, vectors = np.linalg.eigh(sigma)
    return (vectors * np.sqrt(_nonnegative(values))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)), in float64.

    tr((S1 S2)^(1/2)) is computed as tr((S1^(1/2) S2 S1^(1/2))^(1/2)): the same eigenvalues, but of a symmetric
    positive semi-definite matrix, so symmetric eigendecompositions (numpy.linalg.eigh) give them real, and those
    that rounding leaves around 0 for a nearly singular covariance (fewer samples than feature dimensions, or
    collapsed features) are taken as 0. The result is real and finite for any symmetric input.
    scipy.linalg.sqrtm of the non-symmetric S1 S2, which the ADM evaluator and pytorch-fid use, can return NaN or
    complex values there: an OpenBLAS build gave FID 20.65 for about 5-8 that way (LightningDiT#97)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"statistics of different shapes: mu {mu1.shape} and {mu2.shape}, sigma {sigma1.shape} "
                         f"and {sigma2.shape}")
    for name, value in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.isfinite(value).all():
            raise ValueError(f"{name} holds NaN or infinite values: the features it was computed from are broken")
    root1 = _psd_sqrt((sigma1 + sigma1.T) / 2)
    middle = root1 @ ((sigma2 + sigma2.T) / 2) @ root1
    tr_covmean = np.sqrt(_nonnegative(np.linalg.eigvalsh((middle + middle.T) / 2))).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)

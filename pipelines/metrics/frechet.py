"""Fréchet distance between Gaussians fitted to feature sets (the formula behind FID).

    d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))

Computed by us in float64 with `scipy.linalg.sqrtm` called without `disp` (clean-fid's helper
passes `disp=False`, which SciPy 1.18 removes). Statistics files are npz with keys `mu` and
`sigma`, the layout EDM's `fid.py ref` and clean-fid's custom stats use, so files travel
between the three tools.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import scipy.linalg

from ..errors import UserError

# Added to both covariance diagonals when sqrtm of the product is not finite (a singular
# product, e.g. fewer samples than feature dimensions); the same fix EDM and clean-fid apply.
_SINGULAR_EPS = 1e-6
# Relative size of an imaginary part of sqrtm's trace we accept as round-off.
_IMAG_TOL = 1e-3


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, float64) of an (N, D) feature array, N >= 2."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise UserError(f"features must be a 2-D (N, D) array, got shape {f.shape}")
    if f.shape[0] < 2:
        raise UserError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise UserError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, "
                        f"sigma {sigma1.shape} vs {sigma2.shape} (were they made with the same features?)")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # Singular products are routine (dead ReLU features, fewer images than dimensions);
        # the finiteness and imaginary-part checks below decide whether the result is usable.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * _SINGULAR_EPS
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        # sqrtm of a product of PSD matrices is real up to round-off; a large imaginary
        # part means the inputs were not covariances.
        imag = np.abs(np.diagonal(covmean).imag).max()
        if imag > _IMAG_TOL * max(1.0, np.abs(np.diagonal(covmean).real).max()):
            raise ValueError(f"sqrtm(sigma1 @ sigma2) has an imaginary part of {imag:g}: "
                             "the matrices are not valid covariances")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def save_stats(path, mu, sigma, **extra) -> None:
    """Write `mu`, `sigma` (float64) and optional extra arrays to an npz (EDM/clean-fid layout)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    arrays = {k: np.asarray(v) for k, v in extra.items()}
    with open(path, "wb") as f:  # a file object keeps numpy from appending '.npz'
        np.savez(f, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64), **arrays)


def load_stats(path) -> tuple[np.ndarray, np.ndarray]:
    """Read (mu, sigma) from an npz written by us, EDM's `fid.py ref` or clean-fid."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"statistics file not found: {path} (make one with "
                        "`python -m pipelines ref-stats SRC --out stats.npz`)")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "mu" not in data or "sigma" not in data:
                raise UserError(f"{path} has keys {sorted(data.keys())}; expected 'mu' and 'sigma'")
            return data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
    except (ValueError, OSError) as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"cannot read statistics from {path}: {e}") from e

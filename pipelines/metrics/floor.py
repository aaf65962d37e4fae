"""What a Fréchet distance can say at a given sample size: its own floor, bootstrap intervals,
and the small-sample warning.

A Fréchet distance computed from n samples is biased upwards: even a generator that draws
exactly from the reference distribution scores above 0, and the bias grows as n shrinks
(roughly like 1/n) and as the feature dimension grows. So an FD is only readable beside the
FD that perfect samples get at the same n:

    fd_floor(real_features, n)  ->  (mean, (lo, hi))

draws n rows of `real_features` with replacement (n i.i.d. samples of the real set's own
empirical distribution, i.e. a generator that reproduced its training set exactly), computes
their FD against the statistics of all of `real_features` (or `ref_features`), and repeats.
A model whose FD lies inside that interval is at the metric's floor: there is nothing left for
any method to gain that this metric at this n could see. Because the draws come from the
reference set itself, the floor is a lower bound: an independent real sample of the same size
(which does not exist here for the 1797 digits) would score a little higher.

When n is smaller than the feature dimension (128 for FD-digits, 2048 for Inception) the
sample covariance is singular and the FD is dominated by that bias: `small_sample_warning`
returns the message every report carries in that case.
"""
from __future__ import annotations

import numpy as np

from .frechet import feature_stats, frechet_distance

# Feature dimensions of the metrics we report; n below these gives a singular covariance.
FEATURE_DIMS = {"FD-digits": 128, "FID": 2048}


def small_sample(n: int, dims: int) -> bool:
    """True when n samples are fewer than the feature dimension (singular covariance)."""
    return int(n) < int(dims)


def small_sample_warning(n: int, dims: int, what: str = "overall", metric: str = "FD") -> str | None:
    """The warning text for an FD from n samples of `dims`-d features, or None when n >= dims."""
    if not small_sample(n, dims):
        return None
    return (f"{metric} {what}: {int(n)} samples < {int(dims)} feature dimensions; the covariance is singular "
            f"and the value is dominated by small-sample bias (compare with fd_floor at the same n, "
            f"or use at least {int(dims)} samples)")


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    a = (1 - level) / 2
    lo, hi = np.quantile(values, [a, 1 - a])
    return float(lo), float(hi)


def fd_floor(real_features, n: int, repeats: int = 20, seed: int = 0, ref_features=None,
             level: float = 0.95) -> tuple[float, tuple[float, float]]:
    """The FD that perfect samples get at sample size n: (mean, (lo, hi) percentile interval).

    real_features: (N, D) features of the real set; n draws with replacement from it per repeat.
    ref_features:  what those draws are compared with (default: all of real_features), i.e. the
                   same reference the generated samples are measured against.
    repeats:       independent draws (20 gives a usable 95% interval; more for a tighter one).
    """
    real = np.asarray(real_features, np.float64)
    if int(n) < 2:
        raise ValueError(f"a Fréchet distance needs n >= 2 samples, got {n}")
    ref = real if ref_features is None else np.asarray(ref_features, np.float64)
    mu_r, sigma_r = feature_stats(ref)
    rng = np.random.default_rng(seed)
    values = np.array([frechet_distance(*feature_stats(real[rng.integers(0, len(real), int(n))]), mu_r, sigma_r)
                       for _ in range(int(repeats))])
    return float(values.mean()), _interval(values, level)


def fd_floor_per_group(real_features, real_groups, counts: dict, repeats: int = 20, seed: int = 0,
                       level: float = 0.95) -> dict:
    """Per group g: fd_floor of group g's real features at the generated count counts[g].

    Returns {g: {"n": counts[g], "mean": ..., "interval": [lo, hi]}}; groups with fewer than 2
    generated or real samples get mean None.
    """
    real = np.asarray(real_features, np.float64)
    groups = np.asarray(real_groups, dtype=object)
    out = {}
    for i, (g, n) in enumerate(counts.items()):
        rows = real[groups == g]
        if int(n) < 2 or len(rows) < 2:
            out[g] = {"n": int(n), "mean": None, "interval": None}
            continue
        mean, (lo, hi) = fd_floor(rows, int(n), repeats, seed + 1000 * (i + 1), level=level)
        out[g] = {"n": int(n), "mean": mean, "interval": [lo, hi]}
    return out


def fd_bootstrap(gen_features, ref_mu, ref_sigma, repeats: int = 100, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Bias-corrected percentile bootstrap interval of FD(gen, ref): the generated rows are
    resampled with replacement, the reference statistics held fixed.

    Resampling duplicates rows (about a third of them), which shrinks the effective sample and
    raises every bootstrap FD by the small-sample bias: near the floor the plain percentile
    interval can lie wholly above the point estimate. So the interval is shifted down by the
    bootstrap's own bias estimate, mean(bootstrap FDs) - FD; it shows the spread due to the
    finite generated sample. Compare two settings on the same seeds with a paired bootstrap of
    their difference instead (pipelines.experiments.self_improve does).
    """
    gen = np.asarray(gen_features, np.float64)
    rng = np.random.default_rng(seed)
    point = frechet_distance(*feature_stats(gen), ref_mu, ref_sigma)
    values = np.array([frechet_distance(*feature_stats(gen[rng.integers(0, len(gen), len(gen))]), ref_mu, ref_sigma)
                       for _ in range(int(repeats))])
    lo, hi = _interval(values - (values.mean() - point), level)
    return lo, hi

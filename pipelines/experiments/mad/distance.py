"""Wasserstein distances between a model's samples and p_r, two views.

- Exact optimal transport (POT `ot.emd2`, network simplex, uniform weights, squared Euclidean
  cost): W2 between m generated points and m points drawn from p_r. Its value never reaches 0:
  two independent m-point samples of the same law sit about `ot_floor` apart, which is reported
  beside it.
- Closed-form Gaussian W2 between N(mean, cov) fitted to the generated points and p_r's true
  mean and covariance: ||m1 - m2||^2 + tr(C1 + C2 - 2 (C2^1/2 C1 C2^1/2)^1/2).

Many runs: `OTPool` solves the per-run exact problems in a pool of processes (POT's solver is
single-threaded), in chunks, and hands back a handle, so a loop can train its next
generation while the distances of this one are computed. The values are the same exact
solver's, only spread over cores.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np
import ot
import torch

NUM_ITERMAX = 10_000_000  # POT's default 100k stops early on 1000-point problems


def ot_w2(x, y) -> float:
    """Exact W2 between two equal-weight point clouds (POT network simplex)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    cost = ot.dist(x, y, metric="sqeuclidean")
    a = np.full(len(x), 1.0 / len(x))
    b = np.full(len(y), 1.0 / len(y))
    return float(np.sqrt(max(ot.emd2(a, b, cost, numItermax=NUM_ITERMAX), 0.0)))


def _ot_chunk(g: np.ndarray, r: np.ndarray) -> np.ndarray:
    return np.array([ot_w2(a, b) for a, b in zip(g, r)])


def ot_w2_runs(gen: torch.Tensor, ref: torch.Tensor, workers: int = 0) -> np.ndarray:
    """Per-run exact W2 between gen[r] and ref[r] ([R, m, d] each); `workers` > 0 uses a process pool."""
    with OTPool(workers) as pool:
        return pool.submit(gen, ref).result()


class _Done:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


class _Chunks:
    """Handle on the chunks of one batch of problems: result() joins them in run order."""

    def __init__(self, futures: list[Future]):
        self.futures = futures

    def result(self) -> np.ndarray:
        return np.concatenate([f.result() for f in self.futures])


class OTPool:
    """Exact W2 of many runs at once: `workers` processes (0: here, one after another)."""

    def __init__(self, workers: int = 0, chunk: int = 16):
        if workers < 0 or chunk < 1:
            raise ValueError(f"OTPool needs workers >= 0 and chunk >= 1 (got {workers}, {chunk}).")
        self.workers, self.chunk = workers, chunk
        self._ex: ProcessPoolExecutor | None = None

    def __enter__(self) -> "OTPool":
        if self.workers:
            # fork where there is one: workers start in milliseconds (spawn re-imports torch via POT)
            # and only run numpy/POT, never torch or CUDA, so the parent's threads do not matter
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            self._ex = ProcessPoolExecutor(self.workers, mp_context=ctx)
        return self

    def __exit__(self, *exc):
        if self._ex is not None:
            self._ex.shutdown(wait=True, cancel_futures=exc[0] is not None)
            self._ex = None

    def submit(self, gen: torch.Tensor, ref: torch.Tensor):
        """Start the problems gen[r] vs ref[r]; returns a handle whose result() is the [R] array."""
        g = gen.detach().to("cpu", torch.float64).numpy()
        r = ref.detach().to("cpu", torch.float64).numpy()
        if g.shape[0] != r.shape[0]:
            raise ValueError(f"{g.shape[0]} generated runs but {r.shape[0]} reference runs.")
        if self._ex is None:
            return _Done(_ot_chunk(g, r))
        return _Chunks([self._ex.submit(_ot_chunk, g[i:i + self.chunk], r[i:i + self.chunk])
                        for i in range(0, len(g), self.chunk)])


def _psd_sqrt(c: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(c)
    return (vecs * vals.clamp_min(0).sqrt()[..., None, :]) @ vecs.transpose(-1, -2)


def gaussian_w2(mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor) -> torch.Tensor:
    """Closed-form W2 between Gaussians; batched over leading dimensions (float64)."""
    mean1, cov1, mean2, cov2 = (t.to(torch.float64) for t in (mean1, cov1, mean2, cov2))
    s2 = _psd_sqrt(cov2)
    cross = _psd_sqrt(s2 @ cov1 @ s2)
    tr = torch.diagonal(cov1 + cov2 - 2 * cross, dim1=-2, dim2=-1).sum(-1)
    w2sq = ((mean1 - mean2) ** 2).sum(-1) + tr
    return w2sq.clamp_min(0).sqrt()


def fitted_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-run sample mean and (unbiased) covariance of [R, m, d] points."""
    x = x.to(torch.float64)
    mean = x.mean(1)
    xc = x - mean[:, None]
    return mean, xc.transpose(1, 2) @ xc / (x.shape[1] - 1)


def gaussian_w2_runs(gen: torch.Tensor, true_mean: torch.Tensor, true_cov: torch.Tensor) -> np.ndarray:
    """Per-run closed-form W2 between a Gaussian fitted to gen[r] and p_r's true moments."""
    mean, cov = fitted_moments(gen)
    return gaussian_w2(mean, cov, true_mean.expand_as(mean), true_cov.expand_as(cov)).numpy()


def mean_se(values) -> dict:
    """{'mean', 'se'} of per-run values; se = sample std / sqrt(runs), None for a single run."""
    values = np.asarray(values)
    se = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None
    return {"mean": float(values.mean()), "se": se}

"""Real distributions p_r for the 2-D loops: the paper's Gaussian and a labelled two-group mixture.

A world draws points for many runs at once ([R, n, d], one torch generator for the call) and
knows its true mean and covariance, which the closed-form Gaussian W2 compares against. The
mixture's component is a group label, for 2-D distribution-shift studies (SIMS Sec. 4.3).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...errors import UserError


def _check_cov(cov: torch.Tensor, what: str) -> torch.Tensor:
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise UserError(f"{what} must be a square matrix (got shape {tuple(cov.shape)}).")
    if not torch.allclose(cov, cov.T) or torch.linalg.eigvalsh(cov).min() <= 0:
        raise UserError(f"{what} must be symmetric positive definite (got {cov.tolist()}).")
    return cov


@dataclass
class GaussianWorld:
    """p_r = N(mean, cov); the paper's Fig. 4 world is N(0, [[2, 1], [1, 2]])."""
    mean: list[float] = field(default_factory=lambda: [0.0, 0.0])
    cov: list[list[float]] = field(default_factory=lambda: [[2.0, 1.0], [1.0, 2.0]])
    name: str = "gaussian"

    def __post_init__(self):
        self._mean = torch.as_tensor(self.mean, dtype=torch.float64)
        self._cov = _check_cov(torch.as_tensor(self.cov, dtype=torch.float64), "Gaussian covariance")
        if self._mean.shape != (self._cov.shape[0],):
            raise UserError(f"mean has {self._mean.numel()} entries but covariance is {tuple(self._cov.shape)}.")
        self._chol = torch.linalg.cholesky(self._cov)

    @property
    def dim(self) -> int:
        return self._mean.numel()

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """True (mean, covariance) in float64."""
        return self._mean.clone(), self._cov.clone()

    def sample(self, runs: int, n: int, generator: torch.Generator) -> tuple[torch.Tensor, None]:
        """[runs, n, d] float32 points (no labels)."""
        z = torch.randn(runs, n, self.dim, generator=generator, dtype=torch.float64)
        return (self._mean + z @ self._chol.T).to(torch.float32), None


@dataclass
class MixtureWorld:
    """Gaussian mixture; the component index is the point's group label."""
    means: list[list[float]] = field(default_factory=lambda: [[-2.0, 0.0], [2.0, 0.0]])
    covs: list[list[list[float]]] = field(default_factory=lambda: [[[0.5, 0.0], [0.0, 0.5]]] * 2)
    weights: list[float] = field(default_factory=lambda: [0.5, 0.5])
    groups: list[str] = field(default_factory=lambda: ["left", "right"])
    name: str = "mixture"

    def __post_init__(self):
        k = len(self.means)
        if not (k >= 2 and len(self.covs) == k and len(self.weights) == k and len(self.groups) == k):
            raise UserError(f"A mixture needs >= 2 components with one mean, covariance, weight and group "
                            f"name each (got {len(self.means)}, {len(self.covs)}, {len(self.weights)}, "
                            f"{len(self.groups)}).")
        w = torch.as_tensor(self.weights, dtype=torch.float64)
        if (w < 0).any() or abs(float(w.sum()) - 1) > 1e-6:
            raise UserError(f"Mixture weights must be >= 0 and sum to 1 (got {self.weights}).")
        self._w = w
        self._means = torch.as_tensor(self.means, dtype=torch.float64)
        self._covs = torch.stack([_check_cov(torch.as_tensor(c, dtype=torch.float64), f"covariance {i}")
                                  for i, c in enumerate(self.covs)])
        self._chols = torch.linalg.cholesky(self._covs)

    @property
    def dim(self) -> int:
        return self._means.shape[1]

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and covariance of the whole mixture (law of total covariance)."""
        mean = (self._w[:, None] * self._means).sum(0)
        diff = self._means - mean
        cov = (self._w[:, None, None] * (self._covs + diff[:, :, None] * diff[:, None, :])).sum(0)
        return mean, cov

    def sample(self, runs: int, n: int, generator: torch.Generator, weights=None):
        """([runs, n, d] float32 points, [runs, n] int64 group labels); `weights` overrides the mix."""
        w = self._w if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        labels = torch.multinomial(w.expand(runs, -1), n, replacement=True, generator=generator)
        z = torch.randn(runs, n, self.dim, generator=generator, dtype=torch.float64)
        x = self._means[labels] + (self._chols[labels] @ z[..., None])[..., 0]
        return x.to(torch.float32), labels

    def component(self, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, covariance) of group g's component, float64."""
        return self._means[g].clone(), self._covs[g].clone()

    def log_densities(self, x: torch.Tensor) -> torch.Tensor:
        """log(w_k N(x; mu_k, Sigma_k)) for each component k: [..., K]."""
        x = x.to(torch.float64)[..., None, :]
        dist = torch.distributions.MultivariateNormal(self._means, scale_tril=self._chols)
        return dist.log_prob(x) + self._w.log()

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Bayes-optimal group label of each point (argmax posterior)."""
        return self.log_densities(x).argmax(-1)


WORLDS = {"gaussian": GaussianWorld, "mixture": MixtureWorld}


def make_world(name: str, **kwargs):
    """World by name: 'gaussian' (the paper's) or 'mixture' (two labelled groups)."""
    if name not in WORLDS:
        raise UserError(f"Unknown world '{name}'; choose one of {sorted(WORLDS)}.")
    return WORLDS[name](**kwargs)


def sigma_data_of(world) -> float:
    """Per-coordinate standard deviation of p_r (the EDM sigma_data that matches the data scale)."""
    _, cov = world.moments()
    return float(torch.diagonal(cov).mean().sqrt())

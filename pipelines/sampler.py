"""EDM Heun sampler (Karras et al. 2022, Algorithm 2) with per-sample seeds.

A denoiser is any callable `D(x, sigma, class_labels=None) -> denoised x`. Randomness is
injected through `SeededNoise`: one generator per sample, so a single image can be
regenerated bit-for-bit on the same device from its seed alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch


class SeededNoise:
    """One torch.Generator per sample; draws stack along the batch dimension."""

    def __init__(self, seeds: Sequence[int], device="cpu"):
        self.device = torch.device(device)
        self.generators = [torch.Generator(self.device).manual_seed(int(s) % (1 << 63)) for s in seeds]

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        return torch.stack([torch.randn(list(shape), generator=g, device=self.device) for g in self.generators])

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.randn(x.shape[1:]).to(x.dtype)


@dataclass
class SamplerConfig:
    """Heun sampler settings (EDM defaults)."""
    num_steps: int = 18
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    S_churn: float = 0.0
    S_min: float = 0.0
    S_max: float = float("inf")
    S_noise: float = 1.0

    def __post_init__(self):
        if int(self.num_steps) < 1:
            raise ValueError(f"num_steps must be >= 1 (got {self.num_steps}).")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"Need 0 < sigma_min < sigma_max (got {self.sigma_min}, {self.sigma_max}).")

    @property
    def nfe(self) -> int:
        """Denoiser evaluations of one sampling run: 2N - 1."""
        return 2 * self.num_steps - 1


def sigma_steps(cfg: SamplerConfig, device="cpu") -> torch.Tensor:
    """Time steps t_0 > ... > t_{N-1} and t_N = 0 (EDM eq. 5), float64."""
    n = cfg.num_steps
    i = torch.arange(n, dtype=torch.float64, device=device)
    lo, hi = cfg.sigma_min ** (1 / cfg.rho), cfg.sigma_max ** (1 / cfg.rho)
    t = (hi + i / max(n - 1, 1) * (lo - hi)) ** cfg.rho
    return torch.cat([t, torch.zeros_like(t[:1])])


def heun_sample(denoiser: Callable, latents: torch.Tensor, cfg: SamplerConfig = SamplerConfig(),
                class_labels=None, noise: SeededNoise | None = None) -> tuple[torch.Tensor, int]:
    """Run the Heun sampler from unit-variance `latents`; returns (x_0, NFE actually spent)."""
    t_steps = sigma_steps(cfg, latents.device)
    x_next = latents.to(torch.float64) * t_steps[0]
    nfe = 0
    n = cfg.num_steps

    def D(x, t):
        nonlocal nfe
        nfe += 1
        sigma = torch.full((x.shape[0],), float(t), device=x.device)
        return denoiser(x.to(torch.float32), sigma, class_labels).to(torch.float64)

    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        # Optional churn: raise the noise level temporarily (EDM Alg. 2 lines 4-6).
        gamma = min(cfg.S_churn / n, np.sqrt(2) - 1) if cfg.S_min <= t_cur <= cfg.S_max else 0.0
        t_hat = t_cur + gamma * t_cur
        if gamma > 0:
            eps = noise.randn_like(x_cur) if noise is not None else torch.randn_like(x_cur)
            x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * cfg.S_noise * eps.to(x_cur.dtype)
        else:
            x_hat = x_cur
        # Euler step.
        d_cur = (x_hat - D(x_hat, t_hat)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        # 2nd-order correction.
        if i < n - 1:
            d_prime = (x_next - D(x_next, t_next)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next.to(torch.float32), nfe


def sample_from_seeds(denoiser: Callable, seeds: Sequence[int], shape: Sequence[int],
                      cfg: SamplerConfig = SamplerConfig(), class_labels=None,
                      device="cpu") -> tuple[torch.Tensor, int]:
    """Latents from per-sample seeds, then Heun; same seed -> same sample on the same device."""
    noise = SeededNoise(seeds, device)
    latents = noise.randn(shape)
    return heun_sample(denoiser, latents, cfg, class_labels=class_labels, noise=noise)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW float -> uint8 NHWC (EDM's saving rule)."""
    return (x * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

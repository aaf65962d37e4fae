"""Batched training of many independent 2-D diffusion models with the engine's EDM parts.

R runs with N points each are one flat batch of R*N rows (run-major); `BatchedMLP` inside
`EDMPrecond` (or `VPPrecond`) evaluates each run with its own weights, the matched loss draws one sigma per row and the
loss is the sum over runs of each run's mean, so a single Adam step trains every run exactly
as it would be trained alone (Adam acts per parameter element). Training follows the paper's
toy recipe in epochs: Adam, lr 1e-3, batch 2048, so on <= 2048 points an epoch is one
full-batch step (base 100 epochs = 100 steps; auxiliary fine-tune 50 epochs on n_s = 2000).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch

from ...errors import UserError
from ...guidance import SIMSDenoiser
from ...loss import make_loss
from ...networks.batched_mlp import BatchedMLP
from ...precond import Precond, make_precond
from ...sampler import SamplerConfig, heun_sample
from .worlds import sigma_data_of


@dataclass
class ToyDiffusion:
    """Engine settings of the 2-D models: backbone shape, EDM sigma_data/loss, Heun steps."""
    hidden: int = 64
    depth: int = 4
    activation: str = "relu"
    precond: str = "edm"         # 'edm' (EDMPrecond + EDMLoss) or 'vp' (VPPrecond + VPLoss: DDPM's eps-MSE)
    sigma_data: float | None = None  # None: the world's per-coordinate std (set by the loops)
    P_mean: float = -1.2
    P_std: float = 1.2
    num_steps: int = 20          # Heun: 2*20 - 1 = 39 network calls, like the paper's 39 DDPM calls
    sigma_min: float = 0.002
    sigma_max: float = 80.0

    def for_world(self, world) -> "ToyDiffusion":
        """These settings with sigma_data filled in from p_r when it was left unset."""
        return self if self.sigma_data is not None else replace(self, sigma_data=sigma_data_of(world))

    def sampler(self) -> SamplerConfig:
        return SamplerConfig(num_steps=self.num_steps, sigma_min=self.sigma_min, sigma_max=self.sigma_max)

    def __post_init__(self):
        if self.precond not in ("edm", "vp"):
            raise UserError(f"precond must be 'edm' or 'vp' (got {self.precond!r}).")

    def loss(self):
        """The engine loss matched to the preconditioning."""
        if self.precond == "vp":
            return make_loss("vp")
        assert self.sigma_data is not None, "resolve sigma_data first (for_world)"
        return make_loss("edm", P_mean=self.P_mean, P_std=self.P_std, sigma_data=self.sigma_data)


@dataclass
class TrainConfig:
    """Epoch-based recipe (the paper's toy model: Adam lr 1e-3, batch 2048)."""
    epochs: int = 100
    batch_size: int = 2048
    lr: float = 1e-3

    def __post_init__(self):
        if self.epochs < 0 or self.batch_size < 1 or not self.lr > 0:
            raise UserError(f"Training needs epochs >= 0, batch_size >= 1, lr > 0 (got {self}).")


def new_denoiser(runs: int, dim: int, diff: ToyDiffusion, generator: torch.Generator) -> Precond:
    """`runs` freshly initialised 2-D denoisers as one Precond(BatchedMLP) of the engine."""
    net = BatchedMLP(runs, dim, diff.hidden, diff.depth, diff.activation, generator=generator)
    kwargs = {"sigma_data": diff.sigma_data} if diff.precond == "edm" else {}
    return make_precond(diff.precond, net, **kwargs)


def _epoch_batches(runs: int, n: int, batch_size: int, generator: torch.Generator):
    """Index tensors [R, b] of one epoch: a fresh permutation per run, cut into batches."""
    if n <= batch_size:  # one full batch; order does not matter to a full-batch step
        yield None
        return
    perm = torch.argsort(torch.rand(runs, n, generator=generator, device=generator.device), dim=1)
    for start in range(0, n, batch_size):
        yield perm[:, start:start + batch_size]


def train_runs(net: Precond, data: torch.Tensor, cfg: TrainConfig, diff: ToyDiffusion,
               generator: torch.Generator) -> list[float]:
    """Train every run on its own points data[r] ([R, N, d]) in place; returns mean loss per epoch."""
    runs, n, dim = data.shape
    if runs != net.model.runs:
        raise ValueError(f"data holds {runs} runs but the model has {net.model.runs}.")
    loss_fn = diff.loss()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    history = []
    net.train()
    for _ in range(cfg.epochs):
        total, steps = 0.0, 0
        for idx in _epoch_batches(runs, n, cfg.batch_size, generator):
            batch = data if idx is None else torch.gather(data, 1, idx[..., None].expand(-1, -1, dim))
            per_elem = loss_fn(net, batch.reshape(-1, dim), generator=generator)
            # Sum over runs of each run's mean: run r's gradient is that of training it alone.
            loss = per_elem.reshape(runs, -1).mean(1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) / runs
            steps += 1
        history.append(total / max(steps, 1))
    net.eval()
    return history


def finetune_copy(base: Precond, data: torch.Tensor, cfg: TrainConfig, diff: ToyDiffusion,
                  generator: torch.Generator) -> Precond:
    """SIMS Alg. 1 step 3: a copy of the base fine-tuned on its own samples (fresh Adam state)."""
    aux = copy.deepcopy(base)
    train_runs(aux, data, cfg, diff, generator)
    return aux


def _models(denoiser):
    """The BatchedMLPs behind a Precond or a SIMSDenoiser."""
    if isinstance(denoiser, SIMSDenoiser):
        return [denoiser.base.model] + ([denoiser.aux.model] if denoiser.aux is not None else [])
    return [denoiser.model]


@torch.no_grad()
def sample_runs(denoiser, runs: int, n: int, dim: int, diff: ToyDiffusion,
                generator: torch.Generator) -> torch.Tensor:
    """n Heun samples per run from a batched denoiser: [R, n, d]."""
    device = next(iter(_models(denoiser))).weights[0].device
    latents = torch.randn(runs * n, dim, generator=generator).to(device)  # drawn on the CPU: same on any device
    x, _ = heun_sample(denoiser, latents, diff.sampler())
    return x.reshape(runs, n, dim)


def sims_sample(base: Precond, aux: Precond | None, omega: float, n: int, diff: ToyDiffusion,
                generator: torch.Generator) -> torch.Tensor:
    """Samples of D = (1 + omega) D_base - omega D_aux for every run (omega = 0: the base alone)."""
    runs, dim = base.model.runs, base.model.config.dim
    return sample_runs(SIMSDenoiser(base, aux, omega), runs, n, dim, diff, generator)

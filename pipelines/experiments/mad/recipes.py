"""Diffusion recipes of the 2-D loops: what a model is, how it is trained, how SIMS samples it.

A recipe supplies the three things that differ between diffusion formulations and nothing
else: a fresh batched network, the training loss, and the guided sampler (with its guidance
combination). The loops, the batching over runs and the distances are shared.

- `toy-diffusion` (`DDPMRecipe`, the paper's): the DDPM of albarji/toy-diffusion's
  swissRoll.ipynb (2023-05-24): T = 40 steps, Nichol-Dhariwal cosine schedule with s = 0.008
  normalised so abar_0 = 1, an MLP fed [x, t] with the raw integer timestep predicting eps,
  eps-MSE with t uniform in 0..T-1, ancestral sampling over t = T-1..1 (39 network calls).
  SIMS mixes the eps predictions: eps = (1 + w) eps_base - w eps_aux.
- `edm` (`EDMRecipe`): the engine's EDM preconditioning and loss around the same MLP, Heun
  sampling; SIMS mixes denoiser outputs D = (1 + w) D_base - w D_aux.

Blocks: a batch may stack B blocks of R runs that share every random draw (one block per
omega of a sweep at one |D_s|). `repeat = B` draws the noise for one block and tiles it, so
block b gets exactly the numbers a loop of R runs alone would get; `omega` is then one value
per block. With omega 0 the auxiliary term is (1 + 0) * a - 0 * b = a exactly.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch

from ...errors import UserError
from ...networks.batched_mlp import BatchedMLP
from ...precond import make_precond
from ...sampler import SamplerConfig, heun_sample
from .worlds import sigma_data_of


def _tile(t: torch.Tensor, repeat: int) -> torch.Tensor:
    """Block-major copies of one block's draws: [rows, ...] -> [repeat * rows, ...]."""
    return t if repeat == 1 else t.repeat(repeat, *([1] * (t.ndim - 1)))


def omega_rows(omega, rows_per_block: int, device) -> float | torch.Tensor:
    """A float omega as is; one omega per block -> a [B * rows_per_block, 1] column."""
    if isinstance(omega, (int, float)):
        return float(omega)
    w = torch.as_tensor(omega, dtype=torch.float32, device=device)
    return w.repeat_interleave(rows_per_block)[:, None]


def combine(base_out: torch.Tensor, aux_out: torch.Tensor, omega) -> torch.Tensor:
    """SIMS guidance: (1 + w) * base - w * aux (w a float or a per-row column)."""
    return (1 + omega) * base_out - omega * aux_out


def _no_guidance(omega) -> bool:
    return (isinstance(omega, float) and omega == 0.0) or (
        isinstance(omega, torch.Tensor) and not bool(omega.any()))


def _start(base, aux, omega, rows: int, dim: int, generator: torch.Generator, repeat: int):
    """A sampler's first draw (one block's noise, tiled, on the models' device) and the network
    it steps: (1 + w) * base - w * aux, or base alone when every w is 0 (bitwise standard sampling)."""
    x = _tile(torch.randn(rows, dim, generator=generator, device=generator.device), repeat)
    x = x.to(next(base.parameters()).device)
    w = omega_rows(omega, rows, x.device)
    if _no_guidance(w):
        return x, base
    return x, lambda x, t: combine(base(x, t), aux(x, t), w)


def _mlp(runs, dim, recipe, generator) -> BatchedMLP:
    return BatchedMLP(runs, dim, recipe.hidden, recipe.depth, recipe.activation, generator=generator)


def batched_mlp(model) -> BatchedMLP:
    """The BatchedMLP inside a model of either recipe."""
    return model.model if hasattr(model, "model") else model


@dataclass
class EDMRecipe:
    """EDM preconditioning + EDM loss around the toy MLP, Heun sampler (the engine's formulation)."""
    hidden: int = 64
    depth: int = 4
    activation: str = "relu"
    sigma_data: float | None = None  # None: the world's per-coordinate std (set by for_world)
    P_mean: float = -1.2
    P_std: float = 1.2
    num_steps: int = 20          # Heun: 2*20 - 1 = 39 network calls, like the paper's 39 DDPM calls
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    name: str = "edm"

    def for_world(self, world) -> "EDMRecipe":
        """These settings with sigma_data filled in from p_r when it was left unset."""
        return self if self.sigma_data is not None else replace(self, sigma_data=sigma_data_of(world))

    def sampler(self) -> SamplerConfig:
        return SamplerConfig(num_steps=self.num_steps, sigma_min=self.sigma_min, sigma_max=self.sigma_max)

    @property
    def nfe(self) -> int:
        return 2 * self.num_steps - 1

    def new_model(self, runs: int, dim: int, generator: torch.Generator):
        assert self.sigma_data is not None, "resolve sigma_data first (for_world)"
        return make_precond("edm", _mlp(runs, dim, self, generator), sigma_data=self.sigma_data)

    def loss(self, model, x: torch.Tensor, generator: torch.Generator, repeat: int = 1) -> torch.Tensor:
        """The engine's EDMLoss (same draws in the same order), per element [rows, d]."""
        rows = x.shape[0] // repeat
        rnd_normal = _tile(torch.randn([rows, 1], device=x.device, generator=generator), repeat)
        sigma = (rnd_normal * self.P_std + self.P_mean).exp()
        weight = (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2
        noise = _tile(torch.randn([rows, x.shape[1]], device=x.device, generator=generator), repeat) * sigma
        denoised = model(x + noise, sigma.flatten())
        return weight * (denoised - x) ** 2

    @torch.no_grad()
    def sample(self, base, aux, omega, rows: int, dim: int, generator: torch.Generator,
               repeat: int = 1) -> torch.Tensor:
        """`rows` Heun samples per block ([repeat * rows, dim]), D = (1 + w) D_base - w D_aux."""
        latents, net = _start(base, aux, omega, rows, dim, generator, repeat)

        def denoiser(x, sigma, class_labels=None):
            return net(x, sigma)
        x, _ = heun_sample(denoiser, latents, self.sampler())
        return x

    def settings(self) -> dict:
        return asdict(self)


def cosine_abar(steps: int, s: float) -> torch.Tensor:
    """Nichol-Dhariwal cosine abar_t, t = 0..steps-1, divided by its t = 0 value (float32 as the notebook)."""
    t = torch.arange(steps, dtype=torch.float32)
    f = torch.cos((t / steps + s) / (1 + s) * math.pi / 2) ** 2
    return f / f[0]


@dataclass
class DDPMRecipe:
    """albarji/toy-diffusion's DDPM: eps-prediction MLP on [x, t], cosine schedule, ancestral sampling."""
    hidden: int = 64
    depth: int = 4
    activation: str = "relu"
    steps: int = 40              # T; sampling runs t = T-1..1: 39 network calls
    s: float = 0.008             # cosine schedule offset
    name: str = "toy-diffusion"

    def __post_init__(self):
        if self.steps < 2:
            raise UserError(f"toy-diffusion needs at least 2 diffusion steps (got {self.steps}).")
        abar = cosine_abar(self.steps, self.s)
        self._abar = abar
        self._betas = 1 - abar / torch.cat([abar[:1], abar[:-1]])   # beta_0 = 0 since abar_0 = 1
        self._alphas = 1 - self._betas

    def for_world(self, world) -> "DDPMRecipe":
        return self  # the notebook trains on the data as given (no scaling)

    @property
    def nfe(self) -> int:
        return self.steps - 1

    def new_model(self, runs: int, dim: int, generator: torch.Generator):
        return _mlp(runs, dim, self, generator)

    def loss(self, model, x: torch.Tensor, generator: torch.Generator, repeat: int = 1) -> torch.Tensor:
        """(eps_hat(x_t, t) - eps)^2 per element, t uniform in 0..T-1 (the notebook's draw order)."""
        rows = x.shape[0] // repeat
        t = _tile(torch.randint(0, self.steps, (rows, 1), generator=generator, device=x.device), repeat)
        eps = _tile(torch.randn([rows, x.shape[1]], generator=generator, device=x.device), repeat)
        abar = self._abar.to(x.device)[t]
        noised = abar.sqrt() * x + (1 - abar).sqrt() * eps
        return (model(noised, t.to(x.dtype)) - eps) ** 2

    @torch.no_grad()
    def sample(self, base, aux, omega, rows: int, dim: int, generator: torch.Generator,
               repeat: int = 1) -> torch.Tensor:
        """Ancestral DDPM (Ho et al. Alg. 2, sigma_t^2 = beta_t), eps = (1 + w) eps_base - w eps_aux."""
        x, net = _start(base, aux, omega, rows, dim, generator, repeat)
        alphas, abar, betas = (v.to(x.device) for v in (self._alphas, self._abar, self._betas))
        for t in range(self.steps - 1, 0, -1):
            tt = torch.full((x.shape[0],), float(t), device=x.device)
            eps = net(x, tt)
            x = 1 / alphas[t] ** 0.5 * (x - (1 - alphas[t]) / (1 - abar[t]) ** 0.5 * eps)
            if t > 1:
                z = _tile(torch.randn(rows, dim, generator=generator, device=generator.device), repeat)
                x = x + betas[t] ** 0.5 * z.to(x.device)
        return x

    def settings(self) -> dict:
        return asdict(self)


RECIPES = {"toy-diffusion": DDPMRecipe, "edm": EDMRecipe}
DEFAULT_RECIPE = "toy-diffusion"


def make_recipe(name: str, **kwargs):
    """Recipe by name; kwargs that the recipe does not have are refused."""
    if name not in RECIPES:
        raise UserError(f"Unknown recipe '{name}'; choose one of {sorted(RECIPES)}.")
    return RECIPES[name](**kwargs)

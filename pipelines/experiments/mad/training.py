"""Batched training and sampling of many independent 2-D diffusion models, for any recipe.

R runs with N points each are one flat batch of R*N rows (run-major); `BatchedMLP` evaluates
each run with its own weights, the recipe's loss gives one value per element and the loss
is the sum over runs of each run's mean, so a single Adam step trains every run exactly as
it would be trained alone (Adam acts per parameter element). Training follows the paper's
toy recipe in epochs: Adam, lr 1e-3 (constant), batch 2048, so on <= 2048 points an epoch is
one full-batch step (base 100 epochs = 100 steps; auxiliary fine-tune 50 epochs on n_s = 2000).

`repeat = B` stacks B blocks of R runs that share every random draw (see recipes.py): a
sweep trains all omegas of one |D_s| in one batch, block b bit for bit the loop run alone.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ...errors import UserError
from .recipes import EDMRecipe, _tile, batched_mlp

ToyDiffusion = EDMRecipe  # the earlier name of the EDM recipe


@dataclass
class TrainConfig:
    """Epoch-based recipe (the paper's toy model: Adam lr 1e-3, batch 2048)."""
    epochs: int = 100
    batch_size: int = 2048
    lr: float = 1e-3

    def __post_init__(self):
        if self.epochs < 0 or self.batch_size < 1 or not self.lr > 0:
            raise UserError(f"Training needs epochs >= 0, batch_size >= 1, lr > 0 (got {self}).")


def new_denoiser(runs: int, dim: int, recipe, generator: torch.Generator):
    """`runs` freshly initialised 2-D models of the recipe (weights drawn on the CPU)."""
    return recipe.new_model(runs, dim, generator)


def tile_model(model, blocks: int):
    """B block-major copies of a model's R runs (a model of B*R runs)."""
    if blocks == 1:
        return model
    mlp = batched_mlp(model)
    tiled = mlp.subset(torch.arange(mlp.runs).repeat(blocks))
    if model is mlp:
        return tiled
    out = copy.deepcopy(model)  # the wrapper (preconditioning) around the tiled network
    out.model = tiled
    return out


def _epoch_batches(runs: int, n: int, batch_size: int, generator: torch.Generator, repeat: int):
    """Index tensors [R, b] of one epoch: a fresh permutation per run, cut into batches."""
    if n <= batch_size:  # one full batch; order does not matter to a full-batch step
        yield None
        return
    perm = torch.argsort(torch.rand(runs // repeat, n, generator=generator, device=generator.device), dim=1)
    perm = _tile(perm, repeat)
    for start in range(0, n, batch_size):
        yield perm[:, start:start + batch_size]


def train_runs(net, data: torch.Tensor, cfg: TrainConfig, recipe, generator: torch.Generator,
               repeat: int = 1) -> list[float]:
    """Train every run on its own points data[r] ([R, N, d]) in place; returns mean loss per epoch."""
    runs, n, dim = data.shape
    if runs != batched_mlp(net).runs or runs % repeat:
        raise ValueError(f"data holds {runs} runs but the model has {batched_mlp(net).runs} "
                         f"(or they do not split into {repeat} blocks).")
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    history = []
    net.train()
    for _ in range(cfg.epochs):
        total, steps = 0.0, 0
        for idx in _epoch_batches(runs, n, cfg.batch_size, generator, repeat):
            batch = data if idx is None else torch.gather(data, 1, idx[..., None].expand(-1, -1, dim))
            # run-major rows; the recipe tiles one block's draws over the blocks
            per_elem = recipe.loss(net, batch.reshape(-1, dim), generator, repeat)
            # Sum over runs of each run's mean: run r's gradient is that of training it alone.
            loss = per_elem.reshape(runs, -1).mean(1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() / runs
            steps += 1
        history.append(total / max(steps, 1))
    net.eval()
    return [float(h) for h in history]  # one device sync at the end, not one per step


def finetune_copy(base, data: torch.Tensor, cfg: TrainConfig, recipe, generator: torch.Generator,
                  repeat: int = 1):
    """SIMS Alg. 1 step 3: a copy of the base fine-tuned on its own samples (fresh Adam state)."""
    aux = copy.deepcopy(base)
    train_runs(aux, data, cfg, recipe, generator, repeat)
    return aux


def sample_runs(model, runs: int, n: int, dim: int, recipe, generator: torch.Generator,
                repeat: int = 1) -> torch.Tensor:
    """n samples per run from a batched model: [R, n, d]."""
    return sims_sample(model, None, 0.0, n, recipe, generator, repeat)


def sims_sample(base, aux, omega, n: int, recipe, generator: torch.Generator, repeat: int = 1) -> torch.Tensor:
    """Samples of (1 + omega) base - omega aux for every run: [R, n, d].

    omega: a float, or one value per block when `repeat` > 1 (0 = the base alone, exactly).
    """
    mlp = batched_mlp(base)
    runs, dim = mlp.runs, mlp.config.dim
    x = recipe.sample(base, aux, omega, (runs // repeat) * n, dim, generator, repeat)
    return x.reshape(runs, n, dim)

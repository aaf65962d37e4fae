"""Self-consuming loops (SIMS Sec. 4.2; Alemohammad et al.) with R independent runs at once.

Generation t trains a fresh model on D^t and draws the generation's synthetic data from it:
- 'augment' (synthetic augmentation): D^t = D_r u D_s^{t-1};
- 'synthetic' (fully synthetic): D^t = D_s^{t-1};
- 'fresh' (fresh data): D^t = D_r^t u D_s^{t-1}, D_r^t a new real sample each generation.
D^1 = D_r in every loop. 'standard' training samples the base; 'sims' also fine-tunes a copy
of the base on n_s of its own samples (the auxiliary model) and draws the generation's data
with D = (1 + omega) D_base - omega D_aux. Each generation's output has max(|D_s|, n_eval)
points per run: D_s^t is its first |D_s| points, the distances use it all.

Randomness: one torch generator per (seed, generation, purpose); the auxiliary model has its
own streams, so SIMS with omega = 0 reproduces standard training bit for bit.

Blocks: a runner may hold several omegas at once (one block of R runs per omega, all
sharing D_r and every random draw), so one sweep size is one batch of B*R models: the
per-generation work is a few large launches instead of one loop per omega. Block b equals
the loop of R runs at omega_b run alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import torch

from ...errors import UserError
from .distance import OTPool, gaussian_w2_runs
from .recipes import DDPMRecipe
from .training import TrainConfig, finetune_copy, new_denoiser, sample_runs, sims_sample, tile_model, train_runs

LOOPS = ("augment", "synthetic", "fresh")
TRAININGS = ("standard", "sims")

# purposes of the random streams (part of the seed of each generator)
REAL, REF, INIT, TRAIN, AUX_SET, AUX_TRAIN, OUT, FRESH = range(8)


def stream(seed: int, generation: int, purpose: int, device="cpu") -> torch.Generator:
    """Independent generator for one (seed, generation, purpose)."""
    state = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(generation), int(purpose)))
    return torch.Generator(device).manual_seed(int(state.generate_state(1, dtype=np.uint64)[0] >> 1))


@dataclass
class LoopConfig:
    """One loop of R runs (defaults: the paper's Fig. 4 settings)."""
    loop: str = "augment"
    training: str = "sims"
    omega: float = 0.0
    runs: int = 100
    generations: int = 100
    n_real: int = 1000          # |D_r|
    n_syn: int = 1000           # |D_s^t|
    n_aux: int = 2000           # n_s: samples the auxiliary model is fine-tuned on
    n_eval: int = 1000          # points drawn per generation and run (>= n_syn)
    ot_points: int = 500        # points per side of each exact OT problem
    ot_workers: int = 0         # processes for the exact OT (0: in this process, one problem after another)
    ot_runs: int = 0            # runs (per omega) whose exact OT is computed; 0: all (Gaussian W2: always all)
    seed: int = 0
    device: str = "cpu"         # training/sampling device; data and latents are drawn on the CPU
    base: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=100))
    aux: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=50))
    diffusion: object = field(default_factory=DDPMRecipe)   # a recipe (recipes.py)

    def __post_init__(self):
        if self.loop not in LOOPS:
            raise UserError(f"Unknown loop '{self.loop}'; choose one of {LOOPS}.")
        if self.training not in TRAININGS:
            raise UserError(f"Unknown training '{self.training}'; choose one of {TRAININGS}.")
        if self.ot_workers < 0:
            raise UserError(f"ot_workers must be >= 0 (got {self.ot_workers}).")
        if not 0 <= self.ot_runs <= self.runs:
            raise UserError(f"ot_runs must lie in 0..runs ({self.runs}; 0 = all) (got {self.ot_runs}).")
        for name in ("runs", "generations", "n_real", "n_syn", "n_aux", "n_eval", "ot_points"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1 (got {getattr(self, name)}).")
        if self.ot_points > self.n_out:
            raise UserError(f"ot_points ({self.ot_points}) cannot exceed the points drawn per generation "
                            f"({self.n_out}); lower ot_points or raise n_eval.")
        if self.training == "standard" and self.omega != 0:
            raise UserError("Standard training has no auxiliary model: use omega 0 or training 'sims'.")

    @property
    def n_out(self) -> int:
        return max(self.n_syn, self.n_eval)


def sims_sweep(loop: LoopConfig, omegas) -> tuple[LoopConfig, list[float]]:
    """For a study that draws one loop's models at several omegas: the loop trains an auxiliary
    (SIMS; omega is chosen per draw), and the omegas, sorted, include 0 (the standard reference)."""
    return replace(loop, training="sims", omega=0.0), sorted({float(o) for o in omegas} | {0.0})


@dataclass
class Generation:
    """What generation t produced: its models and its output points [B*R, n_out, d]."""
    t: int
    base: torch.nn.Module
    aux: torch.nn.Module | None
    out: torch.Tensor


@dataclass
class LoopResult:
    """Distances per generation and run ([G, R]; exact OT [G, ot_runs] when set), both views."""
    config: LoopConfig
    w2_ot: np.ndarray
    w2_gauss: np.ndarray


class LoopRunner:
    """Holds a loop's real data and reference sample; runs generations one by one.

    `omegas` (default: the config's one omega) gives one block of R runs per value.
    """

    def __init__(self, cfg: LoopConfig, world, omegas: Sequence[float] | None = None):
        self.cfg, self.world = cfg, world
        self.omegas = [float(o) for o in omegas] if omegas is not None else [float(cfg.omega)]
        if cfg.training == "standard" and any(self.omegas):
            raise UserError("Standard training has no auxiliary model: use omega 0 or training 'sims'.")
        self.blocks = len(self.omegas)
        self.diff = cfg.diffusion.for_world(world)
        self.device = torch.device(cfg.device)
        real = world.sample(cfg.runs, cfg.n_real, stream(cfg.seed, 0, REAL))[0]
        self.real = real.repeat(self.blocks, 1, 1).to(self.device)
        self.ref, _ = world.sample(cfg.runs, cfg.ot_points, stream(cfg.seed, 0, REF))
        self.true_mean, self.true_cov = world.moments()

    @property
    def omega(self):
        """The guidance argument of the samplers: a float for one block, else one value per block."""
        return self.omegas[0] if self.blocks == 1 else self.omegas

    def gen(self, t: int, purpose: int) -> torch.Generator:
        return stream(self.cfg.seed, t, purpose, self.device)

    def training_data(self, t: int, previous: torch.Tensor | None) -> torch.Tensor:
        """D^t for this loop ([B*R, N, d]); `previous` is D_s^{t-1} (None at t = 1)."""
        if t == 1:
            return self.real
        if self.cfg.loop == "augment":
            return torch.cat([self.real, previous], 1)
        if self.cfg.loop == "synthetic":
            return previous
        fresh, _ = self.world.sample(self.cfg.runs, self.cfg.n_real, stream(self.cfg.seed, t, FRESH))
        return torch.cat([fresh.repeat(self.blocks, 1, 1).to(self.device), previous], 1)

    def train_generation(self, t: int, data: torch.Tensor, with_aux: bool):
        """Base on D^t and, for SIMS, the auxiliary model fine-tuned on n_s base samples."""
        cfg, dim, b = self.cfg, data.shape[-1], self.blocks
        base = tile_model(new_denoiser(cfg.runs, dim, self.diff, stream(cfg.seed, t, INIT)).to(self.device), b)
        train_runs(base, data, cfg.base, self.diff, self.gen(t, TRAIN), repeat=b)
        aux = None
        if with_aux:
            synth = sample_runs(base, b * cfg.runs, cfg.n_aux, dim, self.diff, self.gen(t, AUX_SET), repeat=b)
            aux = finetune_copy(base, synth, cfg.aux, self.diff, self.gen(t, AUX_TRAIN), repeat=b)
        return base, aux

    def draw(self, t: int, base, aux, omega) -> torch.Tensor:
        """The generation's output with guidance omega (same latents for every omega and block)."""
        return sims_sample(base, aux, omega, self.cfg.n_out, self.diff, self.gen(t, OUT), repeat=self.blocks)

    def generation(self, t: int, previous: torch.Tensor | None) -> Generation:
        """Train generation t on D^t and draw its output."""
        base, aux = self.train_generation(t, self.training_data(t, previous), self.cfg.training == "sims")
        return Generation(t, base, aux, self.draw(t, base, aux, self.omega))

    def distances(self, out: torch.Tensor, pool: OTPool | None = None):
        """(exact-OT W2 on ot_points per side, closed-form Gaussian W2 on all points), per run.

        With a pool the exact-OT part is a handle (`.result()`), computed while the caller goes on.
        """
        k, r = self.cfg.ot_points, self.cfg.runs
        kr = self.ot_runs
        out = out.cpu()
        gauss = gaussian_w2_runs(out, self.true_mean, self.true_cov)
        blocks = out.shape[0] // r
        sel = out.reshape(blocks, r, *out.shape[1:])[:, :kr, :k].reshape(blocks * kr, k, -1)
        ref = self.ref[:kr].repeat(blocks, 1, 1)
        if pool is None:
            with OTPool(self.cfg.ot_workers) as p:
                return p.submit(sel, ref).result(), gauss
        return pool.submit(sel, ref), gauss

    @property
    def ot_runs(self) -> int:
        """Runs per block with an exact-OT distance (the first ones)."""
        return self.cfg.ot_runs or self.cfg.runs

    def run_blocks(self, first: Generation | None = None, progress: Callable[[int], None] | None = None,
                   on_generation: Callable[[list[LoopResult]], None] | None = None) -> list[LoopResult]:
        """All generations of every block; `first` reuses an already drawn generation 1.

        `on_generation` gets the blocks' results so far after each generation (for partial
        reports of long runs); it waits for that generation's exact-OT values.
        """
        cfg = self.cfg
        w_ot, w_g = [], []
        previous = None
        with OTPool(cfg.ot_workers) as pool:
            for t in range(1, cfg.generations + 1):
                gen = first if (t == 1 and first is not None) else self.generation(t, previous)
                d_ot, d_g = self.distances(gen.out, pool)
                w_ot.append(d_ot)
                w_g.append(d_g)
                previous = gen.out[:, :cfg.n_syn]
                if progress is not None:
                    progress(t)
                if on_generation is not None:
                    on_generation(self._split(np.stack([d.result() for d in w_ot]), np.stack(w_g)))
            return self._split(np.stack([d.result() for d in w_ot]), np.stack(w_g))

    def _split(self, w_ot: np.ndarray, w_g: np.ndarray) -> list[LoopResult]:
        """[G, B*R] distances -> one LoopResult per block."""
        r, kr, cfg = self.cfg.runs, self.ot_runs, self.cfg
        return [LoopResult(replace(cfg, omega=o, training="sims" if o else cfg.training, generations=len(w_ot)),
                           w_ot[:, i * kr:(i + 1) * kr], w_g[:, i * r:(i + 1) * r])
                for i, o in enumerate(self.omegas)]

    def run(self, first: Generation | None = None,
            progress: Callable[[int], None] | None = None) -> LoopResult:
        """All generations of a one-block loop."""
        if self.blocks != 1:
            raise ValueError("run() is for one omega; use run_blocks() for several.")
        return self.run_blocks(first, progress)[0]


def run_loop(cfg: LoopConfig, world, progress=None) -> LoopResult:
    """Run one loop from scratch."""
    return LoopRunner(cfg, world).run(progress=progress)

"""2-D distribution shift (SIMS Sec. 4.3 in miniature) on the labelled mixture world.

Per run: a base model on D_r; a pool of base samples labelled by the world's Bayes classifier
(the stand-in for an attribute classifier); an auxiliary set S of n_s pool points with a
chosen group mix; the auxiliary model fine-tuned on S; then samples at each omega. SIMS
pushes the generated mix away from S's mix. Quality is read per group (Gaussian W2 of each
group's samples against that component), beside the group fractions: a shifted mix alone
would move a whole-distribution distance.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ...errors import UserError
from .distance import fitted_moments, gaussian_w2
from .loops import AUX_TRAIN, LoopConfig, LoopRunner, sims_sweep, stream
from .training import finetune_copy, sample_runs
from .worlds import MixtureWorld

POOL = 21  # random-stream purpose: the labelled pool of base samples


@dataclass
class ShiftConfig:
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(runs=20))
    aux_mix: Sequence[float] = (0.3, 0.7)       # group shares of S, in the world's group order
    omegas: Sequence[float] = (-1.0, 0.0, 1.0, 2.0)
    pool_factor: int = 4                        # pool = pool_factor * n_s base samples per run

    def __post_init__(self):
        mix = np.asarray(self.aux_mix, dtype=float)
        if (mix < 0).any() or abs(mix.sum() - 1) > 1e-6:
            raise UserError(f"aux_mix must be shares >= 0 summing to 1 (got {list(self.aux_mix)}).")
        self.loop, self.omegas = sims_sweep(self.loop, self.omegas)


def select_mix(points: torch.Tensor, labels: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """Per run, the first counts[g] points of each group g: [R, sum(counts), d]."""
    out = []
    for r in range(points.shape[0]):
        idx = []
        for g, k in enumerate(counts):
            found = torch.nonzero(labels[r] == g).flatten()
            if len(found) < k:
                raise UserError(f"Run {r}: the base produced {len(found)} group-{g} points, {k} needed for the "
                                f"auxiliary mix; raise pool_factor or choose a milder mix.")
            idx.append(found[:k])
        out.append(points[r, torch.cat(idx)])
    return torch.stack(out)


def _group_stats(world: MixtureWorld, x: torch.Tensor) -> dict:
    labels = world.classify(x)
    fractions = [float((labels == g).double().mean()) for g in range(len(world.groups))]
    quality = []
    for g in range(len(world.groups)):
        per_run = []
        for r in range(x.shape[0]):
            pts = x[r, labels[r] == g]
            if len(pts) > 2:
                mean, cov = fitted_moments(pts[None])
                per_run.append(float(gaussian_w2(mean[0], cov[0], *world.component(g))))
        quality.append(float(np.mean(per_run)) if per_run else None)
    return {"fractions": dict(zip(world.groups, fractions)), "group_w2_gauss": dict(zip(world.groups, quality))}


def run_shift(cfg: ShiftConfig, world: MixtureWorld) -> dict:
    """Group fractions and per-group quality of the generated points at each omega."""
    if not isinstance(world, MixtureWorld):
        raise UserError("The shift study needs a labelled world: use --world mixture.")
    if len(cfg.aux_mix) != len(world.groups):
        raise UserError(f"aux_mix has {len(cfg.aux_mix)} shares but the world has groups {world.groups}.")
    lc = cfg.loop
    runner = LoopRunner(lc, world)
    base, _ = runner.train_generation(1, runner.real, with_aux=False)
    pool = sample_runs(base, lc.runs, cfg.pool_factor * lc.n_aux, world.dim, runner.diff, stream(lc.seed, 1, POOL))
    counts = np.floor(np.asarray(cfg.aux_mix) * lc.n_aux).astype(int)
    counts[np.argmax(cfg.aux_mix)] += lc.n_aux - counts.sum()  # shares that do not divide n_s exactly
    synth = select_mix(pool, world.classify(pool.cpu()), counts.tolist()).to(pool.device)
    aux = finetune_copy(base, synth, lc.aux, runner.diff, stream(lc.seed, 1, AUX_TRAIN, runner.device))
    base_mix = _group_stats(world, pool.cpu())["fractions"]
    rows = [{"omega": o, **_group_stats(world, runner.draw(1, base, aux, o).cpu())} for o in cfg.omegas]
    return {"groups": world.groups, "real_weights": list(world.weights), "base_pool_fractions": base_mix,
            "aux_mix": dict(zip(world.groups, map(float, cfg.aux_mix))), "rows": rows,
            "config": {"runs": lc.runs, "n_real": lc.n_real, "n_s": lc.n_aux, "n_eval": lc.n_eval,
                       "base_epochs": lc.base.epochs, "aux_epochs": lc.aux.epochs, "seed": lc.seed}}


def shift_table(report: dict) -> str:
    """Markdown: generated group fractions and per-group Gaussian W2 at each omega."""
    groups = report["groups"]
    head = " | ".join(f"{g} share" for g in groups) + " | " + " | ".join(f"{g} W2" for g in groups)
    lines = [f"| ω | {head} |", "|" + "---|" * (1 + 2 * len(groups))]
    for row in report["rows"]:
        shares = " | ".join(f"{row['fractions'][g]:.3f}" for g in groups)
        q = " | ".join("-" if row["group_w2_gauss"][g] is None else f"{row['group_w2_gauss'][g]:.3f}" for g in groups)
        lines.append(f"| {row['omega']:g} | {shares} | {q} |")
    return "\n".join(lines)

"""The paper's Fig. 4 sweep: loops over |D_s^t| x omega sharing one generation 1, and its summary.

Generation 1 trains on D_r alone, so its base and auxiliary models are the same for every
|D_s| and omega: they are trained once, and each (|D_s|, omega) loop starts from that
generation's output drawn with its omega (the same latents for every omega, so the
generation-1 curve over omega is free of sampling noise between omegas). omega = 0 runs as
standard training (no auxiliary model), which SIMS with omega = 0 reproduces bit for bit. All
omegas of one |D_s| run as blocks of one batch (loops.py), each equal to its loop run alone.
Ratios are E[dist(G^t)] / E[dist(G^1)], expectations over runs; G^inf averages generations
`converged_from`..G as the paper (20..100).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import torch

from ...errors import UserError
from .loops import Generation, LoopConfig, LoopResult, LoopRunner

METRICS = ("w2_ot", "w2_gauss")


@dataclass
class SweepConfig:
    """A Fig. 4 sweep: one loop setting, several |D_s^t| and omegas."""
    loop: LoopConfig = field(default_factory=LoopConfig)
    sizes: Sequence[int] = (125, 250, 500, 1000)
    omegas: Sequence[float] = (0.0, 1.0, 2.0, 3.0, 4.0)
    gen1_omegas: Sequence[float] = ()     # extra omegas for the generation-1 curve only (sampling only)
    converged_from: int = 20

    def __post_init__(self):
        self.sizes = sorted({int(s) for s in self.sizes})
        self.omegas = sorted({float(o) for o in self.omegas})
        self.gen1_omegas = sorted(set(self.omegas) | {float(o) for o in self.gen1_omegas})
        if not self.sizes or self.sizes[0] < 1:
            raise UserError(f"sizes must be positive integers (got {self.sizes}).")
        if 0.0 not in self.omegas:
            raise UserError("The omega grid must include 0 (standard training, the reference of the table).")
        if self.loop.n_eval < self.sizes[-1]:
            raise UserError(f"n_eval ({self.loop.n_eval}) must be >= the largest |D_s| ({self.sizes[-1]}) so "
                            f"that every loop shares generation 1's output.")
        if not 2 <= self.converged_from <= self.loop.generations:
            raise UserError(f"converged_from ({self.converged_from}) must lie in 2..generations "
                            f"({self.loop.generations}); the paper averages generations 20..100.")

    def loop_config(self, n_syn: int, omega: float) -> LoopConfig:
        """The loop of one grid point (omega 0 = standard training)."""
        training = "standard" if omega == 0 else "sims"
        return replace(self.loop, n_syn=n_syn, omega=omega, training=training)


@dataclass
class SweepResult:
    config: SweepConfig
    gen1: dict[float, dict[str, np.ndarray]]           # omega -> metric -> [R]
    loops: dict[tuple[int, float], LoopResult]          # (|D_s|, omega) -> result


def run_sweep(cfg: SweepConfig, world, progress: Callable[[str], None] | None = None,
              on_partial: Callable[["SweepResult"], None] | None = None) -> SweepResult:
    """Train generation 1 once, then, per |D_s|, every omega's loop as one batch of blocks.

    `on_partial` gets, after each generation of the |D_s| in progress, a result holding the
    sizes done and that size's generations so far, with G^inf over the later half of them.
    """
    first_cfg = replace(cfg.loop, n_syn=cfg.sizes[-1], training="sims", omega=0.0)
    runner = LoopRunner(first_cfg, world)
    needs_aux = any(cfg.gen1_omegas)
    base, aux = runner.train_generation(1, runner.real, with_aux=needs_aux)
    outs, gen1 = {}, {}
    for omega in cfg.gen1_omegas:
        outs[omega] = runner.draw(1, base, aux, omega)
        d_ot, d_g = runner.distances(outs[omega])
        gen1[omega] = {"w2_ot": d_ot, "w2_gauss": d_g}
    if progress is not None:
        progress("generation 1")
    loops = {}
    sims = any(cfg.omegas)
    for size in cfg.sizes:
        loop_cfg = replace(cfg.loop, n_syn=size, omega=0.0, training="sims" if sims else "standard")
        # generation 1's models are not used again: the loops only need its output, one block per omega
        first = Generation(1, base, aux, torch.cat([outs[o] for o in cfg.omegas]))
        step = (lambda t, s=size: progress(f"|D_s|={s} t={t}")) if progress else None

        def partial(results, size=size):
            if on_partial is None or len(results[0].w2_ot) < 2:
                return
            t = len(results[0].w2_ot)
            part = replace(cfg, loop=replace(cfg.loop, generations=t), converged_from=t // 2 + 1,
                           sizes=[x for x in cfg.sizes if x <= size])  # sizes run in ascending order
            on_partial(SweepResult(part, gen1, {**loops, **{(size, o): r for o, r in zip(cfg.omegas, results)}}))
        results = LoopRunner(loop_cfg, world, cfg.omegas).run_blocks(first=first, progress=step,
                                                                     on_generation=partial)
        for omega, res in zip(cfg.omegas, results):
            loops[(size, omega)] = res
    return SweepResult(cfg, gen1, loops)


def ratio_curve(dist: np.ndarray) -> np.ndarray:
    """E[dist(G^t)] / E[dist(G^1)] for t = 1..G from per-run distances [G, R]."""
    mean = dist.mean(1)
    return mean / mean[0]


def converged_ratio(dist: np.ndarray, converged_from: int) -> float:
    """E[dist(G^inf)] / E[dist(G^1)], G^inf = mean over generations converged_from..G."""
    mean = dist.mean(1)
    return float(mean[converged_from - 1:].mean() / mean[0])


def bootstrap_se(dist: np.ndarray, converged_from: int, draws: int = 500, seed: int = 0) -> float:
    """Standard error of the converged ratio from resampling runs with replacement."""
    rng = np.random.default_rng(seed)
    runs = dist.shape[1]
    if runs < 2:
        return float("nan")
    stats = [converged_ratio(dist[:, rng.integers(0, runs, runs)], converged_from) for _ in range(draws)]
    return float(np.std(stats, ddof=1))


def summarize(result: SweepResult, metric: str = "w2_ot") -> dict:
    """Converged ratios per (|D_s|, omega), best omega per size and the Fig. 4 table rows."""
    if metric not in METRICS:
        raise UserError(f"Unknown metric '{metric}'; choose one of {METRICS}.")
    cfg = result.config
    cells = {}
    for (size, omega), res in result.loops.items():
        dist = getattr(res, metric)
        cells[(size, omega)] = {"ratio": converged_ratio(dist, cfg.converged_from),
                                "se": bootstrap_se(dist, cfg.converged_from),
                                "curve": ratio_curve(dist)}
    table = []
    for size in cfg.sizes:
        sims = {o: cells[(size, o)] for o in cfg.omegas if o != 0}
        best = min(sims, key=lambda o: sims[o]["ratio"]) if sims else None
        table.append({"n_syn": size,
                      "standard": cells[(size, 0.0)]["ratio"], "standard_se": cells[(size, 0.0)]["se"],
                      "sims_best": sims[best]["ratio"] if best is not None else None,
                      "sims_best_se": sims[best]["se"] if best is not None else None,
                      "best_omega": best})
    gen1 = {o: float(v[metric].mean()) for o, v in result.gen1.items()}
    return {"metric": metric, "cells": cells, "table": table, "gen1": gen1}

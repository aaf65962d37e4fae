"""Polluted-data study (SIMS Sec. 4.2.2, Fig. 5 analogue) with many runs at once.

Four models per run, as |D_p| (synthetic points polluting the real set) grows:
- G_ST-I^1: standard training on D_r; its samples are the pollution D_p;
- G_SIMS-I^1: SIMS on top of G_ST-I^1 (auxiliary fine-tuned on n_s of its samples);
- G_ST-P^2: standard training from scratch on D_r u D_p;
- G_SIMS-P^2: SIMS with G_ST-P^2 as the base.
SIMS rows are reported per omega and at the best omega (the paper reports the best FID over
omega and budget). Every |D_p| uses the same initialisation and noise streams, so the curve
over |D_p| compares like with like.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ...errors import UserError
from .distance import mean_se
from .loops import LoopConfig, LoopRunner, sims_sweep, stream
from .training import sample_runs

POLLUTE = 20  # random-stream purpose: drawing D_p from G_ST-I^1


@dataclass
class PollutionConfig:
    loop: LoopConfig = field(default_factory=LoopConfig)
    pollution: Sequence[int] = (0, 250, 500, 1000, 2000)
    omegas: Sequence[float] = (0.0, 1.0, 2.0, 3.0)

    def __post_init__(self):
        self.pollution = sorted({int(p) for p in self.pollution})
        if self.pollution[0] < 0:
            raise UserError(f"|D_p| values must be >= 0 (got {self.pollution}).")
        self.loop, self.omegas = sims_sweep(self.loop, self.omegas)


def _both(runner: LoopRunner, out: torch.Tensor) -> dict:
    d_ot, d_g = runner.distances(out)
    ot = mean_se(d_ot)
    return {"w2_ot": ot["mean"], "w2_gauss": float(d_g.mean()), "w2_ot_se": ot["se"]}


def _sims_rows(runner: LoopRunner, t: int, base, aux, omegas) -> dict:
    return {f"{o:g}": _both(runner, runner.draw(t, base, aux, o)) for o in omegas}


def _best(rows: dict, metric: str) -> tuple[str, dict]:
    return min(rows.items(), key=lambda kv: kv[1][metric])


def run_pollution(cfg: PollutionConfig, world) -> dict:
    """E[dist] of the four scenarios per |D_p| (both distance views), JSON-ready."""
    runner = LoopRunner(cfg.loop, world)
    base1, aux1 = runner.train_generation(1, runner.real, with_aux=True)
    sims_i = _sims_rows(runner, 1, base1, aux1, cfg.omegas)
    st_i = sims_i["0"]
    pool = sample_runs(base1, cfg.loop.runs, max(cfg.pollution[-1], 1), world.dim,
                       runner.diff, stream(cfg.loop.seed, 1, POLLUTE))
    rows = []
    for p in cfg.pollution:
        data = torch.cat([runner.real, pool[:, :p]], 1)
        base2, aux2 = runner.train_generation(2, data, with_aux=True)
        sims_p = _sims_rows(runner, 2, base2, aux2, cfg.omegas)
        rows.append({"n_pollution": p, "st_p": sims_p["0"], "sims_p": sims_p})
    out = {"config": {"loop": {k: v for k, v in vars(cfg.loop).items() if k not in ("base", "aux", "diffusion")},
                      "recipe": cfg.loop.diffusion.for_world(world).settings(),
                      "base_epochs": cfg.loop.base.epochs, "aux_epochs": cfg.loop.aux.epochs,
                      "pollution": list(cfg.pollution), "omegas": list(cfg.omegas)},
           "st_i": st_i, "sims_i": sims_i, "rows": rows}
    for metric in ("w2_ot", "w2_gauss"):
        om, best = _best(sims_i, metric)
        out.setdefault("best", {})[metric] = {
            "sims_i": {"omega": float(om), "value": best[metric]},
            "sims_p": [{"n_pollution": r["n_pollution"], "omega": float(_best(r["sims_p"], metric)[0]),
                        "value": _best(r["sims_p"], metric)[1][metric]} for r in rows]}
    return out


def pollution_table(report: dict, metric: str = "w2_ot") -> str:
    """Markdown table: E[dist] of G_ST-I, G_SIMS-I (best omega), G_ST-P, G_SIMS-P (best omega) per |D_p|."""
    best = report["best"][metric]
    si = best["sims_i"]
    lines = [f"| |D_p| | G_ST-I | G_SIMS-I (ω) | G_ST-P | G_SIMS-P (ω) |  ({metric})", "|---|---|---|---|---|"]
    for row, sp in zip(report["rows"], best["sims_p"]):
        lines.append(f"| {row['n_pollution']} | {report['st_i'][metric]:.4f} | {si['value']:.4f} ({si['omega']:g}) | "
                     f"{row['st_p'][metric]:.4f} | {sp['value']:.4f} ({sp['omega']:g}) |")
    return "\n".join(lines)

"""CLI: `self-improve` — SIMS self-improvement grid on the digits world (paper Table 1 / Fig. 3).

Resumable: every sample set, fine-tune and point is kept under --out and skipped when present,
so one process per base can run side by side and a last call with all bases assembles the
grid (grid.json, the heat map and a markdown table).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what} must be numbers separated by commas (got {text!r})") from None


def _bases(items) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--base takes NAME=CHECKPOINT (got {item!r})")
        name, path = item.split("=", 1)
        out[name.strip()] = path.strip()
    return out


def _augment_ps(text: str) -> list:
    """--augment-p: comma-separated numbers in [0, 1] or 'base' (None: the base's recorded recipe)."""
    out = []
    for item in [v.strip() for v in str(text).split(",") if v.strip()] or ["base"]:
        if item == "base":
            out.append(None)
            continue
        value = _floats(item, "--augment-p")[0]
        if not 0 <= value <= 1:
            raise UserError(f"--augment-p values must be in [0, 1] or 'base' (got {item!r})")
        out.append(value)
    return out


def run_self_improve(args) -> int:
    from ..demo.assets import DEMO_MODEL
    from ..experiments.mad.report import write_figures
    from ..experiments.self_improve import SelfImproveSettings, grid_table, heatmap_figure
    from ..experiments.self_improve import run_self_improve as run

    interval = _floats(args.interval, "--interval") if args.interval else None
    if interval is not None and len(interval) != 2:
        raise UserError("--interval takes SIGMA_LO,SIGMA_HI")
    settings = SelfImproveSettings(
        bases=_bases(args.base) or {"demo": str(DEMO_MODEL)}, s_sizes=[int(v) for v in _floats(args.s_sizes, "--s-sizes")],
        budgets_kimg=_floats(args.budgets, "--budgets"), omegas=_floats(args.omegas, "--omegas"),
        eval_samples=args.eval_samples, num_steps=args.steps, interval=interval, augment_p=_augment_ps(args.augment_p),
        bootstrap=args.bootstrap, floor_repeats=args.floor_repeats, batch_size=args.batch_size, seed=args.seed,
        time_limit_min=args.time_limit_min)
    grid = run(settings, args.out)
    out = Path(args.out)
    if grid["points"]:
        files = write_figures({"heatmap": heatmap_figure(grid)}, args.figure_dir or out, png=args.png,
                              prefix="self_improve_")
        grid["figures"] = files
    table = grid_table(grid)
    (out / "grid.md").write_text("\n".join(table) + "\n")
    (out / "grid.json").write_text(json.dumps(grid, indent=1))
    print("\n".join(table))
    for name, b in grid["bases"].items():
        z = b["omega0"]
        print(f"base {name}: FD-digits {z['overall']:.3f} at omega 0; the metric's floor at n={z['n']} is "
              f"{z['floor']:.3f} [{z['floor_ci'][0]:.3f}, {z['floor_ci'][1]:.3f}]")
    fl = grid.get("floors")
    if fl:
        print(f"real vs real: resampled at n={fl['n']} {fl['resampled']:.3f}; two disjoint halves of "
              f"{fl['halves_size']} {fl['disjoint_halves']:.3f}; fresh real samples of n={fl['n']} vs all "
              f"{fl['n_real']} (1/n law) {fl['independent_at_n']:.3f}")
    warnings = sorted({w for p in grid["points"] for w in p.get("warnings", [])}
                      | {w for b in grid["bases"].values() for w in b["omega0"].get("warnings", [])},
                      key=lambda w: ("overall" not in w, "half" not in w, w))  # the broadest first
    for w in warnings[:5]:
        print(f"WARNING: {w}")
    if len(warnings) > 5:
        print(f"WARNING: ... and {len(warnings) - 5} more small-sample FDs (each point's 'warnings' in grid.json)")
    for item in grid["not_run"]:
        print(f"not run: {item}")
    print(f"wrote {out / 'grid.json'} and {out / 'grid.md'}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("self-improve", help="SIMS self-improvement grid on the digits world (omega x budget x |S|)")
    p.add_argument("--base", action="append", metavar="NAME=CHECKPOINT",
                   help="a base model (repeatable; default: the bundled demo model as 'demo')")
    p.add_argument("--s-sizes", default="1000", help="sizes of S, comma-separated (default 1000)")
    p.add_argument("--budgets", default="8,32", help="auxiliary budgets in kimg (one fine-tune keeps them all)")
    p.add_argument("--omegas", default="0,1,0.5,2", help="guidance weights, run in this order; must include 0")
    p.add_argument("--eval-samples", type=int, default=2000, help="fixed seeds per point (default 2000)")
    p.add_argument("--steps", type=int, default=12, help="Heun steps (default 12, the demo sampler)")
    p.add_argument("--interval", default=None, metavar="LO,HI", help="guidance sigma interval (default: every step)")
    p.add_argument("--augment-p", default="base",
                   help="augmentation probability of the fine-tune: a number (0 = off) or 'base' (the base's "
                        "recorded recipe, the default); comma-separated runs each, e.g. base,0 for on/off")
    p.add_argument("--bootstrap", type=int, default=50, help="bootstrap draws per interval")
    p.add_argument("--floor-repeats", type=int, default=20, help="draws of the real-vs-real floor")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-limit-min", type=float, default=None,
                   help="start no new point after this many minutes (the rest is listed as not run)")
    p.add_argument("--png", default="auto", choices=["auto", "kaleido", "matplotlib", "none"])
    p.add_argument("--figure-dir", default=None, help="where the heat map goes (default: --out)")
    p.add_argument("--out", required=True, help="work folder (resumable)")
    p.set_defaults(run=run_self_improve)

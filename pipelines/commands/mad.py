"""`python -m pipelines mad`: self-consuming loops on 2-D data (the paper's Fig. 4 and Fig. 5 studies)."""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from ..errors import UserError


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 125,250 (got {text!r})")


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0,1.5,3 (got {text!r})")


def register(sub) -> None:
    p = sub.add_parser("mad", help="self-consuming loops on 2-D data: Fig. 4 sweep or Fig. 5 pollution study",
                       description="Many independent runs trained at once (batched MLPs; all omegas of one |D_s| in "
                                   "one batch). Defaults are the paper's Fig. 4 settings with the paper's recipe "
                                   "(--recipe toy-diffusion); the full scale (1000 runs x 100 generations) needs "
                                   "a GPU (--device cuda).")
    p.add_argument("--experiment", choices=["fig4", "pollution", "shift", "base-budget"], default="fig4",
                   help="fig4: loops over |D_s| x omega; pollution: Fig. 5 analogue; shift: 2-D group shift "
                        "(needs --world mixture); base-budget: generation 1 over omega for each of "
                        "--base-epochs-grid (how the gain depends on how well the base is trained)")
    p.add_argument("--recipe", choices=["toy-diffusion", "edm"], default="toy-diffusion",
                   help="toy-diffusion (default, the paper's): albarji/toy-diffusion's DDPM, T=40 cosine "
                        "schedule, eps-MLP on [x, t], ancestral sampling (39 calls); edm: EDM preconditioning "
                        "and loss around the same MLP, Heun sampling")
    p.add_argument("--world", choices=["gaussian", "mixture"], default="gaussian")
    p.add_argument("--loop", choices=["augment", "synthetic", "fresh"], default="augment",
                   help="augment: D_r u D_s^{t-1}; synthetic: D_s^{t-1}; fresh: new D_r^t u D_s^{t-1}")
    p.add_argument("--runs", type=int, default=100, help="independent runs (paper: 1000)")
    p.add_argument("--generations", type=int, default=100)
    p.add_argument("--n-real", type=int, default=1000, help="|D_r|")
    p.add_argument("--sizes", type=_ints, default=[125, 250, 500, 1000], help="|D_s^t| values (fig4)")
    p.add_argument("--omegas", type=_floats, default=[0, 1, 2, 3, 4],
                   help="omega grid, must include 0 (a negative first value needs '=': --omegas=-1,0,1)")
    p.add_argument("--gen1-omegas", type=_floats, default=[], help="extra omegas for the generation-1 curve")
    p.add_argument("--n-s", type=int, default=2000, help="samples the auxiliary model is fine-tuned on")
    p.add_argument("--n-eval", type=int, default=1000, help="points drawn per generation and run")
    p.add_argument("--ot-points", type=int, default=500, help="points per side of each exact OT problem")
    p.add_argument("--base-epochs", type=int, default=100)
    p.add_argument("--aux-epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=None,
                   help="toy-diffusion: diffusion steps T (default 40, 39 network calls); "
                        "edm: Heun steps (default 20, NFE 2*steps-1 = 39)")
    p.add_argument("--base-epochs-grid", type=_ints, default=[100, 300, 1000],
                   help="base epochs compared by --experiment base-budget")
    p.add_argument("--ot-runs", type=int, default=0,
                   help="exact OT on the first N runs of each loop only (0 = all); the Gaussian W2 always "
                        "covers every run. For the paper's scale on one machine, where the exact solver "
                        "is the slowest part")
    p.add_argument("--ot-workers", type=int, default=None,
                   help="processes for the exact OT (default: all cores but one with --device cuda, "
                        "0 = in the main process on cpu, where the cores are busy training)")
    p.add_argument("--converged-from", type=int, default=20, help="G^inf averages generations from here on")
    p.add_argument("--pollution", type=_ints, default=[0, 250, 500, 1000, 2000],
                   help="|D_p| values (pollution experiment)")
    p.add_argument("--aux-mix", type=_floats, default=[0.3, 0.7],
                   help="group shares of the auxiliary set (shift experiment), world's group order")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA when available, else cpu), cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default="out/mad", help="output folder (results.json + figures)")
    p.add_argument("--png", choices=["auto", "kaleido", "matplotlib", "none"], default="auto")
    p.add_argument("--merge", nargs="+", metavar="RESULTS_JSON",
                   help="merge results.json files of one sweep split by --sizes (or re-plot one) into --out")
    p.add_argument("--dry-run", action="store_true", help="print the resolved settings and exit")
    p.set_defaults(run=run)


def _recipe(args):
    from ..experiments.mad.recipes import make_recipe
    if args.steps is None:
        return make_recipe(args.recipe)
    if args.steps < 2:
        raise UserError(f"--steps must be >= 2 (got {args.steps}).")
    return make_recipe(args.recipe, **({"steps": args.steps} if args.recipe == "toy-diffusion"
                                       else {"num_steps": args.steps}))


def _ot_workers(args) -> int:
    import os
    if args.ot_workers is None:
        # all cores but the one driving the device; on a CPU run the cores are busy training
        return max(1, (os.cpu_count() or 1) - 1) if args.device.startswith("cuda") else 0
    if args.ot_workers < 0:
        raise UserError(f"--ot-workers must be >= 0 (got {args.ot_workers}).")
    return args.ot_workers


def _loop_config(args):
    from ..experiments.mad.loops import LoopConfig
    from ..experiments.mad.training import TrainConfig
    return LoopConfig(loop=args.loop, runs=args.runs, generations=args.generations, n_real=args.n_real,
                      n_syn=max(args.sizes), n_aux=args.n_s, n_eval=args.n_eval, ot_points=args.ot_points,
                      ot_workers=_ot_workers(args), ot_runs=args.ot_runs, seed=args.seed, device=args.device,
                      base=TrainConfig(args.base_epochs, args.batch_size, args.lr),
                      aux=TrainConfig(args.aux_epochs, args.batch_size, args.lr),
                      diffusion=_recipe(args))


def _check_device(device: str) -> str:
    """The device to run on ('auto' resolved), announced; refuses cuda on a machine without one."""
    import torch
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        print(f"device: {device} (auto: {'CUDA found' if device == 'cuda' else 'no CUDA here'})", flush=True)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for a GPU but torch sees none; use --device cpu.")
    if not (device == "cpu" or device.startswith("cuda")):
        raise UserError(f"--device must be auto, cpu or cuda[:N] (got {device!r}).")
    return device


def run(args) -> int:
    import torch
    from tqdm import tqdm
    from ..experiments.mad.worlds import make_world
    args.device = _check_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.merge:
        return _merge(args)
    world = make_world(args.world)
    if args.experiment == "pollution":
        return _run_pollution(args, world)
    if args.experiment == "shift":
        return _run_shift(args, world)
    if args.experiment == "base-budget":
        return _run_budget(args, world)
    from ..experiments.mad.fig4 import SweepConfig, run_sweep
    from ..experiments.mad.report import build_report, write_report
    cfg = SweepConfig(loop=_loop_config(args), sizes=args.sizes, omegas=args.omegas,
                      gen1_omegas=args.gen1_omegas, converged_from=args.converged_from)
    if args.dry_run:
        print(json.dumps({"world": asdict(world), "sweep": asdict(cfg)}, indent=1))
        return 0
    total = 1 + len(cfg.sizes) * cfg.loop.generations
    bar = tqdm(total=total, desc="mad fig4")

    def progress(msg):
        bar.update(1)
        bar.set_postfix_str(msg)
    t0 = time.time()
    out = Path(args.out)

    def partial(res):
        # a long run leaves a readable report behind after every generation
        out.mkdir(parents=True, exist_ok=True)
        rep = build_report(res, world, seconds=time.time() - t0)
        rep["partial"] = True
        (out / "results.partial.json").write_text(json.dumps(rep, indent=1))
    result = run_sweep(cfg, world, progress, on_partial=partial)
    bar.close()
    report = build_report(result, world, seconds=time.time() - t0)
    written = write_report(report, Path(args.out), png=args.png)
    _print_tables(report)
    print(f"\nPNG renderer: {written['png_renderer']}")
    print("wrote", *written["files"], sep="\n  ")
    return 0


def _print_tables(report: dict) -> None:
    from ..experiments.mad.report import table_markdown
    loop = report["config"]["loop"]
    for metric in ("w2_ot", "w2_gauss"):
        print(f"\n{metric}: E[dist(G^inf)]/E[dist(G^1)], {loop['runs']} runs x {loop['generations']} generations")
        print(table_markdown(report, metric))


def _merge(args) -> int:
    from ..experiments.mad.report import merge_reports, write_report
    reports = []
    for path in args.merge:
        try:
            reports.append(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"Cannot read {path}: {e}. Pass results.json files written by `mad`.") from None
    report = merge_reports(reports)
    written = write_report(report, Path(args.out), png=args.png)
    _print_tables(report)
    print("wrote", *written["files"], sep="\n  ")
    return 0


def _run_study(args, world, name: str, cfg, run, table) -> int:
    """Shared driver of the single-table studies: dry run, run, write <name>.json, print the table."""
    if args.dry_run:
        print(json.dumps({"world": asdict(world), name: asdict(cfg)}, indent=1))
        return 0
    t0 = time.time()
    report = run(cfg, world)
    report["wall_seconds"] = time.time() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=1))
    if name == "shift":
        print(f"base pool fractions: {report['base_pool_fractions']}; auxiliary mix: {report['aux_mix']}")
    print(table(report))
    print("wrote", out / f"{name}.json")
    return 0


def _run_pollution(args, world) -> int:
    from ..experiments.mad.pollution import PollutionConfig, pollution_table, run_pollution
    cfg = PollutionConfig(loop=_loop_config(args), pollution=args.pollution, omegas=args.omegas)
    return _run_study(args, world, "pollution", cfg, run_pollution, pollution_table)


def _run_shift(args, world) -> int:
    from ..experiments.mad.shift import ShiftConfig, run_shift, shift_table
    cfg = ShiftConfig(loop=_loop_config(args), aux_mix=args.aux_mix, omegas=args.omegas)
    return _run_study(args, world, "shift", cfg, run_shift, shift_table)


def _run_budget(args, world) -> int:
    from ..experiments.mad.budget import BudgetConfig, budget_table, run_budget
    cfg = BudgetConfig(loop=_loop_config(args), base_epochs=args.base_epochs_grid,
                       omegas=sorted(set(args.omegas) | set(args.gen1_omegas)))
    return _run_study(args, world, "base_budget", cfg, run_budget, budget_table)

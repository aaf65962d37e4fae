"""Unit costs of the batched 2-D loops and the projected time of the paper's full Fig. 4 scale.

The full scale is 1000 runs x 100 generations x |D_s| in {125, 250, 500, 1000} x omega in
{0, 1, 2, 3, 4}. A sweep runs each |D_s| as one batch of 5 omega blocks x 1000 runs, so one
generation of one size is: base training (100 full-batch steps on |D_r| + |D_s| rows per
run), the auxiliary set (n_s = 2000 samples per run), the auxiliary fine-tune (50 steps on
2000 rows), the generation's output (n_eval = 1000 rows, base and auxiliary per call) and
one exact-OT problem per run, which a process pool solves while the device trains the next
generation.

Part B measures, on the chosen device and at a batch like the full scale's (5000 models
with --device cuda; fewer on a CPU, scaled linearly), the cost per training row-step and per
sampled row per network call, and the exact-OT throughput of the process pool; part C
projects the full scale from them. Part A (optional) compares the batched loop with a loop
over runs on the same work.

    python bench/mad.py --device cuda            # GPU: unit costs at 5000 models, projection
    python bench/mad.py --device cpu             # CPU: smaller batch, same projection
    python bench/mad.py --device cpu --per-run   # + batched vs per-run loop (part A)
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.experiments.mad.distance import OTPool  # noqa: E402
from pipelines.experiments.mad.loops import LoopConfig, run_loop  # noqa: E402
from pipelines.experiments.mad.recipes import make_recipe  # noqa: E402
from pipelines.experiments.mad.training import TrainConfig, new_denoiser, sample_runs, train_runs  # noqa: E402
from pipelines.experiments.mad.worlds import GaussianWorld  # noqa: E402

FULL = dict(runs=1000, generations=100, sizes=(125, 250, 500, 1000), omegas=(0, 1, 2, 3, 4),
            n_real=1000, n_s=2000, n_eval=1000, base_epochs=100, aux_epochs=50)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def part_a(args, world, recipe) -> dict:
    """Same loop work, batched vs one run at a time, alternating the order (ABBA) against load drift."""
    cfg = LoopConfig(loop="augment", training="sims", omega=3.0, runs=args.per_run_runs, generations=1,
                     n_real=1000, n_syn=1000, n_aux=2000, n_eval=1000, ot_points=args.ot_points,
                     base=TrainConfig(epochs=10), aux=TrainConfig(epochs=5), diffusion=recipe, device=args.device)
    times = {"batched": 0.0, "per_run": 0.0}
    fns = {"batched": lambda: run_loop(cfg, world),
           "per_run": lambda: [run_loop(replace(cfg, runs=1, seed=1 + r), world) for r in range(cfg.runs)]}
    for rep in range(2):
        for name in (["batched", "per_run"] if rep == 0 else ["per_run", "batched"]):
            t = time.perf_counter()
            fns[name]()
            times[name] += time.perf_counter() - t
    return {**times, "ratio": times["per_run"] / times["batched"]}


def unit_costs(args, world, recipe) -> dict:
    """s per training row-step, s per sampled row per network call (batched), OT pool problems/s."""
    device = torch.device(args.device)
    models, n = args.models, args.rows
    g = torch.Generator().manual_seed(0)
    data = world.sample(models, n, g)[0].to(device)
    net = new_denoiser(models, 2, recipe, g).to(device)
    dg = torch.Generator(device).manual_seed(1)
    train_runs(net, data, TrainConfig(epochs=2), recipe, dg)  # warm-up (kernels, allocator)
    _sync(device)
    t = time.perf_counter()
    train_runs(net, data, TrainConfig(epochs=args.epochs), recipe, dg)
    _sync(device)
    train = (time.perf_counter() - t) / (args.epochs * models * n)
    sample_runs(net, models, 8, 2, recipe, dg)  # warm-up
    _sync(device)
    t = time.perf_counter()
    sample_runs(net, models, n, 2, recipe, dg)
    _sync(device)
    sample = (time.perf_counter() - t) / (models * n * recipe.nfe)
    gen, ref = world.sample(args.ot_problems, args.ot_points, g)[0], world.sample(args.ot_problems, args.ot_points, g)[0]
    t = time.perf_counter()
    OTPool(0).submit(gen[:4], ref[:4]).result()
    ot_one = (time.perf_counter() - t) / 4
    with OTPool(args.ot_workers) as pool:
        pool.submit(gen[:args.ot_workers], ref[:args.ot_workers]).result()  # start the workers
        t = time.perf_counter()
        pool.submit(gen, ref).result()
        ot_rate = args.ot_problems / (time.perf_counter() - t)
    return {"train_row_step_s": train, "sample_row_nfe_s": sample, "ot_problem_s": ot_one,
            "ot_pool_problems_per_s": ot_rate}


def project_full_scale(c: dict, nfe: int, ot_runs: int = 1000) -> dict:
    """Seconds of the full scale: device work per generation and size, OT overlapped with it."""
    f = FULL
    blocks = len(f["omegas"])
    device_s, ot_s, wall_s = 0.0, 0.0, 0.0
    for size in f["sizes"]:
        models = blocks * f["runs"]
        for t in range(1, f["generations"] + 1):
            if t == 1:  # shared by every size and omega: trained once, drawn once per omega
                rows = (f["runs"] * (f["base_epochs"] * f["n_real"] + f["aux_epochs"] * f["n_s"]) * c["train_row_step_s"]
                        + f["runs"] * f["n_s"] * nfe * c["sample_row_nfe_s"]
                        + f["runs"] * f["n_eval"] * nfe * 2 * blocks * c["sample_row_nfe_s"]) if size == f["sizes"][0] else 0.0
            else:
                train_rows = f["base_epochs"] * (f["n_real"] + size) + f["aux_epochs"] * f["n_s"]
                sample_rows = f["n_s"] * nfe + max(size, f["n_eval"]) * nfe * 2
                rows = models * (train_rows * c["train_row_step_s"] + sample_rows * c["sample_row_nfe_s"])
            ot = blocks * ot_runs * c["ot_problem_s_pool"]
            device_s += rows
            ot_s += ot
            wall_s += max(rows, ot)  # the pool solves generation t while the device trains t + 1
    return {"device_h": device_s / 3600, "ot_h": ot_s / 3600, "wall_h": wall_s / 3600}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu or cuda")
    p.add_argument("--recipe", choices=["toy-diffusion", "edm"], default="toy-diffusion")
    p.add_argument("--models", type=int, default=None,
                   help="models trained at once for the unit costs (default: 5000 on cuda, the full scale's "
                        "batch of 5 omegas x 1000 runs; 20 on cpu)")
    p.add_argument("--rows", type=int, default=1000, help="rows per model (|D_r|)")
    p.add_argument("--epochs", type=int, default=None, help="timed full-batch steps (default 20 cuda, 3 cpu)")
    p.add_argument("--ot-points", type=int, default=500)
    p.add_argument("--ot-problems", type=int, default=None, help="problems timed in the pool (default 8 x workers)")
    p.add_argument("--ot-workers", type=int, default=None, help="pool processes (default: all cores)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--per-run", action="store_true", help="also part A: batched vs per-run loop")
    p.add_argument("--per-run-runs", type=int, default=20)
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device: {args.device}", flush=True)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda asked for a GPU but torch sees none; use --device cpu")
    cuda = args.device.startswith("cuda")
    args.models = args.models or (5000 if cuda else 20)
    args.epochs = args.epochs or (20 if cuda else 3)
    args.ot_workers = args.ot_workers if args.ot_workers is not None else (os.cpu_count() or 1)
    args.ot_problems = args.ot_problems or 8 * args.ot_workers
    if args.threads:
        torch.set_num_threads(args.threads)
    world, recipe = GaussianWorld(), make_recipe(args.recipe).for_world(GaussianWorld())
    dev = torch.cuda.get_device_name(0) if cuda else f"cpu, {torch.get_num_threads()} torch threads"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}; device {dev}; {os.cpu_count()} cores, load average {load:.1f} at start; "
          f"recipe {recipe.name} ({recipe.nfe} network calls per sample)")
    if args.per_run:
        a = part_a(args, world, recipe)
        print(f"A. {args.per_run_runs} runs, 1 generation of the SIMS augmentation loop (epochs 10/5), twice each "
              f"way, ABBA: batched {a['batched']:.1f} s | per-run {a['per_run']:.1f} s | ratio {a['ratio']:.2f}x")
    c = unit_costs(args, world, recipe)
    c["ot_problem_s_pool"] = 1 / c["ot_pool_problems_per_s"]
    print(f"B. {args.models} models x {args.rows} rows at once: {c['train_row_step_s'] * 1e6:.4g} us per training "
          f"row-step, {c['sample_row_nfe_s'] * 1e6:.4g} us per sampled row per network call; exact OT "
          f"({args.ot_points} points): {c['ot_problem_s'] * 1e3:.0f} ms per problem on one core, "
          f"{c['ot_pool_problems_per_s']:.0f} problems/s with {args.ot_workers} processes")
    for ot_runs in (1000, 200):
        proj = project_full_scale(c, recipe.nfe, ot_runs)
        print(f"C. full scale (1000 runs x 100 generations x 4 sizes x omegas 0..4, 100/50 epochs, exact OT on "
              f"{args.ot_points} points for {ot_runs} runs per loop = --ot-runs {ot_runs}), projected on this "
              f"machine: device work {proj['device_h']:.2f} h, exact OT {proj['ot_h']:.2f} h in the pool, wall "
              f"{proj['wall_h']:.2f} h with the OT overlapped "
              f"({'fits' if proj['wall_h'] <= 2 else 'does not fit'} the 2 h target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

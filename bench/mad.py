"""Batched vs per-run self-consuming loops, and the projected cost of the paper's Fig. 4 scale.

Part A runs the same work twice in one process: R runs of a SIMS synthetic augmentation loop
as one batched loop (BatchedMLP, R runs per optimiser step) and as R plain loops of one run
each, and prints both wall times and their ratio. Part B measures unit costs of the batched
loop (training per row-step, sampling per row and network call, one exact-OT problem) and
projects the paper's full scale (1000 runs x 100 generations x 4 sizes x the omega grid).

    python bench/mad.py                      # defaults: 100 runs, 2 generations, short epochs
    python bench/mad.py --runs 20 --base-epochs 100 --aux-epochs 50
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.experiments.mad.distance import ot_w2  # noqa: E402
from pipelines.experiments.mad.loops import LoopConfig, run_loop  # noqa: E402
from pipelines.experiments.mad.training import (ToyDiffusion, TrainConfig, new_denoiser,  # noqa: E402
                                                sample_runs, train_runs)
from pipelines.experiments.mad.worlds import GaussianWorld  # noqa: E402


def part_a(args, world) -> dict:
    """Same loop work, batched vs one run at a time, alternating the order (ABBA) against load drift."""
    cfg = LoopConfig(loop="augment", training="sims", omega=3.0, runs=args.runs, generations=args.generations,
                     n_real=args.n_real, n_syn=args.n_syn, n_aux=args.n_s, n_eval=args.n_eval,
                     ot_points=args.ot_points, base=TrainConfig(epochs=args.base_epochs),
                     aux=TrainConfig(epochs=args.aux_epochs), diffusion=ToyDiffusion(num_steps=args.steps))

    def batched():
        run_loop(cfg, world)

    def per_run():
        for r in range(args.runs):
            run_loop(replace(cfg, runs=1, seed=cfg.seed + 1 + r), world)
    times = {"batched": 0.0, "per_run": 0.0}
    for rep in range(args.repeats):
        order = [("batched", batched), ("per_run", per_run)]
        for name, fn in (order if rep % 2 == 0 else order[::-1]):
            t = time.perf_counter()
            fn()
            times[name] += time.perf_counter() - t
    return {"batched_s": times["batched"], "per_run_s": times["per_run"],
            "ratio": times["per_run"] / times["batched"]}


def unit_costs(runs: int, n: int, steps: int, world) -> dict:
    """Batched unit costs: s per training row-step, s per sampled row and network call, s per OT problem."""
    diff = ToyDiffusion(num_steps=steps).for_world(world)
    g = torch.Generator().manual_seed(0)
    net = new_denoiser(runs, 2, diff, g)
    data, _ = world.sample(runs, n, g)
    train_runs(net, data, TrainConfig(epochs=1), diff, g)  # warm-up
    t = time.perf_counter()
    train_runs(net, data, TrainConfig(epochs=5), diff, g)
    train = (time.perf_counter() - t) / (5 * runs * n)
    t = time.perf_counter()
    sample_runs(net, runs, n, 2, diff, g)
    sample = (time.perf_counter() - t) / (runs * n * (2 * steps - 1))
    x = data[0].numpy()
    t = time.perf_counter()
    for i in range(3):
        ot_w2(x, data[i + 1].numpy())
    return {"train_row_step_s": train, "sample_row_nfe_s": sample, "ot_problem_s": (time.perf_counter() - t) / 3}


def project_full_scale(c: dict, runs=1000, generations=100, sizes=(125, 250, 500, 1000),
                       omegas=(0, 1, 2, 3, 4), n_real=1000, n_s=2000, n_eval=1000, steps=20,
                       base_epochs=100, aux_epochs=50) -> dict:
    """Seconds for the paper's Fig. 4 scale from unit costs (omega 0 = standard, no auxiliary model)."""
    nfe = 2 * steps - 1
    total = 0.0
    for size in sizes:
        for omega in omegas:
            for t in range(1, generations + 1):
                if t == 1 and (size, omega) != (sizes[0], omegas[0]):
                    train_rows = 0  # generation 1 is shared by every loop: only its sampling repeats
                    aux = False
                else:
                    train_rows = base_epochs * (n_real + (size if t > 1 else 0))
                    aux = omega != 0 or t == 1
                cost = train_rows * c["train_row_step_s"]
                if aux:
                    cost += aux_epochs * n_s * c["train_row_step_s"] + n_s * nfe * c["sample_row_nfe_s"]
                cost += max(size, n_eval) * nfe * (2 if omega else 1) * c["sample_row_nfe_s"]
                cost += c["ot_problem_s"]
                total += runs * cost
    return {"seconds": total, "hours": total / 3600, "days": total / 86400}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--generations", type=int, default=1)
    p.add_argument("--n-real", type=int, default=1000)
    p.add_argument("--n-syn", type=int, default=1000)
    p.add_argument("--n-s", type=int, default=2000)
    p.add_argument("--n-eval", type=int, default=1000)
    p.add_argument("--ot-points", type=int, default=500)
    p.add_argument("--base-epochs", type=int, default=10, help="paper: 100 (the ratio is per step, so fewer is fine)")
    p.add_argument("--aux-epochs", type=int, default=5, help="paper: 50")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2, help="ABBA repeats of part A (order alternates)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--skip-per-run", action="store_true", help="only the unit costs and the projection")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    world = GaussianWorld()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    if not args.skip_per_run:
        a = part_a(args, world)
        print(f"A. work: {args.runs} runs x {args.generations} generation(s) of the SIMS augmentation loop "
              f"(|D_r|={args.n_real}, |D_s|={args.n_syn}, n_s={args.n_s}, epochs {args.base_epochs}/{args.aux_epochs}, "
              f"Heun {args.steps} steps, OT on {args.ot_points} points), done {args.repeats}x each way, "
              f"order alternating")
        print(f"   batched loop {a['batched_s']:.1f} s | per-run loop {a['per_run_s']:.1f} s | "
              f"ratio {a['ratio']:.2f}x")
    c = unit_costs(args.runs, args.n_real, args.steps, world)
    print(f"B. batched unit costs at {args.runs} runs x {args.n_real} points: "
          f"{c['train_row_step_s'] * 1e6:.2f} us per training row-step, "
          f"{c['sample_row_nfe_s'] * 1e6:.2f} us per sampled row per network call, "
          f"{c['ot_problem_s'] * 1e3:.0f} ms per exact-OT problem ({args.n_real} points)")
    proj = project_full_scale(c)
    print(f"   paper scale (1000 runs x 100 generations x 4 sizes x omegas 0,1,2,3,4; 100/50 epochs): "
          f"{proj['hours']:.0f} h = {proj['days']:.1f} days on this CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""bf16 vs fp32 sampling on the demo: does the cheaper precision change what we measure?

Usage: python bench/precision.py [--n 2000 --steps 12 --batch 250 --device auto --out FILE.json]
Samples the bundled demo model on seeds 0..n-1 at both precisions (same seeds, same sampler) and
prints, for each: the fraction of digits 5-9 with its 95% Wilson interval, FD-digits against all
real digits with a 95% bootstrap interval, per-group FD-digits, wall time; and the share of
samples whose digit class is the same at both precisions. The FD floor at this n (what perfect
samples would score) is printed so a difference can be read against what the metric resolves.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipelines.attributes.groupings import wilson_interval  # noqa: E402
from pipelines.demo.assets import DEMO_SAMPLER, HIGH, LOW  # noqa: E402
from pipelines.demo.shift import DemoWorld  # noqa: E402
from pipelines.errors import UserError  # noqa: E402
from pipelines.generate import generate_images  # noqa: E402
from pipelines.metrics.floor import fd_bootstrap, fd_floor  # noqa: E402
from pipelines.metrics.frechet import feature_stats  # noqa: E402
from pipelines.sampler import SamplerConfig  # noqa: E402
from pipelines.training.distributed import resolve_device  # noqa: E402


def measure(world: DemoWorld, images: np.ndarray) -> dict:
    m = world.measure(images)
    groups, _ = world.label(images)
    decided = groups != "uncertain"
    k, n = int((groups[decided] == HIGH).sum()), int(decided.sum())
    feats = world.classifier.features(images)
    mu, sigma = feature_stats(world.real_features)
    return {**m, "high_count": k, "decided": n, "fraction_high_ci95": list(wilson_interval(k, n)),
            "fd_digits_ci95": list(fd_bootstrap(feats, mu, sigma, repeats=50)),
            "classes": world.classifier.predict_proba(images).argmax(1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=DEMO_SAMPLER.num_steps)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    try:
        device = resolve_device(args.device)
    except UserError as e:
        sys.exit(f"error: {e}")
    print(f"device: {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}")
    world = DemoWorld()
    world.base.to(device)
    sampler = SamplerConfig(num_steps=args.steps)
    res = {}
    for precision in ("fp32", "bf16"):
        t0 = time.perf_counter()
        images = generate_images(world.base, range(args.n), sampler, batch_size=args.batch, device=device,
                                 precision=precision)
        seconds = time.perf_counter() - t0
        res[precision] = {**measure(world, images), "seconds": seconds}
    agree = float((res["fp32"].pop("classes") == res["bf16"].pop("classes")).mean())
    floor, floor_ci = fd_floor(world.real_features, args.n, repeats=20)
    report = {"n": args.n, "seeds": f"0-{args.n - 1}", "steps": args.steps, "device": str(device),
              "threads": torch.get_num_threads(), "class_agreement": agree,
              "fd_floor": floor, "fd_floor_ci95": list(floor_ci), **res}
    print(f"demo model, {args.n} samples (seeds 0-{args.n - 1}), {args.steps} Heun steps, {device}")
    print("| precision | fraction 5–9 [95% Wilson] | FD-digits | FD-digits 0–4 | FD-digits 5–9 | bootstrap spread of FD "
          "| seconds |")
    print("|---|---|---|---|---|---|---|")
    for p in ("fp32", "bf16"):
        r = res[p]
        lo, hi = r["fraction_high_ci95"]
        flo, fhi = r["fd_digits_ci95"]  # resampling duplicates rows: it sits above the point estimate
        print(f"| {p} | {r['fraction_high']:.3f} [{lo:.3f}–{hi:.3f}] | {r['fd_digits']:.2f} | "
              f"{r['fd_digits_' + LOW]:.2f} | {r['fd_digits_' + HIGH]:.2f} | {flo:.2f}–{fhi:.2f} | {r['seconds']:.0f} |")
    print(f"same digit class at both precisions: {100 * agree:.1f}% of {args.n}; "
          f"FD-digits floor at n={args.n}: {floor:.2f} [{floor_ci[0]:.2f}–{floor_ci[1]:.2f}]")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

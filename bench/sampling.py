"""Wall-time cost of SIMS sampling modes relative to the base sampler, measured side by side.

Usage: python bench/sampling.py [--preset tiny --resolution 32 --channels 3 --batch 16 --steps 18
                                 --repeats 5 --device cpu]
Modes at equal Heun steps: base (omega 0), full SIMS, guidance interval, shared encoder.
Targets (issue 2): full <= 2.05x, shared encoder <= 1.6x, interval ~= 1 + guided fraction.
Modes are interleaved within each repeat so machine noise hits them alike; medians are reported.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipelines.guidance import SIMSDenoiser  # noqa: E402
from pipelines.models import ModelConfig, build_model  # noqa: E402
from pipelines.networks.songunet import songunet_config  # noqa: E402
from pipelines.sampler import SamplerConfig, sample_from_seeds, sigma_steps  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--interval", default="0.28,1.61", help="sigma range of the guidance interval")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    cfg = ModelConfig(backbone="songunet", network=songunet_config(
        args.preset, img_resolution=args.resolution, img_channels=args.channels))
    torch.manual_seed(0)
    base = build_model(cfg).eval().to(args.device)
    torch.manual_seed(1)
    aux = build_model(cfg).eval().to(args.device)
    sampler = SamplerConfig(num_steps=args.steps)
    lo, hi = (float(v) for v in args.interval.split(","))
    t = sigma_steps(sampler).tolist()
    evaluated = t[:-1] + t[1:-1]
    guided_fraction = sum(lo <= s <= hi for s in evaluated) / len(evaluated)
    modes = {
        "base": lambda: base,
        "full SIMS": lambda: SIMSDenoiser(base, aux, 1.0),
        "interval": lambda: SIMSDenoiser(base, aux, 1.0, interval=(lo, hi)),
        "shared encoder": lambda: SIMSDenoiser(base, aux, 1.0, shared_encoder=True),
    }
    seeds = list(range(args.batch))
    shape = base.model.sample_shape

    def run(make):
        if args.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            sample_from_seeds(make(), seeds, shape, sampler, device=args.device)
        if args.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for make in modes.values():  # warm-up
        run(make)
    times = {name: [] for name in modes}
    for _ in range(args.repeats):
        for name, make in modes.items():
            times[name].append(run(make))
    med = {name: statistics.median(v) for name, v in times.items()}
    dev = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {dev}; SongUNet preset '{args.preset}' {args.channels}x{args.resolution}x{args.resolution}, "
          f"batch {args.batch}, {args.steps} Heun steps (NFE {sampler.nfe}), {args.repeats} repeats, medians")
    print(f"guidance interval sigma in [{lo}, {hi}]: guided fraction of evaluations = {guided_fraction:.3f}")
    targets = {"base": "1", "full SIMS": "<= 2.05", "interval": f"~= {1 + guided_fraction:.2f}",
               "shared encoder": "<= 1.6"}
    print(f"{'mode':<16}{'seconds':>10}{'ratio to base':>16}  target")
    for name in modes:
        print(f"{name:<16}{med[name]:>10.3f}{med[name] / med['base']:>16.2f}  {targets[name]}")


if __name__ == "__main__":
    main()

"""Wall-time cost of SIMS sampling modes relative to the base sampler, measured side by side.

Usage: python bench/sampling.py [--preset tiny --resolution 32 --channels 3 --batch 16 --steps 18
                                 --repeats 5 --device auto --precision fp32]
Modes at equal Heun steps: base (omega 0), full SIMS, guidance interval, shared encoder, and full SIMS
with base and auxiliary as one batched (vmapped) call.
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
from pipelines.errors import UserError  # noqa: E402
from pipelines.guidance import SIMSDenoiser  # noqa: E402
from pipelines.paired import PairedSIMSDenoiser  # noqa: E402
from pipelines.models import ModelConfig, build_model  # noqa: E402
from pipelines.networks.songunet import songunet_config  # noqa: E402
from pipelines.precision import network_precision  # noqa: E402
from pipelines.sampler import SamplerConfig, sample_from_seeds, sigma_steps  # noqa: E402
from pipelines.training.distributed import resolve_device  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--model-channels", type=int, default=None, help="override the preset's width")
    ap.add_argument("--num-blocks", type=int, default=None, help="override the preset's blocks per level")
    ap.add_argument("--channel-mult", default=None, help="override, e.g. 1,2,2")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--interval", default="0.28,1.61", help="sigma range of the guidance interval")
    ap.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = ap.parse_args()
    try:
        device = resolve_device(args.device)
    except UserError as e:
        sys.exit(f"error: {e}")
    results = measure_modes(args, device)
    print(results["header"])
    for line in results["lines"]:
        print(line)


def measure_modes(args, device) -> dict:
    """Seconds per mode (medians of interleaved repeats), ratios to base, and the decoder-share bound."""

    overrides = {k: v for k, v in {"model_channels": args.model_channels, "num_blocks": args.num_blocks,
                                   "channel_mult": args.channel_mult and [int(c) for c in args.channel_mult.split(",")]
                                   }.items() if v}
    cfg = ModelConfig(backbone="songunet", network=songunet_config(
        args.preset, img_resolution=args.resolution, img_channels=args.channels, **overrides))
    torch.manual_seed(0)
    base = build_model(cfg).eval().to(device)
    torch.manual_seed(1)
    aux = build_model(cfg).eval().to(device)
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
        "full, 1 call": lambda: paired,
    }
    paired = PairedSIMSDenoiser(base, aux, 1.0)  # stacks the weights once, outside the timing
    if args.precision != "fp32":
        del modes["full, 1 call"]  # the paired call is fp32 only (pipelines/paired.py says why)
    seeds = list(range(args.batch))
    shape = base.model.sample_shape

    def run(make):
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad(), network_precision(args.precision):
            sample_from_seeds(make(), seeds, shape, sampler, device=device)
        _sync(device)
        return time.perf_counter() - t0

    for make in modes.values():  # warm-up
        run(make)
    times = {name: [] for name in modes}
    for _ in range(args.repeats):
        for name, make in modes.items():
            times[name].append(run(make))
    med = {name: statistics.median(v) for name, v in times.items()}
    with network_precision(args.precision):
        dec_share = decoder_share(base, seeds, shape, device)
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    targets = {"base": "1", "full SIMS": "<= 2.05", "interval": f"~= {1 + guided_fraction:.2f}",
               "shared encoder": "<= 1.6", "full, 1 call": "< full SIMS (small batches, GPU)"}
    header = (f"device: {dev}; SongUNet preset '{args.preset}' {overrides or ''} "
              f"{args.channels}x{args.resolution}x{args.resolution}, batch {args.batch}, {args.steps} Heun steps "
              f"(NFE {sampler.nfe}), {args.precision}, {args.repeats} repeats, medians")
    lines = [f"guidance interval sigma in [{lo}, {hi}]: guided fraction of evaluations = {guided_fraction:.3f}",
             f"decoder share of one forward pass: {dec_share:.2f} -> the shared encoder cannot beat "
             f"{1 + dec_share:.2f}x (it saves only the encoder's share of the auxiliary pass)",
             f"{'mode':<16}{'seconds':>10}{'images/s':>10}{'ratio to base':>16}  target"]
    for name in modes:
        lines.append(f"{name:<16}{med[name]:>10.3f}{args.batch / med[name]:>10.1f}{med[name] / med['base']:>16.2f}"
                     f"  {targets[name]}")
    return {"header": header, "lines": lines, "seconds": med, "decoder_share": dec_share,
            "guided_fraction": guided_fraction}


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def decoder_share(model, seeds, shape, device, repeats: int = 5) -> float:
    """Fraction of one network pass spent in the decoder half (timed on one batch). CUDA kernels run
    asynchronously: each half is timed between two synchronizations, or the encoder's time would be
    only its launch cost and the bound too high."""
    x = torch.randn(len(seeds), *shape, device=device)
    sigma = torch.ones(len(seeds), device=device)
    enc, dec = [], []
    with torch.no_grad():
        for _ in range(repeats + 1):
            _sync(device)
            t0 = time.perf_counter()
            state = model.encode(x, sigma)
            _sync(device)
            t1 = time.perf_counter()
            model.decode(state)
            _sync(device)
            enc.append(t1 - t0)
            dec.append(time.perf_counter() - t1)
    e, d = statistics.median(enc[1:]), statistics.median(dec[1:])
    return d / (e + d)


if __name__ == "__main__":
    main()

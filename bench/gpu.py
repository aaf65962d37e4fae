"""One device check on one GPU (about 6-8 minutes on an H100/H200): training and sampling throughput.

Usage: python bench/gpu.py [--configs ffhq64,cifar10] [--train-batch 64 --train-steps 8]
                           [--sample-batch 64 --sample-steps 18 --repeats 2] [--compile-configs ffhq64]
                           [--skip train,sample,tiny] [--device cuda] [--reference-dir PATH/TO/edm]
       python bench/gpu.py --cpu-smoke [--reference-dir PATH]   (every size shrunk, on the CPU: a dry run)

Prints, for the FFHQ-64 and CIFAR-10 configurations (SongUNet DDPM++ presets with random weights:
throughput does not depend on the weights), every figure measured side by side in this one run:
  training images/s  — EDM loss + backward + fused Adam on a fixed batch: fp32 (TF32 off), TF32,
                       bf16 autocast, bf16 + torch.compile (FFHQ-64 only by default; its
                       compilation time printed apart);
                       ratios to fp32;
  sampling images/s  — 18 Heun steps from per-seed noise, fp32 and bf16: base, full SIMS, guidance
                       interval (sigma in [0.28, 1.61]), shared encoder, full SIMS as one batched
                       call (also at batch 4, where launches dominate); each mode's ratio to base at
                       the same precision (SIMS cost) and bf16's speed-up over fp32 per mode;
  the tiny digits model's training loop against its bare step (loop/bare), fp32 and bf16;
  with --reference-dir (a checkout of github.com/NVlabs/edm): our bf16 training step beside the
                       reference's fp16 step (its --fp16) on the same initial weights and batch,
                       images/s of both and their ratio (bench/reference.py says what each step is).
Modes alternate within each repeat so clock or thermal drift hits them alike; medians reported.
Targets (issue 11): bf16 sampling >= 3x fp32 on FFHQ-64 at batch 64; loop/bare >= 0.9 (tiny).
Without a GPU it exits with a message (use bench/train.py and bench/sampling.py on a CPU);
--cpu-smoke runs every part on the CPU with every size shrunk (8 channels, 16x16, batch 2, 2 steps,
no compile rows): not a measurement, a check that the script runs (bench/device_check.sh --cpu-smoke).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

CONFIGS = {"ffhq64": (64, 3), "cifar10": (32, 3)}  # preset -> (resolution, channels)
INTERVAL = (0.28, 1.61)


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


SMOKE = False  # --cpu-smoke: the presets shrunk to a few channels at 16x16 (set in main)


def _model_config(preset: str):
    from pipelines.models import ModelConfig
    from pipelines.networks.songunet import songunet_config
    res, ch = CONFIGS[preset]
    small = dict(img_resolution=16, model_channels=8, num_blocks=1, attn_resolutions=[8]) if SMOKE else {}
    return ModelConfig(backbone="songunet",
                       network=songunet_config(preset, **{"img_resolution": res, "img_channels": ch, **small}))


def train_rates(preset: str, batch: int, steps: int, repeats: int, device, compile: bool) -> list[str]:
    from train import bare_rate  # bench/train.py: the same bare step bench/train.py measures
    cfg = _model_config(preset)
    res, ch = cfg.network["img_resolution"], cfg.network["img_channels"]
    x = torch.rand(batch, ch, res, res) * 2 - 1
    modes = {"fp32": (False, False, False), "TF32": (True, False, False), "bf16": (False, True, False)}
    rates = {m: [] for m in modes}
    for _ in range(repeats):
        for name, (tf32, bf16, comp) in modes.items():
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
            rates[name].append(bare_rate(cfg, x, steps, device, bf16, comp))
    out = {m: statistics.median(v) for m, v in rates.items()}
    warm = {}
    if compile:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        out["bf16 + compile"] = bare_rate(cfg, x, steps, device, True, True, timings=warm)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    from pipelines.models import build_model
    n_params = sum(p.numel() for p in build_model(cfg).parameters())
    lines = [f"training  {preset} ({n_params:,} parameters) {ch}x{res}x{res}, batch {batch}, {steps} timed steps "
             f"after 2 warm-up, {repeats} repeats (compile: 1 run)"]
    for name, rate in out.items():
        lines.append(f"  {name:<16}{rate:>9.1f} images/s   x{rate / out['fp32']:.2f} vs fp32")
    if compile:
        lines.append(f"  torch.compile: warm-up (2 steps, compilation included) took {warm['warmup_s']:.1f} s")
    return lines


def sample_rates(preset: str, batch: int, steps: int, repeats: int, device, compile: bool,
                 only: tuple | None = None) -> list[str]:
    from pipelines.guidance import SIMSDenoiser
    from pipelines.models import build_model
    from pipelines.paired import PairedSIMSDenoiser
    from pipelines.precision import network_precision
    from pipelines.compiling import compile_networks, warm_up
    from pipelines.sampler import SamplerConfig, sample_from_seeds, sigma_steps
    cfg = _model_config(preset)
    torch.manual_seed(0)
    base = build_model(cfg).eval().requires_grad_(False).to(device)
    torch.manual_seed(1)
    aux = build_model(cfg).eval().requires_grad_(False).to(device)
    sampler = SamplerConfig(num_steps=steps)
    seeds, shape = list(range(batch)), base.model.sample_shape
    modes = {"base": lambda: base, "full SIMS": lambda: SIMSDenoiser(base, aux, 1.0),
             "interval": lambda: SIMSDenoiser(base, aux, 1.0, interval=INTERVAL),
             "shared encoder": lambda: SIMSDenoiser(base, aux, 1.0, shared_encoder=True),
             "full, 1 call": lambda: paired}
    paired = PairedSIMSDenoiser(base, aux, 1.0)  # weights stacked once, outside the timing
    if only:
        modes = {m: f for m, f in modes.items() if m in only}

    def run(make, precision):
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad(), network_precision(precision):
            sample_from_seeds(make(), seeds, shape, sampler, device=device)
        _sync(device)
        return time.perf_counter() - t0

    warm = SamplerConfig(num_steps=2)
    for precision in ("fp32", "bf16"):  # warm-up: cuDNN autotuning and allocations
        with torch.no_grad(), network_precision(precision):
            sample_from_seeds(SIMSDenoiser(base, aux, 1.0, shared_encoder=True), seeds, shape, warm, device=device)
            sample_from_seeds(SIMSDenoiser(base, aux, 1.0), seeds, shape, warm, device=device)
            if precision == "fp32":  # the paired call is fp32 only (pipelines/paired.py says why)
                sample_from_seeds(paired, seeds, shape, warm, device=device)
    times = {(m, p): [] for p in ("fp32", "bf16") for m in modes if not (m == "full, 1 call" and p == "bf16")}
    for _ in range(repeats):
        for (m, p) in times:
            times[(m, p)].append(run(modes[m], p))
    med = {k: statistics.median(v) for k, v in times.items()}
    t = sigma_steps(sampler).tolist()
    evaluated = t[:-1] + t[1:-1]
    guided = sum(INTERVAL[0] <= s <= INTERVAL[1] for s in evaluated) / len(evaluated)
    res, ch = cfg.network["img_resolution"], cfg.network["img_channels"]
    lines = [f"sampling  {preset} {ch}x{res}x{res}, batch {batch}, {steps} Heun steps (NFE {sampler.nfe}), "
             f"{repeats} repeats; interval guides {guided:.2f} of the evaluations (expect ~{1 + guided:.2f}x)",
             f"  {'mode':<16}{'fp32 img/s':>11}{'bf16 img/s':>11}{'bf16/fp32':>10}{'fp32 vs base':>13}"
             f"{'bf16 vs base':>13}"]
    for m in modes:
        f, b = med[(m, "fp32")], med.get((m, "bf16"))
        if b is None:  # fp32 only
            lines.append(f"  {m:<16}{batch / f:>11.1f}{'fp32 only':>11}{'':>10}{f / med[('base', 'fp32')]:>12.2f}x")
            continue
        lines.append(f"  {m:<16}{batch / f:>11.1f}{batch / b:>11.1f}{f / b:>10.2f}"
                     f"{f / med[('base', 'fp32')]:>12.2f}x{b / med[('base', 'bf16')]:>12.2f}x")
    if compile:  # as `generate --compile`: CUDA graphs on CUDA, compiled and warmed up before timing
        mode = compile_networks([base], device)
        compile_s = warm_up(base, base, [batch], sampler, device, "bf16")
        compiled = statistics.median(run(modes["base"], "bf16") for _ in range(repeats))
        lines.append(f"  base bf16 + torch.compile (mode {mode or 'default'}): {batch / compiled:.1f} img/s "
                     f"(x{med[('base', 'fp32')] / compiled:.2f} vs fp32 eager, x{med[('base', 'bf16')] / compiled:.2f} "
                     f"vs bf16 eager; compilation {compile_s:.1f} s, not timed)")
    return lines


def tiny_loop_vs_bare(device, repeats: int, steps: int = 100) -> list[str]:
    from pipelines.data import open_dataset, to_model_input
    from pipelines.models import ModelConfig
    from pipelines.networks.songunet import songunet_config
    from train import bare_rate, loop_rate
    data = open_dataset("digits")
    cfg = ModelConfig(network=songunet_config("tiny", img_resolution=8, img_channels=1))
    x = to_model_input(data.get_batch(range(64))[0])
    lines = [f"training loop vs bare step, tiny digits model, batch 64, {steps} steps"]
    for precision in ("fp32", "bf16"):
        bare, loop = [], []
        for _ in range(repeats):
            bare.append(bare_rate(cfg, x, steps, device, precision == "bf16"))
            loop.append(loop_rate(cfg, data, 64, steps, device, precision))
        b, lo = statistics.median(bare), statistics.median(loop)
        lines.append(f"  {precision}: bare {b:8.1f} images/s, loop {lo:8.1f} images/s, loop/bare = {lo / b:.2f}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="ffhq64,cifar10", help="comma list of: " + ", ".join(CONFIGS))
    ap.add_argument("--train-batch", type=int, default=64)
    ap.add_argument("--train-steps", type=int, default=8, help="timed training steps per mode and repeat")
    ap.add_argument("--sample-batch", type=int, default=64)
    ap.add_argument("--sample-steps", type=int, default=18)
    ap.add_argument("--small-batch", type=int, default=4,
                    help="also time base / full SIMS / full SIMS as one call at this batch (0 = skip)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--compile-configs", default="ffhq64",
                    help="configs that also get the torch.compile rows (each compilation costs minutes; "
                         "'' for none)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: train, reference, sample, tiny")
    ap.add_argument("--device", default="cuda", help="cuda or cuda:N")
    ap.add_argument("--reference-dir", default=None,
                    help="a checkout of github.com/NVlabs/edm: also time its fp16 training step beside our bf16 "
                         "one on the same weights and batch (per config)")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="dry run on the CPU: every size shrunk (networks, batches, steps, repeats), no compile "
                         "rows; checks that the script runs, measures nothing worth reporting")
    args = ap.parse_args()
    if args.cpu_smoke:
        return smoke(args)
    if not torch.cuda.is_available():
        print("bench/gpu.py measures GPU throughput, but torch sees no CUDA device here "
              f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}). Run it on a machine "
              "with an NVIDIA GPU; on a CPU use bench/train.py and bench/sampling.py.", file=sys.stderr)
        return 2
    from pipelines.training.distributed import resolve_device
    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = True
    props = torch.cuda.get_device_properties(device)
    print(f"device: {props.name} ({props.total_memory / 2 ** 30:.0f} GiB), torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}", flush=True)
    return run_parts(ap, args, device)


def smoke(args) -> int:
    """--cpu-smoke: the same parts on the CPU with every size shrunk."""
    global SMOKE
    SMOKE = True
    for name, value in (("train_batch", 2), ("train_steps", 1), ("sample_batch", 2), ("sample_steps", 2),
                        ("small_batch", 1), ("repeats", 1), ("tiny_steps", 2)):
        setattr(args, name, value)
    args.compile_configs = ""
    print(f"device: cpu (--cpu-smoke: shrunk sizes, not a measurement), torch {torch.__version__}", flush=True)
    return run_parts(None, args, torch.device("cpu"))


def run_parts(ap, args, device) -> int:
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        msg = f"unknown config(s) {bad}; choose from {list(CONFIGS)}"
        ap.error(msg) if ap else sys.exit(msg)
    skip = set(filter(None, args.skip.split(",")))
    compiled = set(filter(None, args.compile_configs.split(",")))
    if args.reference_dir:
        from reference import load_reference
        load_reference(args.reference_dir)  # a wrong path fails now, not after minutes of timing
    t_all = time.perf_counter()
    for preset in configs:
        if "train" not in skip:
            print("\n".join(train_rates(preset, args.train_batch, args.train_steps, args.repeats, device,
                                        preset in compiled)), flush=True)
        if args.reference_dir and "reference" not in skip:
            from reference import compare
            print("\n".join(compare(_model_config(preset), args.train_batch, args.train_steps, args.repeats, device,
                                    args.reference_dir, bf16=not SMOKE)), flush=True)
        if "sample" not in skip:
            print("\n".join(sample_rates(preset, args.sample_batch, args.sample_steps, args.repeats, device,
                                         preset in compiled)), flush=True)
            if args.small_batch:  # where launch overhead dominates: does one batched call for both pay?
                print("\n".join(sample_rates(preset, args.small_batch, args.sample_steps, args.repeats, device,
                                             False, only=("base", "full SIMS", "full, 1 call"))), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if "tiny" not in skip:
        print("\n".join(tiny_loop_vs_bare(device, args.repeats, getattr(args, "tiny_steps", 100))), flush=True)
    print(f"total {time.perf_counter() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CLI: `generate` (base model) and `sample-sims` (guided by an auxiliary model or a bundle).

Under torchrun (`torchrun --nproc_per_node=N -m pipelines generate ...`) the seeds are cut into
batches as in one process and rank r samples batches r, r+N, ...; rank 0 gathers them and writes
one output, identical to a one-process run on the same device type.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ..checkpoints.bundle import load_bundle
from ..checkpoints.native import load_model
from ..errors import UserError
from ..generate import compile_and_warm_up, generate_batches, parse_seeds
from ..guidance import SIMSDenoiser, parse_interval, parse_omega
from ..paired import PairedSIMSDenoiser, check_paired_precision
from ..precision import PRECISIONS
from ..sampler import SamplerConfig, to_uint8
from .progress import Progress


def _sampler_args(p: argparse.ArgumentParser):
    p.add_argument("--seeds", default="0-63", help="seed range/list, e.g. 0-63 or 1,5,9 (one image per seed)")
    p.add_argument("--steps", type=int, default=None,
                   help="Heun steps (default 18, EDM's; a bundle's own sampler when given; NFE = 2*steps-1)")
    p.add_argument("--sigma-min", type=float, default=None)
    p.add_argument("--sigma-max", type=float, default=None)
    p.add_argument("--rho", type=float, default=None)
    p.add_argument("--churn", type=float, default=None, help="S_churn (0 = deterministic)")
    p.add_argument("--batch", type=int, default=64, help="images per network call (default 64)")
    p.add_argument("--device", default="auto",
                   help="auto (default: cuda if available, else cpu), cpu, cuda, cuda:N; under torchrun "
                        "each process takes its local GPU")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="network precision: fp32 (default, bit-reproducible) or bf16 (autocast of the networks "
                        "only; the sampler and the SIMS combination stay in float32/float64; CPU autocast on a CPU)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the network(s) for this fixed batch shape (CUDA graphs on a GPU); the "
                        "compilation runs before sampling and is timed apart; results equal eager mode to float "
                        "rounding, not bit for bit. Needs a C++ compiler on a CPU, Triton on a GPU")
    p.add_argument("--out", required=True, help="output folder (PNG, EDM layout) or file ending in .npz")


def _sampler_from(args, base: SamplerConfig = SamplerConfig()) -> SamplerConfig:
    fields = {"num_steps": args.steps, "sigma_min": args.sigma_min, "sigma_max": args.sigma_max,
              "rho": args.rho, "S_churn": args.churn}
    try:
        return SamplerConfig(**{**base.__dict__, **{k: v for k, v in fields.items() if v is not None}})
    except ValueError as e:
        raise UserError(str(e)) from None


def _seeds(spec):
    try:
        return parse_seeds(spec)
    except ValueError as e:
        raise UserError(str(e)) from None


def _write(out: str, x, seeds, info: dict):
    """Images (NCHW) -> PNG folder or npz 'images' (uint8 NHWC); flat data -> npz 'samples' (float32)."""
    from ..imageio import write_image_folder
    out_path = Path(out)
    is_image = x.ndim == 4
    if out_path.suffix != ".npz" and not is_image:
        raise UserError(f"This model makes {x.shape[1]}-D points, not images: pass --out FILE.npz.")
    arrays = {"images": to_uint8(x)} if is_image else {"samples": x.numpy()}
    if out_path.suffix == ".npz":
        out_path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out_path, **arrays, seeds=np.asarray(seeds), info=json.dumps(info))
    else:
        write_image_folder(out_path, arrays["images"])
        (out_path / "generation.json").write_text(json.dumps({**info, "seeds": list(seeds)}, indent=1))
    print(f"wrote {len(x)} {'images' if is_image else 'samples'} to {out_path}")


def _start(args, n_seeds: int):
    """Join torchrun's group if launched by it; pick and announce the device. Returns (env, progress)."""
    from ..training.distributed import init_from_env
    if args.batch < 1:
        raise UserError(f"--batch must be >= 1 (got {args.batch}).")
    env = init_from_env(args.device)
    if env.is_main:
        how = "auto: CUDA found" if args.device == "auto" and env.device.type == "cuda" else \
            "auto: no CUDA here" if args.device == "auto" else "asked"
        procs = f", {env.world_size} processes" if env.distributed else ""
        print(f"sampling {n_seeds} seeds on {env.device} ({how}{procs}), precision {args.precision}", flush=True)
    bar = Progress(n_seeds, "img", args.command, enabled=env.is_main)
    return env, bar


def _info(args, env, t0: float, compile_s: float | None) -> dict:
    """Run facts for the output; 'seconds' is the sampling alone, 'compile_seconds' the compilation."""
    return {"device": str(env.device), "device_type": env.device.type, "processes": env.world_size,
            "precision": args.precision, "compiled": bool(args.compile), "paired": bool(getattr(args, "paired", False)),
            "seconds": round(time.time() - t0, 2),
            **({"compile_seconds": round(compile_s, 2)} if compile_s is not None else {})}


def _compile(args, env, make, models, model, seeds, sampler):
    """(denoiser, compile seconds or None): with --compile, compile and warm up before sampling."""
    if not args.compile:
        return make(), None
    if env.is_main:
        print("compiling the network(s) with torch.compile for this batch shape ...", flush=True)
    denoiser, seconds = compile_and_warm_up(make, models, model, seeds, sampler, args.batch, env.device,
                                            args.precision, shard=env)
    if env.is_main:
        print(f"compile: {seconds:.1f} s (before sampling; not in the sampling time)", flush=True)
    return denoiser, seconds


def run_generate(args) -> int:
    seeds, sampler = _seeds(args.seeds), _sampler_from(args)
    env, bar = _start(args, len(seeds))
    try:
        model, _ = load_model(args.model, env.device)
        compile_s = _compile(args, env, lambda: model, [model], model, seeds, sampler)[1]
        t0 = time.time()
        # Progress counts this rank's images; rank 0 alone shows it (its share of the seeds).
        x, _ = generate_batches(model, model, seeds, sampler, args.batch, env.device, precision=args.precision,
                                shard=env, progress=lambda done, total: bar.update(done * env.world_size))
        bar.close()
        if env.is_main:
            _write(args.out, x, seeds, {"model": args.model, "sampler": sampler.__dict__, "nfe": sampler.nfe,
                                        **_info(args, env, t0, compile_s)})
        env.barrier()
    finally:
        env.close()
    return 0


def run_sample_sims(args) -> int:
    seeds = _seeds(args.seeds)
    if not args.bundle and not (args.base and args.aux):
        raise UserError("Give --bundle FILE, or both --base CKPT and --aux CKPT.")
    interval_arg = parse_interval(args.interval)
    omega_arg = None if args.omega is None else parse_omega(args.omega)
    if args.paired:
        check_paired_precision(args.precision)
    env, bar = _start(args, len(seeds))
    try:
        return _sample_sims(args, seeds, interval_arg, omega_arg, env, bar)
    finally:
        env.close()


def _sample_sims(args, seeds, interval_arg, omega_arg, env, bar) -> int:
    device = env.device
    if args.bundle:
        bundle = load_bundle(args.bundle, device)
        base, aux, sampler = bundle.base, bundle.aux, _sampler_from(args, bundle.sampler)
        omega = bundle.omega if omega_arg is None else omega_arg
        interval = interval_arg if args.interval else bundle.interval
        shared = bundle.shared_encoder or args.shared_encoder
    else:
        base, _ = load_model(args.base, device)
        aux, _ = load_model(args.aux, device)
        sampler = _sampler_from(args)
        omega = 0.0 if omega_arg is None else omega_arg
        interval, shared = interval_arg, args.shared_encoder
    make = PairedSIMSDenoiser if args.paired else SIMSDenoiser
    guided, compile_s = _compile(args, env, lambda: make(base, aux, omega, interval=interval, shared_encoder=shared),
                                 [base, aux], base, seeds, sampler)
    t0 = time.time()
    x, _ = generate_batches(guided, base, seeds, sampler, args.batch, device, precision=args.precision,
                            shard=env, progress=lambda done, total: bar.update(done * env.world_size))
    bar.close()
    # Network passes per sample, from this rank's batches (every batch spends the same).
    runs = len(range(env.rank, -(-len(seeds) // args.batch), env.world_size))
    nfe = (guided.counts.base + guided.counts.aux) // max(runs, 1)
    if env.is_main:
        _write(args.out, x, seeds, {"bundle": args.bundle, "base": args.base, "aux": args.aux, "omega": omega,
                                    "interval": interval, "shared_encoder": shared, "sampler": sampler.__dict__,
                                    "network_passes_per_sample": nfe, **_info(args, env, t0, compile_s)})
    env.barrier()
    return 0


def register(sub) -> None:
    p = sub.add_parser("generate", help="sample a model with the EDM Heun sampler")
    p.add_argument("--model", required=True, help="checkpoint (.safetensors, ours)")
    _sampler_args(p)
    p.set_defaults(run=run_generate)

    p = sub.add_parser("sample-sims", help="sample with SIMS guidance (1+omega)*D_base - omega*D_aux",
                       description="Sample with SIMS guidance D = (1+omega)*D_base - omega*D_aux. Defaults "
                                   "without --bundle: omega 0 (the base model), no guidance interval (guide at "
                                   "every step), 18 Heun steps (EDM's; NFE 35 per network), fp32. The demo's "
                                   "numbers use 12 steps (--steps 12). A bundle brings its own omega, interval "
                                   "and sampler; flags override them.")
    p.add_argument("--bundle", help="SIMS bundle exported by the studio (holds base, aux, omega, interval)")
    p.add_argument("--base", help="base checkpoint (without --bundle)")
    p.add_argument("--aux", "--guide", dest="aux",
                   help="the guide: the SIMS auxiliary, or any model of the base's sample shape and preconditioning "
                        "(autoguidance when it is a weaker version of the base, e.g. an earlier checkpoint)")
    p.add_argument("--omega", default=None, help="guidance weight; 0 = base, -1 = auxiliary, >0 away from aux")
    p.add_argument("--interval", default=None,
                   help="guide only for sigma in [lo,hi], e.g. 0.28,1.61 (default: no interval, guide at every step)")
    p.add_argument("--shared-encoder", action="store_true",
                   help="auxiliary was fine-tuned decoder-only: run the encoder once for both")
    p.add_argument("--paired", action="store_true",
                   help="full SIMS: run base and auxiliary as one batched call (pays at small batches on a GPU; "
                        "equal to the default two calls to float rounding, not bit for bit; fp32 only)")
    _sampler_args(p)
    p.set_defaults(run=run_sample_sims)

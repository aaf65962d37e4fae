"""CLI: `generate` (base model) and `sample-sims` (guided by an auxiliary model or a bundle)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..checkpoints.bundle import load_bundle
from ..checkpoints.native import load_model
from ..errors import UserError
from ..generate import generate_batches, parse_seeds
from ..guidance import SIMSDenoiser, parse_omega
from ..sampler import SamplerConfig, to_uint8


def _sampler_args(p: argparse.ArgumentParser):
    p.add_argument("--seeds", default="0-63", help="seed range/list, e.g. 0-63 or 1,5,9 (one image per seed)")
    p.add_argument("--steps", type=int, default=None, help="Heun steps (default 18; NFE = 2*steps-1)")
    p.add_argument("--sigma-min", type=float, default=None)
    p.add_argument("--sigma-max", type=float, default=None)
    p.add_argument("--rho", type=float, default=None)
    p.add_argument("--churn", type=float, default=None, help="S_churn (0 = deterministic)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--device", default="cpu")
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


def _bar(total):
    bar = tqdm(total=total, unit="img")
    return bar, lambda done, _total: bar.update(done - bar.n)


def run_generate(args) -> int:
    model, _ = load_model(args.model, args.device)
    seeds, sampler = _seeds(args.seeds), _sampler_from(args)
    bar, progress = _bar(len(seeds))
    t0 = time.time()
    x, _ = generate_batches(model, model, seeds, sampler, args.batch, args.device, progress=progress)
    bar.close()
    _write(args.out, x, seeds, {"model": args.model, "sampler": sampler.__dict__, "nfe": sampler.nfe,
                                     "seconds": round(time.time() - t0, 2)})
    return 0


def _interval(spec):
    if spec is None:
        return None
    try:
        lo, hi = (float(v) for v in spec.split(","))
    except ValueError:
        raise UserError(f"--interval takes 'sigma_lo,sigma_hi' such as 0.28,1.61 (got {spec!r}).") from None
    return (lo, hi)


def run_sample_sims(args) -> int:
    if args.bundle:
        bundle = load_bundle(args.bundle, args.device)
        base, aux, sampler = bundle.base, bundle.aux, _sampler_from(args, bundle.sampler)
        omega = bundle.omega if args.omega is None else parse_omega(args.omega)
        interval = _interval(args.interval) if args.interval else bundle.interval
        shared = bundle.shared_encoder or args.shared_encoder
    else:
        if not (args.base and args.aux):
            raise UserError("Give --bundle FILE, or both --base CKPT and --aux CKPT.")
        base, _ = load_model(args.base, args.device)
        aux, _ = load_model(args.aux, args.device)
        sampler = _sampler_from(args)
        omega = parse_omega(args.omega if args.omega is not None else 0.0)
        interval, shared = _interval(args.interval), args.shared_encoder
    seeds = _seeds(args.seeds)
    bar, progress = _bar(len(seeds))
    t0 = time.time()
    guided = SIMSDenoiser(base, aux, omega, interval=interval, shared_encoder=shared)
    x, _ = generate_batches(guided, base, seeds, sampler, args.batch, args.device, progress=progress)
    bar.close()
    runs = -(-len(seeds) // args.batch)
    nfe = (guided.counts.base + guided.counts.aux) // runs
    _write(args.out, x, seeds, {"bundle": args.bundle, "base": args.base, "aux": args.aux, "omega": omega,
                                     "interval": interval, "shared_encoder": shared, "sampler": sampler.__dict__,
                                     "network_passes_per_sample": nfe, "seconds": round(time.time() - t0, 2)})
    return 0


def register(sub) -> None:
    p = sub.add_parser("generate", help="sample a model with the EDM Heun sampler")
    p.add_argument("--model", required=True, help="checkpoint (.safetensors, ours)")
    _sampler_args(p)
    p.set_defaults(run=run_generate)

    p = sub.add_parser("sample-sims", help="sample with SIMS guidance (1+omega)*D_base - omega*D_aux")
    p.add_argument("--bundle", help="SIMS bundle exported by the studio (holds base, aux, omega, interval)")
    p.add_argument("--base", help="base checkpoint (without --bundle)")
    p.add_argument("--aux", "--guide", dest="aux",
                   help="the guide: the SIMS auxiliary, or any model of the base's sample shape and preconditioning "
                        "(autoguidance when it is a weaker version of the base, e.g. an earlier checkpoint)")
    p.add_argument("--omega", default=None, help="guidance weight; 0 = base, -1 = auxiliary, >0 away from aux")
    p.add_argument("--interval", default=None, help="guide only for sigma in [lo,hi], e.g. 0.28,1.61")
    p.add_argument("--shared-encoder", action="store_true",
                   help="auxiliary was fine-tuned decoder-only: run the encoder once for both")
    _sampler_args(p)
    p.set_defaults(run=run_sample_sims)

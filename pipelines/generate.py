"""Batched generation from per-sample seeds, with or without SIMS guidance."""
from __future__ import annotations

import re
import time
from typing import Callable, Sequence

import numpy as np
import torch

from .guidance import SIMSDenoiser
from .models import sample_shape
from .paired import PairedSIMSDenoiser, check_paired_precision
from .precision import network_precision
from .sampler import SamplerConfig, sample_from_seeds, to_uint8


def _clamped(sampler: SamplerConfig, model) -> SamplerConfig:
    """Keep the sigma range inside what the network supports (VP nets have a finite range)."""
    lo = max(sampler.sigma_min, float(getattr(model, "sigma_min", 0.0)))
    hi = min(sampler.sigma_max, float(getattr(model, "sigma_max", float("inf"))))
    if (lo, hi) == (sampler.sigma_min, sampler.sigma_max):
        return sampler
    return SamplerConfig(**{**sampler.__dict__, "sigma_min": lo, "sigma_max": hi})


def seed_batches(seeds: Sequence[int], batch_size: int) -> list[list[int]]:
    """Consecutive batches of `batch_size` seeds; the unit of work (and of sharding)."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("No seeds given; pass at least one seed.")
    if int(batch_size) < 1:
        raise ValueError(f"batch size must be >= 1 (got {batch_size}).")
    return [seeds[i:i + batch_size] for i in range(0, len(seeds), batch_size)]


def generate_batches(denoiser: Callable, model, seeds: Sequence[int], sampler: SamplerConfig,
                     batch_size: int = 64, device="cpu", class_labels=None,
                     progress: Callable[[int, int], None] | None = None, precision: str = "fp32",
                     shard=None) -> tuple[torch.Tensor | None, int]:
    """Sample `seeds` in batches with `denoiser`; returns ([-1,1] float NCHW on CPU, NFE per sample).

    precision: 'fp32' or 'bf16' (autocast of the networks only; see pipelines.precision).
    shard: a DistEnv under torchrun. The seeds are cut into batches exactly as in one process
    and rank r samples batches r, r + world, ... (EDM's generate.py shards batches the same way);
    rank 0 gathers them back in seed order and returns the whole tensor, other ranks None. Each
    batch is computed as a single process would compute it, so the result is identical to a
    one-process run on the same device type.
    """
    sampler = _clamped(sampler, model)
    shape = sample_shape(model)
    batches = seed_batches(seeds, batch_size)
    starts = np.cumsum([0] + [len(b) for b in batches])
    rank, world = (shard.rank, shard.world_size) if shard is not None else (0, 1)
    mine = list(range(rank, len(batches), world))
    outs, nfe, done = {}, 0, 0
    with torch.no_grad(), network_precision(precision):
        for k in mine:
            chunk = batches[k]
            labels = None if class_labels is None else class_labels[starts[k]:starts[k + 1]].to(device)
            x, nfe = sample_from_seeds(denoiser, chunk, shape, sampler, class_labels=labels, device=device)
            outs[k] = x.cpu()
            done += len(chunk)
            if progress is not None:
                progress(done, int(starts[-1]) if world == 1 else sum(len(batches[j]) for j in mine))
    if world > 1:
        outs = shard.gather_to_main(outs)
        if outs is None:
            return None, nfe
    return torch.cat([outs[k] for k in range(len(batches))]), nfe


def compile_and_warm_up(make_denoiser: Callable, models, model, seeds, sampler: SamplerConfig, batch_size,
                        device, precision="fp32", class_labels=None, shard=None):
    """torch.compile `models` in place for sampling, make the denoiser, and compile it for every
    batch size this process will sample (the first full one and a shorter last one); returns
    (denoiser, seconds the compilation took)."""
    from .compiling import compile_networks, warm_up
    compile_networks(models, device)
    denoiser = make_denoiser()
    batches = seed_batches(seeds, batch_size)
    rank, world = (shard.rank, shard.world_size) if shard is not None else (0, 1)
    sizes = {len(batches[k]) for k in range(rank, len(batches), world)}
    return denoiser, warm_up(denoiser, model, sizes or {len(batches[0])}, _clamped(sampler, model), device,
                             precision, class_labels)


def generate_images(model, seeds: Sequence[int], sampler: SamplerConfig = SamplerConfig(), batch_size=64,
                    device="cpu", class_labels=None, progress=None, precision: str = "fp32",
                    compile: bool = False, timings: dict | None = None) -> np.ndarray:
    """Samples of the base model as uint8 NHWC, one per seed.
    compile: torch.compile the model in place first (it stays compiled; see pipelines.compiling);
    equal to eager to float rounding. timings: a dict that receives 'compile_s' (compilation,
    0 without compile) and 'sample_s'."""
    denoiser, compile_s = model, 0.0
    if compile:
        denoiser, compile_s = compile_and_warm_up(lambda: model, [model], model, seeds, sampler, batch_size,
                                                  device, precision, class_labels)
    t0 = time.perf_counter()
    x, _ = generate_batches(denoiser, model, seeds, sampler, batch_size, device, class_labels, progress, precision)
    if timings is not None:
        timings.update(compile_s=compile_s, sample_s=time.perf_counter() - t0)
    return to_uint8(x)


def generate_sims(base, aux, omega: float, seeds: Sequence[int], sampler: SamplerConfig = SamplerConfig(),
                  interval=None, shared_encoder=False, batch_size=64, device="cpu", class_labels=None,
                  progress=None, precision: str = "fp32", paired: bool = False, compile: bool = False,
                  timings: dict | None = None) -> tuple[np.ndarray, int]:
    """Samples with the SIMS-guided denoiser; returns (uint8 NHWC, network evaluations per sample).
    paired: run base and auxiliary as one batched call in full mode (equal to float rounding).
    compile / timings: as in `generate_images` (both models are compiled in place)."""
    make = PairedSIMSDenoiser if paired else SIMSDenoiser
    if paired:
        check_paired_precision(precision)

    def build():
        return make(base, aux, omega, interval=interval, shared_encoder=shared_encoder)
    compile_s = 0.0
    if compile:
        guided, compile_s = compile_and_warm_up(build, [base, aux], base, seeds, sampler, batch_size, device,
                                                precision, class_labels)
    else:
        guided = build()
    t0 = time.perf_counter()
    x, _ = generate_batches(guided, base, seeds, sampler, batch_size, device, class_labels, progress, precision)
    if timings is not None:
        timings.update(compile_s=compile_s, sample_s=time.perf_counter() - t0)
    batches = -(-len(list(seeds)) // batch_size)
    c = guided.counts
    # Network passes per sample: base + auxiliary (decoder passes in shared-encoder mode).
    return to_uint8(x), int(round((c.base + c.aux) / batches))


def parse_seeds(spec: str) -> list[int]:
    """'0-63' or '1,5,9' or '0-9,20' -> list of non-negative ints."""
    seeds: list[int] = []
    for part in str(spec).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"Could not read seeds {spec!r}; use a range like 0-63 or a list like 1,5,9.")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        seeds.extend(range(a, b + 1))
    return seeds

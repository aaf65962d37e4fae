"""torch.compile for sampling at a fixed batch shape (`--compile` of generate / sample-sims).

The networks' encoder and decoder halves are compiled in place (`precond.compile_backbone`).
On CUDA the mode is "reduce-overhead": each shape is captured once as a CUDA graph and replayed,
which removes the per-kernel launch cost that dominates small batches. On a CPU the default
mode (Inductor's C++ kernels) is used. `warm_up` runs one denoiser call per batch size before
sampling so that the compilation is paid, and timed, apart from the sampling itself.

Inductor needs a C++ compiler on a CPU and Triton on a GPU; `require_compiler` checks for them
up front so that a missing one is a UserError naming it instead of a traceback mid-sampling.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import time

import torch

from .errors import UserError
from .precision import network_precision
from .precond import compile_backbone


def compile_mode(device) -> str | None:
    """torch.compile mode for sampling on `device`: CUDA graphs on CUDA, the default elsewhere."""
    return "reduce-overhead" if torch.device(device).type == "cuda" else None


def require_compiler(device) -> None:
    """UserError when torch.compile's Inductor backend cannot build kernels for `device` here."""
    kind = torch.device(device).type
    if kind == "cuda":
        if importlib.util.find_spec("triton") is None:
            raise UserError("--compile on a GPU needs Triton (pip install triton, matching your torch); "
                            "it is not installed. Install it or sample without --compile.")
        return
    if kind != "cpu":
        raise UserError(f"--compile supports CPU and CUDA devices, not {kind}; sample without --compile.")
    wanted = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    if not any(shutil.which(c) for c in wanted):
        raise UserError(f"--compile on the CPU needs a C++ compiler ({' or '.join(wanted)}) on PATH for "
                        "torch.compile's Inductor kernels; none was found. Install one (e.g. apt-get install "
                        "g++) or sample without --compile.")


def compile_networks(models, device) -> str | None:
    """Check for a compiler, then compile each model's backbone for sampling; returns the mode."""
    require_compiler(device)
    mode = compile_mode(device)
    for m in models:
        if m is not None:
            compile_backbone(m, mode)
    return mode


def warm_up(denoiser, model, batch_sizes, sampler, device, precision: str = "fp32", class_labels=None) -> float:
    """Call `denoiser` once per distinct batch size (compiling it) and return the seconds spent.

    The call's sigma lies inside a SIMS guidance interval when there is one, so every network the
    sampler will run (base, auxiliary, shared encoder, the paired call) is compiled here. Pass
    counts a SIMS denoiser keeps are restored afterwards. Compilation failures become a UserError.
    """
    from .models import sample_shape
    shape = tuple(sample_shape(model))
    interval = getattr(denoiser, "interval", None)
    sigma = float((interval[0] * interval[1]) ** 0.5) if interval else float(sampler.sigma_max)
    lo, hi = float(getattr(model, "sigma_min", 0.0)), float(getattr(model, "sigma_max", float("inf")))
    sigma = min(max(sigma, lo), hi)  # VP networks have a finite sigma range
    counts = getattr(denoiser, "counts", None)
    saved = None if counts is None else dict(counts.__dict__)
    t0 = time.perf_counter()
    try:
        with torch.no_grad(), network_precision(precision):
            for n in sorted(set(int(b) for b in batch_sizes)):
                x = torch.zeros((n, *shape), device=device)
                labels = None if class_labels is None else class_labels[:n].to(device)
                denoiser(x, torch.full((n,), sigma, device=device), labels)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
    except UserError:
        raise
    except Exception as e:  # Inductor/dynamo errors have many types; all mean "could not compile here"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"torch.compile could not compile the network on {device}: {type(e).__name__}: "
                        f"{first[:300]}. Sample without --compile.") from e
    finally:
        if saved is not None:
            counts.__dict__.update(saved)
    return time.perf_counter() - t0

"""Network precision for inference: fp32 (default) or bf16 autocast of the network only.

`network_precision("bf16")` makes every `Precond` called inside it (in this thread) run its
backbone under `torch.autocast` with bfloat16 (CUDA autocast on GPUs, CPU autocast on CPUs).
The preconditioning arithmetic, the sampler's float64 state and the SIMS combination stay in
float32/float64 as they are outside autocast. fp32 changes nothing: no autocast context at all,
so fp32 results are bit-identical to code that never heard of precision.
"""
from __future__ import annotations

import contextlib
import contextvars

import torch

from .errors import UserError

PRECISIONS = ("fp32", "bf16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16}

# A context variable, not a module flag: each thread (studio workers) has its own value.
_amp_dtype: contextvars.ContextVar[torch.dtype | None] = contextvars.ContextVar("sims_amp_dtype", default=None)


def parse_precision(value) -> str:
    """'fp32' | 'bf16' from user input (None -> 'fp32'); anything else is a UserError."""
    value = "fp32" if value is None else str(value).strip().lower()
    if value not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)} (got {value!r}).")
    return value


def amp_dtype() -> torch.dtype | None:
    """Autocast dtype asked for by the innermost `network_precision`, or None (fp32)."""
    return _amp_dtype.get()


@contextlib.contextmanager
def network_precision(precision: str | None):
    """Run the networks called inside at `precision` ('fp32' or 'bf16')."""
    token = _amp_dtype.set(_DTYPES[parse_precision(precision)])
    try:
        yield
    finally:
        _amp_dtype.reset(token)

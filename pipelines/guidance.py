"""SIMS guided denoiser (SIMS Alg. 1 step 4): D = (1 + omega)*D_base - omega*D_aux.

Since s(x, sigma) = (D(x, sigma) - x)/sigma^2 and the weights sum to one, mixing denoisers
mixes scores the same way. Options from the paper's Appendix A:
- guidance interval: guide only while sigma_lo <= sigma <= sigma_hi, base alone elsewhere;
- shared encoder: the auxiliary model was fine-tuned decoder-only, so both decoders can
  reuse one pass of the base encoder.

The second model need not be a SIMS auxiliary: autoguidance (Karras et al. 2024, "Guiding a
diffusion model with a bad version of itself") uses the same rule with a weaker version of the
base (an earlier or smaller checkpoint) as the guide. Any model denoising the same sample shape
under the same preconditioning can guide; `check_guide` refuses the rest.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import UserError


def parse_omega(value) -> float:
    """Guidance weight from user input; refuses non-numbers with a message."""
    try:
        omega = float(value)
    except (TypeError, ValueError):
        raise UserError(f"omega must be a number such as 0, 1.5 or -1 (got {value!r}).") from None
    if omega != omega or abs(omega) == float("inf"):
        raise UserError(f"omega must be a finite number (got {value!r}).")
    return omega


def parse_interval(spec) -> tuple[float, float] | None:
    """The guidance interval from user input 'sigma_lo,sigma_hi' (None or empty: guide at every step)."""
    if spec is None or not str(spec).strip():
        return None
    try:
        lo, hi = (float(v) for v in str(spec).split(","))
    except ValueError:
        raise UserError(f"--interval takes 'sigma_lo,sigma_hi' such as 0.28,1.61 (got {spec!r}).") from None
    return (lo, hi)


def denoiser_signature(model) -> dict | None:
    """What a guide must share with the base: sample shape, preconditioning, label dim (None if unknown)."""
    net = getattr(model, "model", None)
    shape = getattr(net, "sample_shape", None)
    if shape is None:
        return None  # a bare callable: nothing to compare
    return {"sample shape": tuple(shape), "preconditioning": type(model).__name__,
            "sigma_data": getattr(model, "sigma_data", None), "label_dim": getattr(model, "label_dim", 0)}


def check_guide(base, guide) -> None:
    """UserError naming both signatures when `guide` cannot guide `base` (shape, precond, labels)."""
    a, b = denoiser_signature(base), denoiser_signature(guide)
    if a is None or b is None or a == b:
        return
    diff = [k for k in a if a[k] != b[k]]
    raise UserError(f"The guide cannot guide this base model: {', '.join(diff)} differ "
                    f"(base {', '.join(f'{k} {a[k]}' for k in diff)}; guide {', '.join(f'{k} {b[k]}' for k in diff)}). "
                    "A guide must denoise the same sample shape with the same preconditioning: pick the SIMS "
                    "auxiliary, an earlier checkpoint of the base, or another model of matching shape.")


@dataclass
class GuidanceCounts:
    """Network calls spent, for cost accounting and tests."""
    base: int = 0       # full base denoiser passes (or base decoder passes in shared mode)
    aux: int = 0        # full auxiliary passes (or aux decoder passes in shared mode)
    encoder: int = 0    # encoder passes in shared-encoder mode
    calls: int = 0      # denoiser evaluations requested by the sampler
    guided: int = 0     # of which inside the guidance interval


@dataclass
class SIMSDenoiser:
    """Callable denoiser mixing a base and an auxiliary model."""
    base: torch.nn.Module
    aux: torch.nn.Module | None
    omega: float = 0.0
    interval: tuple[float, float] | None = None  # (sigma_lo, sigma_hi); None = guide everywhere
    shared_encoder: bool = False
    counts: GuidanceCounts = field(default_factory=GuidanceCounts)

    def __post_init__(self):
        self.omega = parse_omega(self.omega)
        if self.interval is not None:
            lo, hi = (float(v) for v in self.interval)
            if not 0 <= lo <= hi:
                raise UserError(f"Guidance interval needs 0 <= sigma_lo <= sigma_hi (got {self.interval}).")
            self.interval = (lo, hi)
        if self.aux is None and self.omega != 0:
            raise UserError("omega != 0 needs an auxiliary model; load one or set omega to 0.")
        if self.aux is not None:
            check_guide(self.base, self.aux)

    def in_interval(self, sigma: torch.Tensor) -> bool:
        if self.interval is None:
            return True
        s = float(sigma.reshape(-1)[0])
        return self.interval[0] <= s <= self.interval[1]

    def __call__(self, x, sigma, class_labels=None, augment_labels=None):
        self.counts.calls += 1
        guided = self.omega != 0 and self.in_interval(sigma)
        if not guided:
            self.counts.base += 1
            return self.base(x, sigma, class_labels, augment_labels=augment_labels)
        self.counts.guided += 1
        if self.shared_encoder:
            self.counts.encoder += 1
            state = self.base.encode(x, sigma, class_labels, augment_labels)
            run_base = lambda: self.base.decode(state)  # noqa: E731
            run_aux = lambda: self.aux.decode(state)  # noqa: E731
        else:
            run_base = lambda: self.base(x, sigma, class_labels, augment_labels=augment_labels)  # noqa: E731
            run_aux = lambda: self.aux(x, sigma, class_labels, augment_labels=augment_labels)  # noqa: E731
        if self.omega == -1:  # exactly the auxiliary model, no base pass needed
            self.counts.aux += 1
            return run_aux()
        self.counts.base += 1
        self.counts.aux += 1
        return (1 + self.omega) * run_base() - self.omega * run_aux()
